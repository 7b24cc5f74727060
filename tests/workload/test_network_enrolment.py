"""The enclave as a Kubernetes pod runs it: settings from a mounted ConfigMap, its certificate
from the backend's enrolment service over TLS, its ServiceAccount token as the bearer.

The test plays the backend's enrolment endpoint (a real grpc.aio server with the CA's
server certificate) and the owner; the enclave is the real process with the pod's flags.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from enclave.v1 import enrollment_pb2, enrollment_pb2_grpc, workload_pb2

from licensing_common.errors import DomainError, PermissionDenied, Unavailable
from licensing_common.rpc.errors import abort
from tests.support import error_info
from tests.workload.test_workload import (
    AUDIENCE,
    ENCLAVE_HOST,
    ISSUER,
    TIMEOUT,
    Backend,
    Enclave,
    User,
)

Context = grpc.aio.ServicerContext[Any, Any]
_SERVING = re.compile(r"serving on (\S+)")


def spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# The backend's enrolment endpoint --------------------------------------------------


@dataclass
class EnrolmentEndpoint(enrollment_pb2_grpc.EnrollmentServiceServicer):
    """A stand-in for the backend's EnrollmentService: records each call, answers as told.

    ``refusals`` are answered first, one per call; then the CSR is signed, or (with
    ``wrong_key``) a certificate for some other key comes back.
    """

    backend: Backend
    address: str = ""
    calls: list[tuple[str, enrollment_pb2.EnrollRequest]] = field(default_factory=list)
    refusals: list[DomainError] = field(default_factory=list)
    on_refusal: Callable[[], None] = lambda: None
    wrong_key: bool = False
    issued: list[x509.Certificate] = field(default_factory=list)
    #: The authorization of each WatchRevocations stream opened, and what to send down it.
    watches: list[str] = field(default_factory=list)
    revoked: list[list[str]] = field(default_factory=list)

    async def WatchRevocations(
        self, request: enrollment_pb2.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[enrollment_pb2.WatchRevocationsResponse]:
        """As the backend's desk: every revocation so far, then each new one."""
        metadata = dict(context.invocation_metadata() or ())
        self.watches.append(str(metadata.get("authorization", "")))
        sent = 0
        while True:
            while sent < len(self.revoked):
                yield enrollment_pb2.WatchRevocationsResponse(session_ids=self.revoked[sent])
                sent += 1
            await asyncio.sleep(0.01)

    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: Context
    ) -> enrollment_pb2.EnrollResponse:
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append((str(metadata.get("authorization", "")), request))
        if self.refusals:
            refusal = self.refusals.pop(0)
            self.on_refusal()
            await abort(context, refusal, "/enclave.v1.EnrollmentService/Enroll")
        csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        assert csr.is_signature_valid
        public_key = csr.public_key()
        if self.wrong_key:
            _, other = self.backend.ca.issue_key_pair(common_name="other", server=True)
            public_key = other.certificate.public_key()
        issued = self.backend.ca.issue(
            public_key,
            common_name=request.enclave_id,
            lifetime=dt.timedelta(hours=1),
            dns_names=[ENCLAVE_HOST],
            server=True,
        )
        self.issued.append(issued.certificate)
        return enrollment_pb2.EnrollResponse(
            certificate_pem=issued.pem, ca_certificates_pem=self.backend.ca.ca_certificates_pem
        )


async def serve_endpoint(endpoint: EnrolmentEndpoint, port: int = 0) -> grpc.aio.Server:
    """TLS only, with the CA's server certificate: the pod has no client certificate yet."""
    key, cert = endpoint.backend.ca.issue_key_pair(
        common_name="licensing-backend", dns_names=["localhost"], server=True
    )
    server = grpc.aio.server()
    enrollment_pb2_grpc.add_EnrollmentServiceServicer_to_server(endpoint, server)
    credentials = grpc.ssl_server_credentials([(key, cert.pem.encode())])
    bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    endpoint.address = f"localhost:{bound}"
    return server


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return Backend.create(tmp_path_factory.mktemp("backend"))


@pytest.fixture(scope="module")
def owner(backend: Backend) -> User:
    return backend.user()


@pytest.fixture
async def endpoint(backend: Backend) -> AsyncIterator[EnrolmentEndpoint]:
    served = EnrolmentEndpoint(backend)
    server = await serve_endpoint(served)
    yield served
    await server.stop(None)


# The pod ---------------------------------------------------------------------------


@dataclass
class Pod:
    """What the kubelet gives the container: a ConfigMap volume and a projected token."""

    enclave_id: str
    config_dir: Path
    token_file: Path
    run_dir: Path

    @classmethod
    def create(cls, backend: Backend, owner: User, tmp: Path) -> Pod:
        enclave_id = f"enc-{uuid.uuid4().hex[:8]}"
        config_dir = tmp / "config"
        config_dir.mkdir()
        for name, value in {
            "enclave-id": enclave_id,
            "owner": owner.user_id,
            "issuer": ISSUER,
            "audience": AUDIENCE,
        }.items():
            (config_dir / name).write_text(value + "\n")  # as YAML block values end
        (config_dir / "ca.pem").write_bytes(backend.ca_pem)
        (config_dir / "jwks.json").write_text(backend.jwks_path.read_text())
        token_file = tmp / "token"
        token_file.write_text("sa-token-1")
        run_dir = tmp / "run"
        run_dir.mkdir()
        return cls(enclave_id, config_dir, token_file, run_dir)

    def rotate_token(self) -> None:
        """What the kubelet does before the token expires."""
        number = int(self.token_file.read_text().rsplit("-", 1)[1])
        self.token_file.write_text(f"sa-token-{number + 1}")

    def args(self, enroll: str) -> list[str]:
        """The container's command line."""
        return [
            "--config-dir",
            str(self.config_dir),
            "--enroll",
            enroll,
            "--token-file",
            str(self.token_file),
            "--listen",
            "127.0.0.1:0",
        ]

    def start(self, owner: User, enroll: str) -> Enclave:
        log_path = self.run_dir / "stderr.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "licensing_enclave", *self.args(enroll)],
                stdin=subprocess.DEVNULL,  # at EOF from the start: no parent to lose
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.run_dir,
            )
        return Enclave(proc, self.enclave_id, owner, self.run_dir, log_path)


async def serving(enclave: Enclave, within: float = 30.0) -> str:
    """The address from the enclave's log line (port 0 was asked for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        found = _SERVING.search(enclave.stderr())
        if found:
            enclave.address = found.group(1)
            return enclave.address
        assert enclave.proc.poll() is None, enclave.stderr()
        await asyncio.sleep(0.05)
    raise AssertionError(f"not serving within {within}s:\n{enclave.stderr()}")


async def exit_status(enclave: Enclave) -> int:
    return await asyncio.to_thread(enclave.wait)


def served_certificate(enclave: Enclave, user: User, tmp: Path, ca_pem: bytes) -> x509.Certificate:
    """The certificate the enclave's TLS listener presents, as a client sees it."""
    (tmp / "user.pem").write_bytes(user.cert_pem)
    (tmp / "user.key").write_bytes(user.key_pem)
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.load_cert_chain(tmp / "user.pem", tmp / "user.key")
    context.set_alpn_protocols(["h2"])
    host, port = enclave.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=ENCLAVE_HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# Stories ---------------------------------------------------------------------------


async def test_a_pod_enrols_with_its_token_and_serves_with_the_issued_certificate(
    backend: Backend, owner: User, endpoint: EnrolmentEndpoint, tmp_path: Path
) -> None:
    pod = Pod.create(backend, owner, tmp_path)
    enclave = pod.start(owner, endpoint.address)
    try:
        await serving(enclave)
        [(authorization, request)] = endpoint.calls
        assert authorization == "Bearer sa-token-1"
        assert request.enclave_id == pod.enclave_id
        [issued] = endpoint.issued
        csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        assert spki(issued) == csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        # The key of that CSR is the one serving: the listener presents the issued certificate...
        presented = await asyncio.to_thread(
            served_certificate, enclave, owner, tmp_path, backend.ca_pem
        )
        assert presented == issued
        # ...and the owner uses the enclave as in any other runtime.
        stub = enclave.workload(backend, owner)
        identity = await asyncio.to_thread(
            stub.GetIdentity,
            workload_pb2.GetIdentityRequest(),
            metadata=owner.bearer,
            timeout=TIMEOUT,
        )
        assert identity.enclave_id == pod.enclave_id
        assert identity.owner == owner.user_id
        der = issued.public_bytes(serialization.Encoding.DER)
        assert identity.certificate_sha256 == hashlib.sha256(der).digest()

        assert enclave.proc.poll() is None  # stdin was at EOF all along: no matter here
        enclave.proc.send_signal(signal.SIGTERM)  # the kubelet stopping the pod
        assert await exit_status(enclave) == 0, enclave.stderr()
        assert "signalled" in enclave.stderr()
    finally:
        enclave.close()


async def test_unavailable_is_retried_reading_the_rotated_token_each_time(
    backend: Backend, owner: User, endpoint: EnrolmentEndpoint, tmp_path: Path
) -> None:
    pod = Pod.create(backend, owner, tmp_path)
    endpoint.refusals = [Unavailable("BACKEND_STARTING", "not yet") for _ in range(2)]
    endpoint.on_refusal = pod.rotate_token
    enclave = pod.start(owner, endpoint.address)
    try:
        await serving(enclave)
        tokens = [authorization for authorization, _ in endpoint.calls]
        assert tokens == ["Bearer sa-token-1", "Bearer sa-token-2", "Bearer sa-token-3"]
        assert len({request.csr_pem for _, request in endpoint.calls}) == 1  # one key
        assert enclave.stderr().count("unavailable (attempt") == 2
    finally:
        enclave.close()


async def test_an_endpoint_not_up_yet_is_waited_for(
    backend: Backend, owner: User, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pod = Pod.create(backend, owner, tmp_path)
    enclave = pod.start(owner, f"localhost:{port}")  # nothing listens there yet
    late = EnrolmentEndpoint(backend)
    server: grpc.aio.Server | None = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while "unavailable (attempt" not in enclave.stderr():
            assert loop.time() < deadline, enclave.stderr()
            await asyncio.sleep(0.05)
        server = await serve_endpoint(late, port)
        await serving(enclave)
        assert len(late.calls) == 1
    finally:
        enclave.close()
        if server is not None:
            await server.stop(None)


async def test_permission_denied_is_final_and_its_reason_is_logged(
    backend: Backend, owner: User, endpoint: EnrolmentEndpoint, tmp_path: Path
) -> None:
    endpoint.refusals = [PermissionDenied("ENROLLMENT_POD_MISMATCH", "not this enclave's pod")]
    enclave = Pod.create(backend, owner, tmp_path).start(owner, endpoint.address)
    try:
        assert await exit_status(enclave) == 1
        log = enclave.stderr()
        assert "refused: PERMISSION_DENIED ENROLLMENT_POD_MISMATCH" in log, log
        assert "Traceback" not in log, log
        assert len(endpoint.calls) == 1  # not retried
    finally:
        enclave.close()


async def test_a_certificate_for_another_key_is_refused(
    backend: Backend, owner: User, endpoint: EnrolmentEndpoint, tmp_path: Path
) -> None:
    endpoint.wrong_key = True
    enclave = Pod.create(backend, owner, tmp_path).start(owner, endpoint.address)
    try:
        assert await exit_status(enclave) == 1
        log = enclave.stderr()
        assert "not for this enclave's key" in log, log
        assert "serving on" not in log, log
    finally:
        enclave.close()


# Bad deployments ---------------------------------------------------------------------


def _break_owner(pod: Pod) -> list[str]:
    (pod.config_dir / "owner").write_text("not-a-uuid\n")
    return []


def _drop_jwks(pod: Pod) -> list[str]:
    (pod.config_dir / "jwks.json").unlink()
    return []


def _bad_ca(pod: Pod) -> list[str]:
    (pod.config_dir / "ca.pem").write_text("no certificate here\n")
    return []


def _empty_issuer(pod: Pod) -> list[str]:
    (pod.config_dir / "issuer").write_text("\n")
    return []


def _flag_and_dir(pod: Pod) -> list[str]:
    return ["--owner", str(uuid.uuid4())]


def _no_token_file(pod: Pod) -> list[str]:
    pod.token_file.unlink()
    return []


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_break_owner, "/owner must be a user id (UUID)"),
        (_drop_jwks, "/jwks.json: [Errno 2]"),
        (_bad_ca, "/ca.pem: "),
        (_empty_issuer, "/issuer must not be empty"),
        (_flag_and_dir, "--config-dir replaces --owner"),
        (_no_token_file, "[Errno 2]"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_a_bad_config_dir_is_a_usage_error(
    backend: Backend,
    owner: User,
    tmp_path: Path,
    breakage: Callable[[Pod], list[str]],
    message: str,
) -> None:
    pod = Pod.create(backend, owner, tmp_path)
    extra = breakage(pod)
    done = subprocess.run(
        [sys.executable, "-m", "licensing_enclave", *pod.args("localhost:1"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "usage: licensing-enclave" in done.stderr
    assert message in done.stderr, done.stderr


def test_enroll_needs_a_token_file(backend: Backend, owner: User, tmp_path: Path) -> None:
    pod = Pod.create(backend, owner, tmp_path)
    args = [a for a in pod.args("localhost:1") if a not in ("--token-file", str(pod.token_file))]
    done = subprocess.run(
        [sys.executable, "-m", "licensing_enclave", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--enroll and --token-file go together" in done.stderr


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _refused_within(stub: Any, bearer: tuple[tuple[str, str]], seconds: float) -> float:
    """Seconds until the enclave refuses ``bearer`` as SESSION_REVOKED (at most ``seconds``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < seconds:
        try:
            await asyncio.to_thread(
                stub.GetIdentity, workload_pb2.GetIdentityRequest(), metadata=bearer, timeout=5
            )
        except grpc.RpcError as exc:
            info = error_info(exc)
            reason = info.reason if info is not None else str(exc)
            if reason != "SESSION_REVOKED":
                raise
            return loop.time() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"the session was still accepted after {seconds}s")


async def test_a_logout_reaches_the_pod_over_its_revocation_stream_even_after_a_break(
    backend: Backend, owner: User, tmp_path: Path
) -> None:
    import jwt

    endpoint = EnrolmentEndpoint(backend)
    server = await serve_endpoint(endpoint)
    port = int(endpoint.address.rsplit(":", 1)[1])
    pod = Pod.create(backend, owner, tmp_path)
    enclave = pod.start(owner, endpoint.address)
    try:
        await serving(enclave)
        stub = enclave.workload(backend, owner)
        first, second = backend.token(owner), backend.token(owner)  # two logins
        for token in (first, second):
            await asyncio.to_thread(
                stub.GetIdentity, workload_pb2.GetIdentityRequest(), metadata=bearer(token)
            )
        for _ in range(200):  # the enclave opens its stream right after it serves
            if endpoint.watches:
                break
            await asyncio.sleep(0.02)
        assert endpoint.watches == ["Bearer sa-token-1"]

        sid = jwt.decode(first, options={"verify_signature": False})["sid"]
        endpoint.revoked.append([sid])  # the backend heard a logout
        assert await _refused_within(stub, bearer(first), 1.0) < 1.0

        # The backend goes away and comes back: the stream is opened again, with the token.
        await server.stop(None)
        server = await serve_endpoint(endpoint, port)
        pod.rotate_token()
        sid = jwt.decode(second, options={"verify_signature": False})["sid"]
        endpoint.revoked.append([sid])
        await _refused_within(stub, bearer(second), 20.0)
        assert endpoint.watches[-1] == "Bearer sa-token-2"
        assert "revocation stream from" in enclave.stderr()
    finally:
        enclave.close()
        await server.stop(None)
