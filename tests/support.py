"""Test support: a real licensing stack (both processes), real TLS, real databases."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from licensing.v1 import auth_pb2, auth_pb2_grpc

from licensing_server.storage import (
    Database,
    EnclaveStore,
    Limits,
    Phase,
    UserStore,
    run_migrations,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


def _ephemeral_ports() -> range:
    """The ports the kernel hands outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


_EPHEMERAL = _ephemeral_ports()
#: Where ``free_port`` looks: above the fixed ports of the control plane (10257, 10259...).
_QUIET_PORTS = range(20_000, min(_EPHEMERAL.start, 32_768))
_ports = random.Random()
#: Ports handed out in this run, not handed out again (a stack's servers bind theirs later).
_handed: set[int] = set()


def free_port() -> int:
    """A free port below the ephemeral range: a port the kernel picked (bind to 0) may be
    handed to some process's outgoing connection before our server binds it (seen: swtpm
    failing with "Address already in use" on such a port); ports below the range are
    only ever taken by a bind."""
    if len(_handed) > len(_QUIET_PORTS) // 2:
        _handed.clear()
    for _ in range(200 if len(_QUIET_PORTS) >= 1000 else 0):
        port = _ports.choice(_QUIET_PORTS)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    with socket.socket() as s:  # no quiet range here: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port P with P+1 free too (swtpm serves commands on P and control on P+1)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        _handed.add(port + 1)
        return port
    raise RuntimeError("no free port pair")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def grpcurl_path() -> str:
    found = shutil.which("grpcurl") or str(Path.home() / "go" / "bin" / "grpcurl")
    if not Path(found).exists():
        raise RuntimeError("grpcurl is not installed; run scripts/setup.sh")
    return found


def new_key(kind: str = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "ec192":
        return ec.generate_private_key(ec.SECP192R1())
    raise ValueError(kind)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "someone") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def error_reason(error: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


@dataclass
class LoggedIn:
    user_id: str
    username: str
    key_pem: bytes
    cert_pem: bytes
    access_token: str
    refresh_token: str

    @property
    def bearer(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.access_token}"),)


@dataclass
class Stack:
    """A running frontend + backend pair on free ports with their own data directory."""

    database: str
    data_dir: Path
    database_url: str
    enroll_port: int
    api_port: int
    backend_port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    swtpm_port: int = field(default_factory=free_port_pair)
    #: Each process's Prometheus endpoint (LICENSING_*_METRICS_ADDR), on free ports too.
    frontend_metrics_port: int = field(default_factory=free_port)
    backend_metrics_port: int = field(default_factory=free_port)
    #: Start the supervisor as a process-group leader, so tests can signal the whole group.
    new_session: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    @property
    def enroll_addr(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    @property
    def api_addr(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    @property
    def backend_addr(self) -> str:
        return f"127.0.0.1:{self.backend_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LICENSING_DATA_DIR=str(self.data_dir),
            LICENSING_DATABASE_URL=self.database_url,
            LICENSING_FRONTEND_ENROLL_ADDR=self.enroll_addr,
            LICENSING_FRONTEND_API_ADDR=self.api_addr,
            LICENSING_BACKEND_ADDR=self.backend_addr,
            LICENSING_SWTPM_PORT=str(self.swtpm_port),
            LICENSING_FRONTEND_METRICS_ADDR=f"127.0.0.1:{self.frontend_metrics_port}",
            LICENSING_BACKEND_METRICS_ADDR=f"127.0.0.1:{self.backend_metrics_port}",
            LICENSING_BCRYPT_COST=os.environ.get("LICENSING_TEST_BCRYPT_COST", "8"),
            LICENSING_LOG_LEVEL="INFO",
            # One stack serves hundreds of tests from one address, faster than any user:
            # limits are raised a thousandfold here, and tests/api/test_rate_limits.py
            # starts stacks with the production values.
            LICENSING_RATE_LIMIT_PERCENT="100000",
            LICENSING_LOGIN_FAILURES_PER_MINUTE="100000",
            # Likewise the calls one address may have in flight (watch-heavy tests).
            LICENSING_MAX_CALLS_PER_ADDRESS="100000",
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.database}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "licensing_server.supervisor"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
            start_new_session=self.new_session,
        )
        wait_for_port(self.backend_port, 60, self.proc)
        wait_for_port(self.enroll_port, 60, self.proc)
        wait_for_port(self.api_port, 60, self.proc)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # Channels -----------------------------------------------------------------
    def _keep(self, channel: grpc.Channel) -> grpc.Channel:
        self._channels.append(channel)
        return channel

    def enroll_channel(self) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        return self._keep(grpc.secure_channel(self.enroll_addr, creds))

    def api_channel(self, key: bytes | None = None, cert: bytes | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=key, certificate_chain=cert
        )
        return self._keep(grpc.secure_channel(self.api_addr, creds))

    def user_channel(self, user: LoggedIn) -> grpc.Channel:
        return self.api_channel(user.key_pem, user.cert_pem)

    def backend_channel(self, key: bytes | None, cert: bytes | None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=key, certificate_chain=cert
        )
        return self._keep(grpc.secure_channel(self.backend_addr, creds))

    # Stories -------------------------------------------------------------------
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.enroll_channel())

    def sign_up(self, username: str | None = None, password: str = PASSWORD) -> str:
        name = username or f"user-{uuid.uuid4().hex[:12]}"
        reply = self.auth().SignUp(auth_pb2.SignUpRequest(username=name, password=password))
        return str(reply.username)

    def log_in(self, username: str, password: str = PASSWORD) -> LoggedIn:
        key = new_key()
        reply = self.auth().Login(
            auth_pb2.LoginRequest(username=username, password=password, csr_pem=make_csr(key))
        )
        return LoggedIn(
            user_id=reply.user_id,
            username=username,
            key_pem=key_pem(key),
            cert_pem=reply.client_certificate_pem.encode(),
            access_token=reply.access_token,
            refresh_token=reply.refresh_token,
        )

    def new_user(self) -> LoggedIn:
        return self.log_in(self.sign_up())

    # Database ------------------------------------------------------------------
    def row_counts(self) -> dict[str, int]:
        url = self.database_url.replace("sqlite+aiosqlite://", "sqlite://")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return {
                    table: int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
                    for table in ("users", "sessions", "refresh_tokens")
                }
        finally:
            engine.dispose()


def required_postgres(admin_url: str | None) -> str:
    """The PostgreSQL admin URL; the PostgreSQL tests fail, never skip, without one."""
    if not admin_url:
        raise RuntimeError(
            "LICENSING_TEST_POSTGRES_URL is not set; run scripts/postgres.sh (make test does)"
        )
    return admin_url


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    """A fresh database for one test session; returns (async URL, name)."""
    name = f"licensing_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1), name


def drop_postgres_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(
        admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


#: The phases a provisioned enclave's row goes through after ACCEPTED, in order.
AFTER_ACCEPTED = [
    Phase.SCHEDULED,
    Phase.RUNNING,
    Phase.CERTIFICATE_ISSUED,
    Phase.READY,
    Phase.ATTESTING,
    Phase.ATTESTED,
]


@contextlib.contextmanager
def migrated_database(database: str, directory: Path) -> Iterator[str]:
    """The URL of a fresh database at the newest schema, removed afterwards.

    SQLite: a file in ``directory``. PostgreSQL: a new database on the server of
    LICENSING_TEST_POSTGRES_URL (the tests fail, never skip, without one).
    """
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'licensing.db'}"
        run_migrations(url)
        yield url
        return
    admin_url = required_postgres(os.environ.get("LICENSING_TEST_POSTGRES_URL"))
    url, name = create_postgres_database(admin_url)
    try:
        run_migrations(url)
        yield url
    finally:
        drop_postgres_database(admin_url, name)


def signing_key_pem(stack: Stack) -> bytes:
    """The PEM of the key the stack's frontend signs with (its key set's current key).

    Tests read it ONLY to mint tokens the server must refuse for another reason.
    """
    from licensing_server.tokens import KeySetFiles

    key = KeySetFiles(stack.data_dir / "frontend", create=False).load().signing_key
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def second_frontend(first: Stack) -> Iterator[Stack]:
    """Another frontend process beside ``first``'s (a second replica): same backend,
    database and data directory (certificates, signing keys), other ports."""
    second = dataclasses.replace(
        first, enroll_port=free_port(), api_port=free_port(), proc=None, _channels=[]
    )
    try:
        env = second.env(LICENSING_FRONTEND_METRICS_ADDR=f"127.0.0.1:{free_port()}")
        assert first.log_path is not None
        with (first.log_path.parent / "second-frontend.log").open("ab") as log:
            second.proc = subprocess.Popen(
                [sys.executable, "-m", "licensing_server.frontend.app"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=first.data_dir.parent,
            )
        wait_for_port(second.enroll_port, 60, second.proc)
        wait_for_port(second.api_port, 60, second.proc)
        yield second
    finally:
        second.stop()


def pid_of(stack: Stack, process: str) -> int:
    """The pid of the stack's ``backend`` or ``frontend`` (the supervisor writes them)."""
    return int((stack.data_dir / "run" / f"{process}.pid").read_text())


def start_stack(
    database: str, tmp: Path, admin_url: str | None, **extra_env: str
) -> Iterator[Stack]:
    data_dir = tmp / f"data-{database}"
    data_dir.mkdir(parents=True, exist_ok=True)  # a test may seed it
    pg_name = None
    if database == "postgresql":
        url, pg_name = create_postgres_database(required_postgres(admin_url))
    else:
        url = f"sqlite+aiosqlite:///{data_dir / 'licensing.db'}"
    stack = Stack(
        database, data_dir, url, free_port(), free_port(), free_port(), extra_env=extra_env
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if pg_name and admin_url:
            drop_postgres_database(admin_url, pg_name)


class TwoProcessDatabase:
    """One database seen as the frontend and the backend see it: two engines.

    Counts the statements the frontend's engine runs, for tests and benchmarks of
    what watching costs.
    """

    def __init__(self, url: str):
        self.frontend_db = Database.connect(url)
        self.backend_db = Database.connect(url)
        self.frontend = EnclaveStore(self.frontend_db)
        self.backend = EnclaveStore(self.backend_db)
        self.frontend_statements = 0
        for engine in self.frontend_db.sync_engines:
            sa.event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *_: object) -> None:
        self.frontend_statements += 1

    async def new_enclave(self, request_id: str = "r1") -> str:
        """An ACCEPTED enclave of a new user, written as the frontend writes it."""
        now = dt.datetime.now(dt.UTC)
        user = await UserStore(self.backend_db).create_user(
            f"user{os.urandom(6).hex()}", "not-a-real-hash", now
        )
        record, _ = await self.backend.reserve(
            owner_id=user.id,
            request_id=request_id,
            nonce=b"",
            limits=Limits(5, dt.timedelta(hours=1)),
            now=now,
        )
        return record.id

    async def close(self) -> None:
        await self.frontend_db.close()
        await self.backend_db.close()


#: Time claims no token of ours carries: each must be refused as TOKEN_INVALID, however
#: well signed (2**70 once overflowed ``datetime`` into INTERNAL).
ABSURD_TIME_CLAIMS: list[dict[str, object]] = [
    {"exp": 2**70},
    {"exp": 10**400},
    {"exp": 1e300},
    {"exp": 2**63 - 1},
    {"exp": int(time.time()) + 10 * 365 * 86400},
    {"iat": -(2**70)},
    {"iat": 0},
    {"nbf": -(2**70)},
    {"nbf": 2**70},
    {"exp": "tomorrow"},
    {"iat": True},
]


def resigned(token: str, key_pem: bytes, **claims: object) -> str:
    """``token`` with ``claims`` replaced, signed again with the real signing key."""
    import jwt

    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    payload.update(claims)
    return jwt.encode(payload, key_pem, algorithm="ES256", headers=header)
