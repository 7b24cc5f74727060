"""The enclave as the backend's local runtime runs it: a subprocess, a stdio handshake, real mTLS.

The test plays the backend (it holds the CA and the token signing key) and the users.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from enclave.v1 import workload_pb2, workload_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from licensing_server.pki import CertificateAuthority
from licensing_server.tokens import AccessTokenSigner, SigningKey
from tests.support import ABSURD_TIME_CLAIMS, error_info, key_pem, make_csr, resigned

ISSUER = AUDIENCE = "licensing"
ENCLAVE_HOST = "enclave.licensing.internal"
TIMEOUT = 15.0
KIB = 1024


# The backend -----------------------------------------------------------------------


@dataclass
class User:
    user_id: str
    key_pem: bytes
    cert_pem: bytes
    sha256: bytes
    token: str = ""

    @property
    def bearer(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class Backend:
    """What the backend holds: the CA, the frontend's token key (as a JWKS file)."""

    tmp: Path
    ca: CertificateAuthority
    token_key: SigningKey
    ca_path: Path
    jwks_path: Path

    @classmethod
    def create(cls, tmp: Path) -> Backend:
        ca = CertificateAuthority.load_or_create(tmp / "ca-key.pem", tmp / "ca.pem")
        token_key = SigningKey.load_or_create(tmp / "tk.pem")
        (tmp / "jwks.json").write_text(token_key.jwks_json())
        return cls(tmp, ca, token_key, tmp / "ca.pem", tmp / "jwks.json")

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def user(self, user_id: str | None = None) -> User:
        """A user certificate (as Login would issue it) and an access token bound to it."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.load_pem_x509_csr(make_csr(key).encode())
        uid = user_id or str(uuid.uuid4())
        cert = self.ca.sign_user_csr(
            csr, user_id=uid, username=f"u-{uid[:8]}", lifetime=dt.timedelta(hours=1)
        )
        user = User(uid, key_pem(key), cert.pem.encode(), cert.sha256)
        user.token = self.token(user)
        return user

    def token(
        self, user: User, *, key: SigningKey | None = None, now: dt.datetime | None = None
    ) -> str:
        moment = now or dt.datetime.now(dt.UTC)
        signer = AccessTokenSigner(
            key or self.token_key,
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl=dt.timedelta(minutes=5),
            clock=lambda: moment,
        )
        token, _ = signer.sign(
            user_id=user.user_id,
            username="someone",
            session_id=str(uuid.uuid4()),
            certificate_sha256=user.sha256,
        )
        return token


# The enclave process ---------------------------------------------------------------

_reader = concurrent.futures.ThreadPoolExecutor(max_workers=4)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        line = _reader.submit(proc.stdout.readline).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        proc.kill()
        raise
    assert line, f"enclave closed stdout (exit {proc.poll()})"
    message: dict[str, Any] = json.loads(line)
    return message


def send_line(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


@dataclass
class Enclave:
    proc: subprocess.Popen[bytes]
    enclave_id: str
    owner: User
    run_dir: Path
    log_path: Path
    address: str = ""
    certificate: x509.Certificate | None = None
    serving_sha256: str = ""
    _channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, backend: Backend, key: bytes | None, cert: bytes | None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=backend.ca_pem, private_key=key, certificate_chain=cert
        )
        channel = grpc.secure_channel(
            self.address, creds, options=[("grpc.ssl_target_name_override", ENCLAVE_HOST)]
        )
        self._channels.append(channel)
        return channel

    def workload(self, backend: Backend, user: User) -> workload_pb2_grpc.WorkloadServiceStub:
        return workload_pb2_grpc.WorkloadServiceStub(
            self.channel(backend, user.key_pem, user.cert_pem)
        )

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def enclave_args(backend: Backend, enclave_id: str, owner: str) -> list[str]:
    """The enclave's command line, as the runtime gives it."""
    return [
        "--enclave-id",
        enclave_id,
        "--owner",
        owner,
        "--listen",
        "127.0.0.1:0",
        "--ca-file",
        str(backend.ca_path),
        "--jwks-file",
        str(backend.jwks_path),
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
    ]


def start(backend: Backend, owner: User, *extra: str, owner_arg: str | None = None) -> Enclave:
    """Launch exactly as the runtime will; the handshake is left to the caller."""
    enclave_id = f"enc-{uuid.uuid4().hex[:8]}"
    run_dir = backend.tmp / enclave_id
    for sub in ("tmp", "home"):
        (run_dir / sub).mkdir(parents=True)
    log_path = backend.tmp / f"{enclave_id}.log"
    env = {**os.environ, "TMPDIR": str(run_dir / "tmp"), "HOME": str(run_dir / "home")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "licensing_enclave",
                *enclave_args(backend, enclave_id, owner_arg or owner.user_id),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=run_dir,
            env=env,
        )
    return Enclave(proc, enclave_id, owner, run_dir, log_path)


def sign_csr(backend: Backend, enclave: Enclave, csr_pem: str) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    issued = backend.ca.issue(
        csr.public_key(),
        common_name=enclave.enclave_id,
        lifetime=dt.timedelta(hours=1),
        dns_names=[ENCLAVE_HOST],
        server=True,
    )
    return issued.pem


def launch(backend: Backend, owner: User) -> Enclave:
    enclave = start(backend, owner)
    try:
        csr = read_line(enclave.proc)
        assert csr["type"] == "csr"
        send_line(
            enclave.proc,
            {
                "type": "certificate",
                "certificate_pem": sign_csr(backend, enclave, csr["csr_pem"]),
                "ca_certificates_pem": backend.ca.ca_certificates_pem,
            },
        )
        serving = read_line(enclave.proc)
        assert serving["type"] == "serving", serving
    except BaseException:
        enclave.close()
        print(enclave.stderr(), file=sys.stderr)
        raise
    enclave.address = serving["address"]
    enclave.serving_sha256 = serving["certificate_sha256"]
    return enclave


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    return Backend.create(tmp_path_factory.mktemp("backend"))


@pytest.fixture(scope="module")
def owner(backend: Backend) -> User:
    return backend.user()


@pytest.fixture(scope="module")
def enclave(backend: Backend, owner: User) -> Iterator[Enclave]:
    """One running enclave shared by the tests that leave its store as they found it."""
    running = launch(backend, owner)
    yield running
    running.close()


@pytest.fixture
def fresh(backend: Backend, owner: User) -> Iterator[Enclave]:
    running = launch(backend, owner)
    yield running
    running.close()


def rejected(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=TIMEOUT, **kwargs)
    return caught.value


def assert_error(error: grpc.RpcError, code: grpc.StatusCode, reason: str, **metadata: str) -> None:
    assert error.code() == code, error
    info = error_info(error)
    assert info is not None, error
    assert info.reason == reason
    for key, value in metadata.items():
        assert info.metadata[key] == value


# Stories ---------------------------------------------------------------------------


def test_the_owner_puts_gets_lists_and_deletes_a_secret(
    backend: Backend, owner: User, enclave: Enclave
) -> None:
    stub = enclave.workload(backend, owner)
    kw: dict[str, Any] = {"metadata": owner.bearer, "timeout": TIMEOUT}

    stub.PutSecret(workload_pb2.PutSecretRequest(name="db/password", value=b"hunter2"), **kw)
    stub.PutSecret(workload_pb2.PutSecretRequest(name="api.key-1", value=b"\x00\xff"), **kw)
    got = stub.GetSecret(workload_pb2.GetSecretRequest(name="db/password"), **kw)
    assert got.value == b"hunter2"
    listed = stub.ListSecrets(workload_pb2.ListSecretsRequest(), **kw)
    assert list(listed.names) == ["api.key-1", "db/password"]

    stub.PutSecret(workload_pb2.PutSecretRequest(name="db/password", value=b"rotated"), **kw)
    got = stub.GetSecret(workload_pb2.GetSecretRequest(name="db/password"), **kw)
    assert got.value == b"rotated"

    for name in ("db/password", "api.key-1"):
        stub.DeleteSecret(workload_pb2.DeleteSecretRequest(name=name), **kw)
    assert list(stub.ListSecrets(workload_pb2.ListSecretsRequest(), **kw).names) == []
    error = rejected(
        stub.GetSecret, workload_pb2.GetSecretRequest(name="db/password"), metadata=owner.bearer
    )
    assert_error(error, grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND")


def test_sign_verifies_against_the_enclave_certificate(
    backend: Backend, owner: User, enclave: Enclave
) -> None:
    stub = enclave.workload(backend, owner)
    data = b"license #42 for " + owner.user_id.encode()
    reply = stub.Sign(workload_pb2.SignRequest(data=data), metadata=owner.bearer, timeout=TIMEOUT)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    public_key.verify(reply.signature, data, ec.ECDSA(hashes.SHA256()))  # raises if bad
    assert hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() == (
        enclave.serving_sha256
    )


def test_get_identity_reports_the_served_certificate(
    backend: Backend, owner: User, enclave: Enclave
) -> None:
    stub = enclave.workload(backend, owner)
    identity = stub.GetIdentity(
        workload_pb2.GetIdentityRequest(), metadata=owner.bearer, timeout=TIMEOUT
    )
    assert identity.enclave_id == enclave.enclave_id
    assert identity.owner == owner.user_id
    cert = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert identity.certificate_sha256 == hashlib.sha256(der).digest()
    assert identity.certificate_sha256.hex() == enclave.serving_sha256


def test_any_client_certificate_from_the_ca_sees_health_and_reflection(
    backend: Backend, enclave: Enclave
) -> None:
    key, cert = backend.ca.issue_key_pair(common_name="operator", client=True)
    channel = enclave.channel(backend, key, cert.pem.encode())

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "enclave.v1.WorkloadService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    names = {s.name for s in reply.list_services_response.service}
    assert names == {
        "enclave.v1.WorkloadService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }

    # ...but such a certificate speaks for no user, so the workload stays closed.
    stub = workload_pb2_grpc.WorkloadServiceStub(channel)
    error = rejected(stub.ListSecrets, workload_pb2.ListSecretsRequest())
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "USER_CERTIFICATE_REQUIRED")


# Rejections ------------------------------------------------------------------------


def test_without_a_client_certificate_the_tls_handshake_fails(
    backend: Backend, enclave: Enclave
) -> None:
    channel = enclave.channel(backend, None, None)
    error = rejected(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_fails_the_tls_handshake(
    backend: Backend, owner: User, enclave: Enclave, tmp_path: Path
) -> None:
    rogue = Backend.create(tmp_path)
    impostor = rogue.user(owner.user_id)  # even claiming the owner's id
    stub = enclave.workload(backend, impostor)
    error = rejected(stub.ListSecrets, workload_pb2.ListSecretsRequest(), metadata=impostor.bearer)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_no_token_is_unauthenticated(backend: Backend, owner: User, enclave: Enclave) -> None:
    stub = enclave.workload(backend, owner)
    error = rejected(stub.GetIdentity, workload_pb2.GetIdentityRequest())
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REQUIRED")


def test_another_users_token_is_not_the_owners(backend: Backend, enclave: Enclave) -> None:
    other = backend.user()  # a valid user, certificate and token: just not the owner
    stub = enclave.workload(backend, other)
    error = rejected(stub.ListSecrets, workload_pb2.ListSecretsRequest(), metadata=other.bearer)
    assert_error(error, grpc.StatusCode.PERMISSION_DENIED, "NOT_ENCLAVE_OWNER")


def test_a_token_bound_to_another_certificate_is_refused(
    backend: Backend, owner: User, enclave: Enclave
) -> None:
    second = backend.user(owner.user_id)  # the owner's other certificate (another login)
    stub = enclave.workload(backend, second)
    error = rejected(stub.ListSecrets, workload_pb2.ListSecretsRequest(), metadata=owner.bearer)
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_CERTIFICATE_MISMATCH")


def test_an_expired_token_is_refused(backend: Backend, owner: User, enclave: Enclave) -> None:
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = backend.token(owner, now=an_hour_ago)
    stub = enclave.workload(backend, owner)
    error = rejected(
        stub.ListSecrets,
        workload_pb2.ListSecretsRequest(),
        metadata=(("authorization", f"Bearer {expired}"),),
    )
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


def test_a_token_from_a_key_outside_the_jwks_is_refused(
    backend: Backend, owner: User, enclave: Enclave, tmp_path: Path
) -> None:
    forged = backend.token(owner, key=SigningKey.load_or_create(tmp_path / "other.pem"))
    # Its own reason: the client learns that only a newer enclave would know the key.
    stub = enclave.workload(backend, owner)
    error = rejected(
        stub.ListSecrets,
        workload_pb2.ListSecretsRequest(),
        metadata=(("authorization", f"Bearer {forged}"),),
    )
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_KEY_UNKNOWN")


@pytest.mark.parametrize("claims", ABSURD_TIME_CLAIMS, ids=lambda c: ",".join(c))
def test_a_well_signed_token_with_absurd_times_is_refused(
    backend: Backend, owner: User, enclave: Enclave, claims: dict[str, object]
) -> None:
    key = backend.token_key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = resigned(owner.token, key, **claims)
    stub = enclave.workload(backend, owner)
    error = rejected(
        stub.ListSecrets,
        workload_pb2.ListSecretsRequest(),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert_error(error, grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


@pytest.mark.parametrize("name", ["", "x" * 129, "has space", "semi;colon", "caf\u00e9", "a\nb"])
def test_bad_secret_names_are_invalid(
    backend: Backend, owner: User, enclave: Enclave, name: str
) -> None:
    stub = enclave.workload(backend, owner)
    error = rejected(
        stub.PutSecret, workload_pb2.PutSecretRequest(name=name, value=b"v"), metadata=owner.bearer
    )
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "SECRET_NAME_INVALID", max_length="128")


def test_oversized_values_and_sign_data_are_invalid(
    backend: Backend, owner: User, enclave: Enclave
) -> None:
    stub = enclave.workload(backend, owner)
    stub.PutSecret(
        workload_pb2.PutSecretRequest(name="x" * 128, value=b"v" * (64 * KIB)),
        metadata=owner.bearer,
        timeout=TIMEOUT,
    )
    stub.DeleteSecret(
        workload_pb2.DeleteSecretRequest(name="x" * 128), metadata=owner.bearer, timeout=TIMEOUT
    )
    error = rejected(
        stub.PutSecret,
        workload_pb2.PutSecretRequest(name="big", value=b"v" * (64 * KIB + 1)),
        metadata=owner.bearer,
    )
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "SECRET_VALUE_TOO_LARGE", limit="65536")
    error = rejected(
        stub.Sign, workload_pb2.SignRequest(data=b"d" * (KIB * KIB + 1)), metadata=owner.bearer
    )
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "SIGN_DATA_TOO_LARGE", limit="1048576")
    error = rejected(
        stub.DeleteSecret, workload_pb2.DeleteSecretRequest(name="never"), metadata=owner.bearer
    )
    assert_error(error, grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND")


def test_the_store_is_bounded_in_count_and_total_size(
    backend: Backend, owner: User, fresh: Enclave
) -> None:
    stub = fresh.workload(backend, owner)
    kw: dict[str, Any] = {"metadata": owner.bearer, "timeout": TIMEOUT}

    for i in range(16):  # 16 x 64 KiB is exactly the 1 MiB total
        stub.PutSecret(workload_pb2.PutSecretRequest(name=f"big/{i}", value=b"b" * 64 * KIB), **kw)
    error = rejected(
        stub.PutSecret,
        workload_pb2.PutSecretRequest(name="one-more", value=b"!"),
        metadata=owner.bearer,
    )
    assert_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "SECRET_STORAGE_LIMIT", limit="1048576")
    # Replacing a value only counts the difference.
    stub.PutSecret(workload_pb2.PutSecretRequest(name="big/0", value=b"small"), **kw)
    stub.PutSecret(workload_pb2.PutSecretRequest(name="one-more", value=b"!"), **kw)

    for i in range(16):
        stub.DeleteSecret(workload_pb2.DeleteSecretRequest(name=f"big/{i}"), **kw)
    for i in range(99):  # with "one-more": 100 secrets
        stub.PutSecret(workload_pb2.PutSecretRequest(name=f"n/{i}", value=b"v"), **kw)
    error = rejected(
        stub.PutSecret,
        workload_pb2.PutSecretRequest(name="n/100", value=b"v"),
        metadata=owner.bearer,
    )
    assert_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "SECRET_COUNT_LIMIT", limit="100")
    stub.PutSecret(workload_pb2.PutSecretRequest(name="n/0", value=b"replaced"), **kw)
    assert len(stub.ListSecrets(workload_pb2.ListSecretsRequest(), **kw).names) == 100


# Lifecycle -------------------------------------------------------------------------


def test_closing_stdin_makes_the_enclave_exit(fresh: Enclave) -> None:
    assert fresh.proc.stdin is not None
    fresh.proc.stdin.close()  # what the kernel does when the backend dies
    assert fresh.wait() == 0, fresh.stderr()
    assert "stdin closed" in fresh.stderr()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_enclave_cleanly(
    backend: Backend, owner: User, fresh: Enclave, sig: signal.Signals
) -> None:
    stub = fresh.workload(backend, owner)
    stub.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=owner.bearer, timeout=TIMEOUT)
    fresh.proc.send_signal(sig)
    assert fresh.wait() == 0, fresh.stderr()
    assert "signalled" in fresh.stderr()
    assert fresh.proc.stdout is not None
    assert fresh.proc.stdout.read() == b""  # stdout carried the two JSON lines, nothing else


def test_the_enclave_key_is_never_written(backend: Backend, owner: User, fresh: Enclave) -> None:
    stub = fresh.workload(backend, owner)
    kw: dict[str, Any] = {"metadata": owner.bearer, "timeout": TIMEOUT}
    stub.PutSecret(workload_pb2.PutSecretRequest(name="s", value=b"top secret"), **kw)
    stub.Sign(workload_pb2.SignRequest(data=b"x"), **kw)
    fresh.proc.send_signal(signal.SIGTERM)
    assert fresh.wait() == 0
    written = [p for p in fresh.run_dir.rglob("*") if p.is_file()]
    assert not [p for p in written if b"PRIVATE KEY" in p.read_bytes()]
    assert not [p for p in written if b"top secret" in p.read_bytes()]
    assert "PRIVATE KEY" not in fresh.stderr()


def test_a_certificate_for_another_key_is_refused_at_startup(backend: Backend, owner: User) -> None:
    enclave = start(backend, owner)
    try:
        assert read_line(enclave.proc)["type"] == "csr"
        _, wrong = backend.ca.issue_key_pair(
            common_name=enclave.enclave_id, dns_names=[ENCLAVE_HOST], server=True
        )
        send_line(
            enclave.proc,
            {
                "type": "certificate",
                "certificate_pem": wrong.pem,
                "ca_certificates_pem": backend.ca.ca_certificates_pem,
            },
        )
        assert enclave.wait() != 0
        assert "not for this enclave's key" in enclave.stderr()
        assert enclave.proc.stdout is not None
        assert enclave.proc.stdout.read() == b""  # never announced serving
    finally:
        enclave.close()


def test_stdin_closed_before_the_certificate_fails_startup(backend: Backend, owner: User) -> None:
    enclave = start(backend, owner)
    try:
        assert read_line(enclave.proc)["type"] == "csr"
        assert enclave.proc.stdin is not None
        enclave.proc.stdin.close()
        assert enclave.wait() == 1
        assert "stdin closed before the certificate" in enclave.stderr()
    finally:
        enclave.close()


def test_a_listen_address_in_use_fails_startup_after_the_handshake(
    backend: Backend, owner: User
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        enclave = start(backend, owner, "--listen", address)
        try:
            csr = read_line(enclave.proc)
            send_line(
                enclave.proc,
                {
                    "type": "certificate",
                    "certificate_pem": sign_csr(backend, enclave, csr["csr_pem"]),
                    "ca_certificates_pem": backend.ca.ca_certificates_pem,
                },
            )
            assert enclave.wait() == 1
            log = enclave.stderr()
            assert f"licensing-enclave: cannot listen on {address}" in log, log
            assert "Traceback" not in log, log
            assert enclave.proc.stdout is not None
            assert enclave.proc.stdout.read() == b""  # never announced serving
        finally:
            enclave.close()


def test_a_bad_command_line_is_a_usage_error(backend: Backend, owner: User) -> None:
    enclave = start(backend, owner, owner_arg="not-a-uuid")
    try:
        assert enclave.wait() == 2
        assert "--owner" in enclave.stderr()
    finally:
        enclave.close()


def test_every_workload_method_needs_the_owner() -> None:
    from licensing_common.rpc.policy import Access
    from licensing_enclave import ENCLAVE_POLICY

    service = workload_pb2.DESCRIPTOR.services_by_name["WorkloadService"]
    for method in service.methods:
        assert ENCLAVE_POLICY[f"/{service.full_name}/{method.name}"] is Access.USER


async def test_the_handshake_gives_up_when_no_certificate_comes() -> None:
    from licensing_enclave import (
        EnclaveKey,
        ParentStdin,
        ProtocolOut,
        StartupError,
        obtain_certificate,
    )

    read_end, write_end = os.pipe()
    stdin = ParentStdin(read_end)
    stdin.start()
    try:
        sent = io.StringIO()
        with pytest.raises(StartupError, match="no certificate on stdin within"):
            await obtain_certificate(EnclaveKey(), "e-1", ProtocolOut(sent), stdin, within=0.2)
        assert json.loads(sent.getvalue())["type"] == "csr"
    finally:
        os.close(write_end)  # the reader thread sees EOF and ends
        await stdin.wait_closed()
        os.close(read_end)


def _proc_field(pid: int, name: str, prefix: str) -> str:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} in /proc/{pid}/{name}")


def test_the_running_enclave_cannot_dump_core_or_gain_privileges(enclave: Enclave) -> None:
    pid = enclave.proc.pid
    assert _proc_field(pid, "status", "NoNewPrivs:").split() == ["NoNewPrivs:", "1"]
    assert _proc_field(pid, "limits", "Max core file size").split()[4:6] == ["0", "0"]


def test_the_enclave_process_is_not_dumpable() -> None:
    """Checked from inside: other processes of its user cannot ptrace it or read its memory."""
    probe = (
        "import ctypes\n"
        "from licensing_enclave.__main__ import harden\n"
        "libc = ctypes.CDLL(None)\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
        "harden()\n"
        "print(before, libc.prctl(3, 0, 0, 0, 0))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["1", "0"]


def test_a_session_revoked_over_stdin_is_refused_at_once(
    backend: Backend, owner: User, fresh: Enclave
) -> None:
    """The backend's push after a logout: the session's unexpired token stops working."""
    import jwt

    stub = fresh.workload(backend, owner)
    stub.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=owner.bearer, timeout=TIMEOUT)
    other_session = backend.token(owner)  # the same user and certificate, another login
    session_id = jwt.decode(owner.token, options={"verify_signature": False})["sid"]

    send_line(fresh.proc, {"type": "something-else"})  # unknown control lines are ignored
    send_line(fresh.proc, {"type": "revoke_sessions", "session_ids": [session_id]})
    deadline = time.monotonic() + 1.0
    while True:
        try:
            stub.ListSecrets(
                workload_pb2.ListSecretsRequest(), metadata=owner.bearer, timeout=TIMEOUT
            )
        except grpc.RpcError as exc:
            assert_error(exc, grpc.StatusCode.UNAUTHENTICATED, "SESSION_REVOKED")
            break
        assert time.monotonic() < deadline, "the revoked session was still accepted after 1 s"
        time.sleep(0.01)
    stub.ListSecrets(
        workload_pb2.ListSecretsRequest(),
        metadata=(("authorization", f"Bearer {other_session}"),),
        timeout=TIMEOUT,
    )
