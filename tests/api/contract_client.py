"""A client built from a released contract (its stubs generated from contracts/vX.Y.Z.binpb),
run as a separate process by tests/api/test_compatibility.py.

    python tests/api/contract_client.py STUBS_DIR CONFIG
    (CONFIG: '{"enroll_addr": "...", "api_addr": "...", "ca_path": "..."}')

STUBS_DIR goes first on sys.path, so ``licensing.*`` and ``enclave.*`` are the old stubs
(checked: a module from anywhere else is an error). The story calls every public RPC of
the contract with valid input, and some with deliberately invalid input, and prints one
JSON object: for each RPC the outcomes (status code, ErrorInfo reason, the response type the
old stubs decoded). Nothing here imports the current stubs.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

STUBS = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(STUBS))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from enclave.v1 import workload_pb2, workload_pb2_grpc  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from licensing.v1 import (  # noqa: E402
    attestation_pb2,
    attestation_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
)

# The verifier is pure Python over any message with the Attestation fields (no stubs).
from licensing_client.attestation import verify_attestation  # noqa: E402

PASSWORD = "correct horse battery"
TIMEOUT = 60
R = TypeVar("R", bound=Message)


def stubs_are_the_old_ones() -> None:
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("licensing", "enclave"):
            origin = Path(getattr(module, "__file__", None) or next(iter(module.__path__)))
            if not origin.resolve().is_relative_to(STUBS):
                raise SystemExit(f"{name} was imported from {origin}, not from {STUBS}")


class Story:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.ca = Path(config["ca_path"]).read_bytes()
        self.outcomes: dict[str, list[dict[str, Any]]] = {}
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.username = f"contract-{uuid.uuid4().hex[:10]}"
        self.token = ""
        self.cert_pem = b""

    # Recording -------------------------------------------------------------------
    def record(self, method: str, valid: bool, call: Callable[[], R]) -> R | None:
        """Run one call of ``method``; note what the server answered."""
        outcome: dict[str, Any] = {"valid": valid}
        response: R | None = None
        try:
            response = call()
        except grpc.RpcError as error:
            outcome["code"] = error.code().name
            outcome["reason"] = reason_of(error)
        else:
            outcome["code"] = "OK"
            outcome["response"] = response.DESCRIPTOR.full_name
            # Decodes: the old classes parsed it, and it survives a round trip.
            type(response).FromString(response.SerializeToString())
        self.outcomes.setdefault(method, []).append(outcome)
        return response

    def record_stream(self, method: str, valid: bool, call: Callable[[], Iterable[R]]) -> list[R]:
        responses: list[R] = []

        def drain() -> R:
            for response in call():
                responses.append(response)
            if not responses:
                raise RuntimeError(f"{method} answered no message")
            return responses[-1]

        self.record(method, valid, drain)
        return responses

    # Channels --------------------------------------------------------------------
    def enroll(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.secure_channel(self.config["enroll_addr"], creds)

    def api(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key_pem(), certificate_chain=self.cert_pem
        )
        return grpc.secure_channel(self.config["api_addr"], creds)

    def enclave(self, enclave: enclave_pb2.Enclave) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key_pem(), certificate_chain=self.cert_pem
        )
        return grpc.secure_channel(
            enclave.endpoint,
            creds,
            options=[("grpc.ssl_target_name_override", enclave.tls_server_name)],
        )

    @property
    def bearer(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def csr(self) -> str:
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.username)]))
            .sign(self.key, hashes.SHA256())
        )
        return request.public_bytes(serialization.Encoding.PEM).decode()

    # The story -------------------------------------------------------------------
    def run(self) -> None:
        trust = trust_pb2_grpc.TrustServiceStub(self.enroll())
        bundle = self.record(
            "/licensing.v1.TrustService/GetTrustBundle",
            True,
            lambda: trust.GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=TIMEOUT),
        )
        auth = auth_pb2_grpc.AuthServiceStub(self.enroll())
        sign_up = "/licensing.v1.AuthService/SignUp"
        self.record(
            sign_up,
            False,
            lambda: auth.SignUp(
                auth_pb2.SignUpRequest(username="", password=PASSWORD), timeout=TIMEOUT
            ),
        )
        self.record(
            sign_up,
            True,
            lambda: auth.SignUp(
                auth_pb2.SignUpRequest(username=self.username, password=PASSWORD),
                timeout=TIMEOUT,
            ),
        )
        login = "/licensing.v1.AuthService/Login"
        self.record(
            login,
            False,
            lambda: auth.Login(
                auth_pb2.LoginRequest(username=self.username, password=PASSWORD, csr_pem="x"),
                timeout=TIMEOUT,
            ),
        )
        logged_in = self.record(
            login,
            True,
            lambda: auth.Login(
                auth_pb2.LoginRequest(
                    username=self.username, password=PASSWORD, csr_pem=self.csr()
                ),
                timeout=TIMEOUT,
            ),
        )
        if logged_in is None:
            return
        self.token = logged_in.access_token
        self.cert_pem = logged_in.client_certificate_pem.encode()

        users = auth_pb2_grpc.AuthServiceStub(self.api())
        self.record(
            "/licensing.v1.AuthService/GetCurrentUser",
            True,
            lambda: users.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=self.bearer, timeout=TIMEOUT
            ),
        )
        enclaves = enclave_pb2_grpc.EnclaveServiceStub(self.api())
        create = "/licensing.v1.EnclaveService/CreateEnclave"
        self.record_stream(
            create,
            False,
            lambda: enclaves.CreateEnclave(
                enclave_pb2.CreateEnclaveRequest(request_id="not valid!", nonce=os.urandom(32)),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        nonce = os.urandom(32)
        events: list[enclave_pb2.CreateEnclaveResponse] = self.record_stream(
            create,
            True,
            lambda: enclaves.CreateEnclave(
                enclave_pb2.CreateEnclaveRequest(request_id=uuid.uuid4().hex, nonce=nonce),
                metadata=self.bearer,
                timeout=120,
            ),
        )
        if not events or not events[-1].enclave.id:
            return
        enclave = events[-1].enclave
        get = "/licensing.v1.EnclaveService/GetEnclave"
        self.record(
            get,
            False,
            lambda: enclaves.GetEnclave(
                enclave_pb2.GetEnclaveRequest(enclave_id="no-such-enclave"),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        self.record(
            get,
            True,
            lambda: enclaves.GetEnclave(
                enclave_pb2.GetEnclaveRequest(enclave_id=enclave.id),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        self.record(
            "/licensing.v1.EnclaveService/ListEnclaves",
            True,
            lambda: enclaves.ListEnclaves(
                enclave_pb2.ListEnclavesRequest(page_size=10),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )

        def first_watch_event() -> enclave_pb2.WatchEnclaveResponse:
            stream = enclaves.WatchEnclave(
                enclave_pb2.WatchEnclaveRequest(enclave_id=enclave.id),
                metadata=self.bearer,
                timeout=TIMEOUT,
            )
            try:
                for event in stream:
                    return event
                raise RuntimeError("WatchEnclave answered no event")
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]

        self.record("/licensing.v1.EnclaveService/WatchEnclave", True, first_watch_event)

        attestations = attestation_pb2_grpc.AttestationServiceStub(self.api())
        attest = "/licensing.v1.AttestationService/GetAttestation"
        self.record(
            attest,
            False,
            lambda: attestations.GetAttestation(
                attestation_pb2.GetAttestationRequest(enclave_id=enclave.id, nonce=b"short"),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        fresh_nonce = os.urandom(32)
        quoted = self.record(
            attest,
            True,
            lambda: attestations.GetAttestation(
                attestation_pb2.GetAttestationRequest(enclave_id=enclave.id, nonce=fresh_nonce),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        if quoted is not None and bundle is not None:
            # What the old stubs decoded is the real evidence: it still verifies.
            verify_attestation(
                quoted.attestation,
                nonce=fresh_nonce,
                expected_certificate_pem=enclave.certificate_pem,
                trusted_ca_pem=list(bundle.ca_certificates_pem),
            )
            self.outcomes[attest][-1]["verified"] = True

        self.workload(enclave)

        self.record(
            "/licensing.v1.EnclaveService/DeleteEnclave",
            True,
            lambda: enclaves.DeleteEnclave(
                enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave.id),
                metadata=self.bearer,
                timeout=TIMEOUT,
            ),
        )
        refresh = "/licensing.v1.AuthService/RefreshToken"
        self.record(
            refresh,
            False,
            lambda: auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token="not-a-token"), timeout=TIMEOUT
            ),
        )
        refreshed = self.record(
            refresh,
            True,
            lambda: auth.RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=logged_in.refresh_token),
                timeout=TIMEOUT,
            ),
        )
        if refreshed is not None:
            self.token = refreshed.access_token
        self.record(
            "/licensing.v1.AuthService/Logout",
            True,
            lambda: users.Logout(auth_pb2.LogoutRequest(), metadata=self.bearer, timeout=TIMEOUT),
        )

    def workload(self, enclave: enclave_pb2.Enclave) -> None:
        stub = workload_pb2_grpc.WorkloadServiceStub(self.enclave(enclave))
        md = self.bearer
        prefix = "/enclave.v1.WorkloadService/"
        self.record(
            prefix + "GetIdentity",
            True,
            lambda: stub.GetIdentity(workload_pb2.GetIdentityRequest(), metadata=md, timeout=30),
        )
        value = os.urandom(16)
        self.record(
            prefix + "PutSecret",
            True,
            lambda: stub.PutSecret(
                workload_pb2.PutSecretRequest(name="old-client", value=value),
                metadata=md,
                timeout=30,
            ),
        )
        self.record(
            prefix + "GetSecret",
            False,
            lambda: stub.GetSecret(
                workload_pb2.GetSecretRequest(name="never-stored"), metadata=md, timeout=30
            ),
        )
        got = self.record(
            prefix + "GetSecret",
            True,
            lambda: stub.GetSecret(
                workload_pb2.GetSecretRequest(name="old-client"), metadata=md, timeout=30
            ),
        )
        if got is not None:
            self.outcomes[prefix + "GetSecret"][-1]["same_value"] = got.value == value
        self.record(
            prefix + "ListSecrets",
            True,
            lambda: stub.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=md, timeout=30),
        )
        data = b"signed for an old client"
        signed = self.record(
            prefix + "Sign",
            True,
            lambda: stub.Sign(workload_pb2.SignRequest(data=data), metadata=md, timeout=30),
        )
        if signed is not None:
            key = x509.load_pem_x509_certificate(enclave.certificate_pem.encode()).public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(signed.signature, data, ec.ECDSA(hashes.SHA256()))
            self.outcomes[prefix + "Sign"][-1]["signature_verified"] = True
        self.record(
            prefix + "DeleteSecret",
            True,
            lambda: stub.DeleteSecret(
                workload_pb2.DeleteSecretRequest(name="old-client"), metadata=md, timeout=30
            ),
        )


def reason_of(error: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def main() -> None:
    config = json.loads(sys.argv[2])
    story = Story(config)
    try:
        story.run()
    finally:
        stubs_are_the_old_ones()
        print(json.dumps(story.outcomes))


if __name__ == "__main__":
    main()
