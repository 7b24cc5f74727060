"""Property tests: no input, however malformed, makes a served RPC fail badly.

Every implemented RPC gets arbitrary serialized bytes (garbage protobuf reaches the
server through an identity serializer) and structured requests whose fields are
arbitrary text. Whatever the server answers, it must be a deliberate answer:

* never UNKNOWN or INTERNAL (an unhandled exception), nor UNAVAILABLE or
  DEADLINE_EXCEEDED (the stack is up, so those hide a crash or a hang);
* the server is still running afterwards, with the same frontend and backend
  processes (the supervisor would restart a crashed one under a new pid);
* a rejected call leaves the database row counts exactly as they were.
"""

from __future__ import annotations

import base64
import json
import operator
import socket
import ssl
import string
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from licensing.control.v1 import control_pb2
from licensing.v1 import attestation_pb2, auth_pb2, enclave_pb2

from tests.enclaves.helpers import Owner
from tests.support import PASSWORD, LoggedIn, Stack, error_reason, make_csr, new_key, pid_of

AUTH = "/licensing.v1.AuthService/"
SIGN_UP = AUTH + "SignUp"
LOGIN = AUTH + "Login"
REFRESH = AUTH + "RefreshToken"
LOGOUT = AUTH + "Logout"
CURRENT_USER = AUTH + "GetCurrentUser"
TRUST_BUNDLE = "/licensing.v1.TrustService/GetTrustBundle"
SIGN_CERT = "/licensing.control.v1.CertificateService/SignUserCertificate"
CA_CERTS = "/licensing.control.v1.CertificateService/GetCaCertificates"

PUBLIC_METHODS = (SIGN_UP, LOGIN, REFRESH, TRUST_BUNDLE)
USER_METHODS = (LOGOUT, CURRENT_USER)
BACKEND_METHODS = (SIGN_CERT, CA_CERTS)

#: Statuses that mean the server did not decide the outcome itself.
FORBIDDEN = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CALL_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FUZZ_MORE = settings(FUZZ, max_examples=120)

Metadata = tuple[tuple[str, str], ...]


# Calls ----------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Outcome:
    method: str
    code: grpc.StatusCode
    details: str | None
    reason: str | None


def call_raw(
    channel: grpc.Channel, method: str, payload: bytes, metadata: Metadata | None = None
) -> Outcome:
    """Send ``payload`` as the serialized request, byte for byte."""
    rpc = channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
    try:
        rpc(payload, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        call: grpc.Call = exc  # type: ignore[assignment]  # raised errors are also Calls
        return Outcome(method, call.code(), call.details(), error_reason(exc))
    return Outcome(method, grpc.StatusCode.OK, None, None)


TABLES = {name: sa.table(name) for name in ("users", "sessions", "refresh_tokens")}


@dataclass
class Ledger:
    """The row counts the database must still have after any rejected call.

    Counts through one pooled engine per test: ``Stack.row_counts`` opens a new
    engine each time, which costs ~40 ms per example on PostgreSQL.
    """

    stack: Stack
    engine: sa.Engine
    counts: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int | None] = field(default_factory=dict)

    def current_pids(self) -> dict[str, int | None]:
        """Pids of the supervised children; ``None`` once the supervisor removed the file."""
        pids: dict[str, int | None] = {}
        for name in ("frontend", "backend"):
            try:
                pids[name] = pid_of(self.stack, name)
            except FileNotFoundError:
                pids[name] = None
        return pids

    def row_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
                for name, table in TABLES.items()
            }

    def reset(self) -> None:
        self.counts = self.row_counts()

    def check(self, outcome: Outcome) -> None:
        event(f"{outcome.code.name} {outcome.reason or ''}".strip())  # --hypothesis-show-statistics
        proc = self.stack.proc
        assert proc is not None
        assert proc.poll() is None, (
            f"the server exited after {outcome.method}; see {self.stack.log_path}"
        )
        # The supervisor restarts a crashed child: a new pid means one died.
        assert self.current_pids() == self.pids, (
            f"a server process restarted or stopped after {outcome.method}: "
            f"{self.pids} -> {self.current_pids()}; see {self.stack.log_path}"
        )
        assert outcome.code not in FORBIDDEN, (
            f"{outcome.method} answered {outcome.code.name} "
            f"(reason {outcome.reason}): {outcome.details}"
        )
        before, self.counts = self.counts, self.row_counts()
        if outcome.code is not grpc.StatusCode.OK:
            assert self.counts == before, (
                f"{outcome.method} was rejected with {outcome.code.name} "
                f"({outcome.reason}) but changed the database: {before} -> {self.counts}"
            )


@dataclass
class Session:
    """A logged-in user on the mTLS API listener, logged in again once it logs out."""

    stack: Stack
    ledger: Ledger
    username: str
    user: LoggedIn | None = None
    channel: grpc.Channel | None = None

    def ensure(self) -> tuple[LoggedIn, grpc.Channel]:
        if self.user is None or self.channel is None:
            self.user = self.stack.log_in(self.username)
            self.channel = self.stack.user_channel(self.user)
            self.ledger.reset()
        return self.user, self.channel

    def after(self, outcome: Outcome) -> None:
        if outcome.method == LOGOUT and outcome.code is grpc.StatusCode.OK:
            self.user = None  # that session is revoked now


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class RawHttp2:
    """A bare gRPC-over-HTTP/2 client on the API listener, for metadata grpc will not send.

    grpc clients refuse non-ASCII metadata values, but nothing stops a peer from
    putting any bytes in an HTTP/2 header, and the server does receive them.
    """

    def __init__(self, stack: Stack, user: LoggedIn, tmp: Path):
        self.user = user
        (tmp / "user.key").write_bytes(user.key_pem)
        (tmp / "user.pem").write_bytes(user.cert_pem)
        context = ssl.create_default_context(cadata=stack.ca_pem.decode())
        context.check_hostname = False  # the server certificate names the service, not 127.0.0.1
        context.load_cert_chain(tmp / "user.pem", tmp / "user.key")
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", stack.api_port), timeout=CALL_TIMEOUT)
        self._sock = context.wrap_socket(raw)
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
            )
        )
        self._conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        self._sock.sendall(self._conn.data_to_send())

    def close(self) -> None:
        self._sock.close()

    def call(self, method: str, headers: Sequence[tuple[bytes, bytes]]) -> Outcome:
        stream = self._conn.get_next_available_stream_id()
        self._conn.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", method.encode()),
                (b":authority", b"localhost"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *headers,
            ],
        )
        self._conn.send_data(stream, struct.pack(">BI", 0, 0), end_stream=True)
        self._flush()
        received: dict[bytes, bytes] = {}
        while True:
            data = self._sock.recv(65536)
            if not data:
                return Outcome(method, grpc.StatusCode.UNAVAILABLE, "connection closed", None)
            for frame_event in self._conn.receive_data(data):
                if isinstance(frame_event, h2.events.DataReceived):
                    self._conn.acknowledge_received_data(
                        frame_event.flow_controlled_length, frame_event.stream_id
                    )
                if getattr(frame_event, "stream_id", None) != stream:
                    continue
                if isinstance(frame_event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    received.update((bytes(k), bytes(v)) for k, v in frame_event.headers or ())
                elif isinstance(frame_event, h2.events.StreamReset):
                    return Outcome(method, grpc.StatusCode.INTERNAL, "stream reset", None)
                elif isinstance(frame_event, h2.events.StreamEnded):
                    self._flush()
                    code = _STATUS_CODES.get(int(received.get(b"grpc-status", b"2")))
                    details = received.get(b"grpc-message", b"").decode(errors="replace")
                    return Outcome(method, code or grpc.StatusCode.UNKNOWN, details, None)
            self._flush()


@dataclass
class RawConnections:
    """One ``RawHttp2`` at a time, for the certificate of the session's current login."""

    stack: Stack
    tmp: Path
    current: RawHttp2 | None = None

    def get(self, user: LoggedIn) -> RawHttp2:
        if self.current is None or self.current.user is not user:
            self.close()
            self.current = RawHttp2(self.stack, user, self.tmp)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


# Fixtures -------------------------------------------------------------------------


@pytest.fixture
def ledger(stack: Stack) -> Iterator[Ledger]:
    engine = sa.create_engine(stack.database_url.replace("sqlite+aiosqlite://", "sqlite://"))
    ledger = Ledger(stack, engine)
    ledger.pids = ledger.current_pids()
    assert stack.proc is not None
    assert stack.proc.poll() is None, f"the stack is not running; see {stack.log_path}"
    assert None not in ledger.pids.values(), f"no pid files: {ledger.pids}; see {stack.log_path}"
    ledger.reset()
    assert ledger.counts == stack.row_counts()
    yield ledger
    engine.dispose()


@pytest.fixture
def enroll(stack: Stack) -> grpc.Channel:
    return stack.enroll_channel()


@pytest.fixture
def internal(stack: Stack) -> grpc.Channel:
    """The backend, as the frontend reaches it (its internal client certificate)."""
    frontend = stack.data_dir / "frontend"
    return stack.backend_channel(
        (frontend / "internal-client-key.pem").read_bytes(),
        (frontend / "internal-client.pem").read_bytes(),
    )


@pytest.fixture
def session(stack: Stack, ledger: Ledger) -> Iterator[Session]:
    me = Session(stack, ledger, stack.sign_up())
    me.ensure()
    yield me
    if me.channel is not None:
        me.channel.close()


@pytest.fixture
def raw_http2(stack: Stack, tmp_path: Path) -> Iterator[RawConnections]:
    connections = RawConnections(stack, tmp_path)
    yield connections
    connections.close()


@pytest.fixture
def stranger(stack: Stack, ledger: Ledger) -> LoggedIn:
    """Another user: valid tokens, bound to someone else's certificate."""
    user = stack.new_user()
    ledger.reset()
    return user


# Strategies -----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _utf8_or_not() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=40).map(lambda s: s.encode("utf-8")),
        st.binary(max_size=40),  # mostly invalid UTF-8 for string fields
        st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]),
    )


@st.composite
def _wire_field(draw: st.DrawFn) -> bytes:
    """One protobuf field in wire format, often malformed on purpose."""
    number = draw(st.one_of(st.integers(1, 5), st.integers(0, (1 << 29) - 1)))
    wire_type = draw(st.sampled_from([0, 1, 2, 5, 2, 2, 3, 4, 6, 7]))
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        body = draw(
            st.one_of(
                st.integers(0, (1 << 64) - 1).map(_varint),
                st.just(b"\xff" * 11),  # a varint that never ends within 64 bits
                st.just(b"\x80"),  # truncated
            )
        )
    elif wire_type == 1:
        body = draw(st.binary(min_size=0, max_size=8))
    elif wire_type == 5:
        body = draw(st.binary(min_size=0, max_size=4))
    elif wire_type == 2:
        data = draw(_utf8_or_not())
        length = draw(st.one_of(st.just(len(data)), st.integers(0, (1 << 32) - 1)))
        body = _varint(length) + data
    else:
        body = b""
    return tag + body


def raw_requests() -> st.SearchStrategy[bytes]:
    """Serialized requests: random bytes, and wire-format fields that almost parse."""
    return st.one_of(
        st.binary(max_size=512),
        st.lists(_wire_field(), max_size=6).map(b"".join),
        st.sampled_from([b"", b"\x00", b"\x0a", b"\x0a\xff\xff\xff\xff\x0f"]),
        st.sampled_from([MAX_MESSAGE_BYTES + 1, 1 << 20]).map(lambda n: b"\x0a" * n),
    )


_HUGE_SIZES = [73, 129, 4097, 16 * 1024 + 1, 300_000, MAX_MESSAGE_BYTES + 1]


_OPENERS = ["[", "{", '{"a":', '[{"a":', "(", "<a>", "\\", "${", "%7B"]
_DEPTHS = [2, 64, 1000, 100_000]


def nested_texts() -> st.SearchStrategy[str]:
    """Deeply nested structures (JSON, XML-ish, escapes), raw and base64url-encoded.

    A parser that recurses meets its limit here (100,000 brackets once raised
    RecursionError through a page token); both encodings reach fields that decode.
    """
    nested = st.builds(operator.mul, st.sampled_from(_OPENERS), st.sampled_from(_DEPTHS))
    return st.one_of(
        nested,
        st.sampled_from(_DEPTHS).map(lambda depth: "[" * depth + "]" * depth),  # valid JSON
        nested.map(lambda text: base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")),
        nested.map(lambda text: base64.b64encode(text.encode()).decode()),
    )


def texts(max_size: int = 80) -> st.SearchStrategy[str]:
    """Any text: unicode, control characters, NUL, nested structures, a few huge strings."""
    return st.one_of(
        st.text(max_size=max_size),
        st.text(st.characters(codec="ascii"), max_size=max_size),
        st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=max_size),
        st.builds(
            operator.mul,
            st.sampled_from(["a", "\x00", "\u00e9", "\U0001f600", " ", "-"]),
            st.sampled_from(_HUGE_SIZES),
        ),
        nested_texts(),
    )


#: Integers at the edges of every protobuf integer type.
_INTEGER_EDGES = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    2**32 - 1,
    2**32,
    2**53,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
]


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers of a field's type (``low``..``high``), the type's edges drawn often."""
    edges = [n for n in _INTEGER_EDGES if low <= n <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 100))


UINT32, INT32, UINT64 = (0, 2**32 - 1), (-(2**31), 2**31 - 1), (0, 2**64 - 1)


def binaries(max_size: int = 80) -> st.SearchStrategy[bytes]:
    """Bytes fields: any bytes, the texts above encoded, empty and huge."""
    return st.one_of(
        st.binary(max_size=max_size),
        texts(max_size).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"", b"\x00" * 16, b"\xff" * 64, b"\x00" * 65, b"n" * (1 << 20)]),
    )


def usernames() -> st.SearchStrategy[str]:
    return st.one_of(
        texts(40),
        st.from_regex(r"[A-Za-z0-9._\-]{0,40}", fullmatch=True),
        st.from_regex(r"[a-z0-9][a-z0-9._\-]{1,30}[a-z0-9]", fullmatch=True),
        st.sampled_from(["\uff41\uff42\uff43", "\u0430dmin", "ADMIN", "a\u0301bc", "abc\x00"]),
    )


def passwords() -> st.SearchStrategy[str]:
    return st.one_of(
        texts(100),
        st.sampled_from([PASSWORD, "x" * 72, "x" * 73, "\u00e9" * 36, "\u00e9" * 37, "1234567"]),
    )


_CSR_LABEL = "CERTIFICATE REQUEST"
_SHA256 = hashes.SHA256()


def _pem(der: bytes, label: str = _CSR_LABEL) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


@cache
def _csr_der_samples() -> tuple[bytes, ...]:
    """Self-signed CSRs over every key family the CA knows of, acceptable or not."""

    def der(key: object, algorithm: hashes.HashAlgorithm | None = _SHA256) -> bytes:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")]))
            .sign(key, algorithm)  # type: ignore[arg-type]
        )
        return csr.public_bytes(serialization.Encoding.DER)

    return (
        der(new_key("ec")),
        der(ec.generate_private_key(ec.SECP384R1())),
        der(new_key("ec192")),
        der(ec.generate_private_key(ec.SECP256K1())),
        der(new_key("rsa1024")),
        der(rsa.generate_private_key(public_exponent=3, key_size=2048)),
        der(ed25519.Ed25519PrivateKey.generate(), None),
        der(ed448.Ed448PrivateKey.generate(), None),
        der(dsa.generate_private_key(key_size=2048)),
    )


@st.composite
def _mutated_csr(draw: st.DrawFn) -> str:
    der = bytearray(draw(st.sampled_from(_csr_der_samples())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(der) - 1))
        der[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(der)))
    return _pem(bytes(der[: cut or len(der)]))


def csrs() -> st.SearchStrategy[str]:
    return st.one_of(
        texts(200),
        st.sampled_from(_csr_der_samples()).map(_pem),
        _mutated_csr(),
        st.binary(max_size=300).map(_pem),
        st.binary(max_size=300).map(lambda b: _pem(b, "CERTIFICATE")),
        st.builds(
            lambda pem, junk: pem + junk, st.sampled_from(_csr_der_samples()).map(_pem), texts(60)
        ),
        st.just(make_csr(new_key())),
    )


def refresh_tokens(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        texts(160),
        st.text(string.ascii_letters + string.digits + "-_", max_size=60).map("lrt_".__add__),
        st.sampled_from(known),
        st.builds(
            lambda t, i, c: t[:i] + c + t[i + 1 :],
            st.sampled_from(known),
            st.integers(0, 50),
            # A proto string field holds UTF-8 (no lone surrogates); bad UTF-8 on the wire
            # is what the raw-bytes strategies above send.
            st.characters(codec="utf-8"),
        ),
    )


_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _forged_jwt(draw: st.DrawFn, kid: str) -> str:
    header = draw(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "alg": st.sampled_from(["ES256", "none", "HS256", "RS256"]),
                    "kid": st.sampled_from([kid, "nope"]) | _JSON,
                }
            ),
            _JSON,
        )
    )
    payload = draw(_JSON)
    segments = [
        _b64url(json.dumps(header).encode()),
        _b64url(json.dumps(payload).encode()),
        _b64url(draw(st.binary(max_size=64))),
    ]
    return ".".join(segments[: draw(st.integers(1, 3))])


def authorizations(own: str, other: str, kid: str) -> st.SearchStrategy[Metadata]:
    """``authorization`` metadata: printable text, near-valid and forged bearer tokens."""

    def mutate(token: str, at: int, char: str) -> str:
        at %= len(token)
        return token[:at] + char + token[at + 1 :]

    tokens = st.one_of(
        st.text(_PRINTABLE, max_size=120),
        st.sampled_from([own, other, own + "x", own[:-4], own.replace(".", "..")]),
        st.builds(mutate, st.just(own), st.integers(0, 10_000), _PRINTABLE),
        _forged_jwt(kid),
        st.sampled_from([4097, 8000]).map("a".__mul__),
    )
    schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "", "Bearer:", "Be arer"])
    values = st.one_of(
        st.text(_PRINTABLE, max_size=200),
        st.builds(
            lambda s, sep, t: f"{s}{sep}{t}", schemes, st.sampled_from([" ", "  ", ""]), tokens
        ),
    )
    return st.lists(values, max_size=3).map(lambda vs: tuple(("authorization", v) for v in vs))


def raw_authorizations(own: str) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """``authorization`` header bytes no grpc client sends: any unicode, any octets."""
    anything = st.one_of(
        st.text(max_size=120).map(str.encode),
        st.binary(max_size=120),
        st.sampled_from(["\u00e9\U0001f600", "Bearer\u00a0x", "Bearer \u202e", "\r\n"]).map(
            str.encode
        ),
    )
    values = st.one_of(
        anything,
        st.builds(operator.add, st.sampled_from([b"Bearer ", b"bearer ", b"Bearer"]), anything),
        st.builds(operator.add, st.just(f"Bearer {own}".encode()), anything),
        st.builds(lambda junk: f"Bearer {junk}{own}".encode(), st.text(min_size=1, max_size=4)),
    )
    return st.lists(values, min_size=1, max_size=2).map(
        lambda vs: [(b"authorization", v) for v in vs]
    )


def user_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        texts(60),
        st.uuids().map(str),
        st.uuids().map(lambda u: "{" + str(u).upper() + "}"),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
        st.text(st.sampled_from("0123456789abcdef_-+ \u0660\uff10"), min_size=30, max_size=40),
    )


# Arbitrary bytes ------------------------------------------------------------------


@pytest.mark.parametrize("method", PUBLIC_METHODS)
@FUZZ
@given(payload=raw_requests())
def test_public_rpcs_survive_arbitrary_request_bytes(
    enroll: grpc.Channel, ledger: Ledger, method: str, payload: bytes
) -> None:
    ledger.check(call_raw(enroll, method, payload))


@pytest.mark.parametrize("method", USER_METHODS)
@FUZZ
@given(payload=raw_requests())
def test_user_rpcs_survive_arbitrary_request_bytes(
    session: Session, ledger: Ledger, method: str, payload: bytes
) -> None:
    user, channel = session.ensure()
    outcome = call_raw(channel, method, payload, user.bearer)
    session.after(outcome)
    ledger.check(outcome)


@pytest.mark.parametrize("method", BACKEND_METHODS)
@FUZZ
@given(payload=raw_requests())
def test_backend_rpcs_survive_arbitrary_request_bytes(
    internal: grpc.Channel, ledger: Ledger, method: str, payload: bytes
) -> None:
    ledger.check(call_raw(internal, method, payload))


# Structured requests ----------------------------------------------------------------


@FUZZ_MORE
@given(username=usernames(), password=passwords())
def test_sign_up_with_arbitrary_fields(
    enroll: grpc.Channel, ledger: Ledger, username: str, password: str
) -> None:
    request = auth_pb2.SignUpRequest(username=username, password=password)
    ledger.check(call_raw(enroll, SIGN_UP, request.SerializeToString()))


@pytest.fixture
def known_username(stack: Stack, ledger: Ledger) -> str:
    name = stack.sign_up()
    ledger.reset()
    return name


@FUZZ_MORE
@given(data=st.data(), password=passwords(), csr_pem=csrs())
def test_login_with_arbitrary_fields(
    enroll: grpc.Channel,
    ledger: Ledger,
    known_username: str,
    data: st.DataObject,
    password: str,
    csr_pem: str,
) -> None:
    username = data.draw(usernames() | st.just(known_username) | st.just(known_username.upper()))
    request = auth_pb2.LoginRequest(username=username, password=password, csr_pem=csr_pem)
    ledger.check(call_raw(enroll, LOGIN, request.SerializeToString()))


@pytest.fixture
def spent_refresh_tokens(stack: Stack, ledger: Ledger) -> list[str]:
    """Real-looking tokens that must not work: a spent one, a near miss, an unknown one.

    Presenting the spent token revokes its session (reuse detection), so later
    examples also meet a revoked session; both are rejections without new rows.
    """
    first = stack.new_user()
    rotated = stack.auth().RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token)
    )
    assert rotated.refresh_token
    ledger.reset()
    return [first.refresh_token, rotated.refresh_token + "x", "lrt_" + "A" * 43]


@FUZZ_MORE
@given(data=st.data(), csr_pem=csrs())
def test_refresh_token_with_arbitrary_fields(
    enroll: grpc.Channel,
    ledger: Ledger,
    spent_refresh_tokens: list[str],
    data: st.DataObject,
    csr_pem: str,
) -> None:
    token = data.draw(refresh_tokens(spent_refresh_tokens))
    csr = data.draw(st.just("") | st.just(csr_pem))
    request = auth_pb2.RefreshTokenRequest(refresh_token=token, csr_pem=csr)
    ledger.check(call_raw(enroll, REFRESH, request.SerializeToString()))


def _kid(token: str) -> str:
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


@pytest.mark.parametrize("method", USER_METHODS)
@FUZZ_MORE
@given(data=st.data())
def test_user_rpcs_with_arbitrary_authorization(
    session: Session, stranger: LoggedIn, ledger: Ledger, method: str, data: st.DataObject
) -> None:
    user, channel = session.ensure()
    metadata = data.draw(
        authorizations(user.access_token, stranger.access_token, _kid(user.access_token))
    )
    outcome = call_raw(channel, method, b"", metadata)
    session.after(outcome)
    ledger.check(outcome)


@pytest.mark.parametrize("method", USER_METHODS)
@FUZZ
@given(data=st.data())
def test_user_rpcs_with_any_authorization_bytes_over_raw_http2(
    session: Session,
    raw_http2: RawConnections,
    ledger: Ledger,
    method: str,
    data: st.DataObject,
) -> None:
    user, _ = session.ensure()
    headers = data.draw(raw_authorizations(user.access_token))
    outcome = raw_http2.get(user).call(method, headers)
    session.after(outcome)
    ledger.check(outcome)


@pytest.mark.parametrize("method", USER_METHODS)
@FUZZ
@given(data=st.data())
def test_user_rpcs_without_a_client_certificate(
    enroll: grpc.Channel, stranger: LoggedIn, ledger: Ledger, method: str, data: st.DataObject
) -> None:
    metadata = data.draw(
        authorizations(stranger.access_token, stranger.access_token, _kid(stranger.access_token))
    )
    outcome = call_raw(enroll, method, b"", metadata)
    assert outcome.code is not grpc.StatusCode.OK
    ledger.check(outcome)


@FUZZ_MORE
@given(
    user_id=user_ids(),
    username=usernames(),
    csr_pem=csrs(),
    lifetime=st.one_of(integers(*UINT32), st.sampled_from([0, 1, 60, 86_400])),
)
def test_sign_user_certificate_with_arbitrary_fields(
    internal: grpc.Channel,
    ledger: Ledger,
    user_id: str,
    username: str,
    csr_pem: str,
    lifetime: int,
) -> None:
    request = control_pb2.SignUserCertificateRequest(
        user_id=user_id, username=username, csr_pem=csr_pem, lifetime_seconds=lifetime
    )
    ledger.check(call_raw(internal, SIGN_CERT, request.SerializeToString()))


# The enclave API -------------------------------------------------------------------

ENCLAVE = "/licensing.v1.EnclaveService/"
CREATE = ENCLAVE + "CreateEnclave"
WATCH = ENCLAVE + "WatchEnclave"
GET = ENCLAVE + "GetEnclave"
LIST = ENCLAVE + "ListEnclaves"
DELETE = ENCLAVE + "DeleteEnclave"
ATTEST = "/licensing.v1.AttestationService/GetAttestation"
PROVISION = "/licensing.control.v1.ProvisioningService/Provision"
DEPROVISION = "/licensing.control.v1.ProvisioningService/Deprovision"
QUOTE = "/licensing.control.v1.QuoteService/Quote"
STREAMING = {CREATE, WATCH, PROVISION}


def call_any_raw(
    channel: grpc.Channel, method: str, payload: bytes, metadata: Metadata | None = None
) -> Outcome:
    """``call_raw`` for unary and server-streaming methods (every reply read)."""
    if method not in STREAMING:
        return call_raw(channel, method, payload, metadata)
    rpc = channel.unary_stream(
        method, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        for _ in rpc(payload, metadata=metadata, timeout=CALL_TIMEOUT):
            pass
    except grpc.RpcError as exc:
        call: grpc.Call = exc  # type: ignore[assignment]  # raised errors are also Calls
        return Outcome(method, call.code(), call.details(), error_reason(exc))
    return Outcome(method, grpc.StatusCode.OK, None, None)


@dataclass(frozen=True)
class OwnedEnclave:
    id: str
    last_sequence: int


@pytest.fixture
def owned(stack: Stack, session: Session, ledger: Ledger) -> Iterator[OwnedEnclave]:
    """An attested enclave of the session's user; it and any the examples made are deleted."""
    user, _ = session.ensure()
    owner = Owner.of(stack, user)
    enclave = owner.create_attested()
    events = list(owner.watch(enclave.id, timeout=CALL_TIMEOUT))
    ledger.reset()
    yield OwnedEnclave(enclave.id, events[-1].sequence)
    owner.delete_all()
    owner.close()


def enclave_ids(real: str) -> st.SearchStrategy[str]:
    """Ids: the owned enclave's (in the spellings ``uuid.UUID`` accepts), others, garbage."""
    return st.one_of(
        st.just(real),
        st.sampled_from(
            [real.upper(), "{" + real + "}", "urn:uuid:" + real, real.replace("-", "")]
        ),
        user_ids(),
    )


def _is(raw: str, real: str) -> bool:
    try:
        return str(uuid.UUID(raw)) == real
    except ValueError:
        return False


@st.composite
def enclave_requests(draw: st.DrawFn, method: str, owned: OwnedEnclave) -> bytes:
    """A request of ``method`` whose every field is drawn, integers at their edges."""
    enclave_id = draw(enclave_ids(owned.id))
    if method == CREATE:
        request_id = draw(texts(80) | st.from_regex(r"[A-Za-z0-9._\-]{1,64}", fullmatch=True))
        message: Any = enclave_pb2.CreateEnclaveRequest(
            request_id=request_id, nonce=draw(binaries())
        )
    elif method == WATCH:
        sequence = draw(integers(*UINT64))
        # Watching a finished enclave from past its last event waits (for its
        # deletion) until the deadline: a deliberate wait, not an answer to check.
        assume(not (_is(enclave_id, owned.id) and owned.last_sequence <= sequence < 2**31))
        message = enclave_pb2.WatchEnclaveRequest(enclave_id=enclave_id, from_sequence=sequence)
    elif method == LIST:
        message = enclave_pb2.ListEnclavesRequest(
            page_size=draw(integers(*INT32)), page_token=draw(texts(200))
        )
    elif method == DELETE:
        assume(not _is(enclave_id, owned.id))  # the owned one stays for later examples
        message = enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave_id)
    elif method == ATTEST:
        message = attestation_pb2.GetAttestationRequest(
            enclave_id=enclave_id, nonce=draw(binaries())
        )
    else:
        message = enclave_pb2.GetEnclaveRequest(enclave_id=enclave_id)
    return bytes(message.SerializeToString())


ENCLAVE_METHODS = (CREATE, WATCH, GET, LIST, DELETE, ATTEST)


@pytest.mark.parametrize("method", ENCLAVE_METHODS)
@FUZZ
@given(data=st.data())
def test_enclave_rpcs_with_arbitrary_fields(
    session: Session, owned: OwnedEnclave, ledger: Ledger, method: str, data: st.DataObject
) -> None:
    user, channel = session.ensure()
    payload = data.draw(enclave_requests(method, owned))
    ledger.check(call_any_raw(channel, method, payload, user.bearer))


@pytest.mark.parametrize("method", ENCLAVE_METHODS)
@FUZZ
@given(payload=raw_requests())
def test_enclave_rpcs_survive_arbitrary_request_bytes(
    session: Session, owned: OwnedEnclave, ledger: Ledger, method: str, payload: bytes
) -> None:
    user, channel = session.ensure()
    ledger.check(call_any_raw(channel, method, payload, user.bearer))


@st.composite
def control_requests(draw: st.DrawFn, method: str) -> bytes:
    """Requests of the backend's enclave API for enclaves that are not there, every field drawn."""
    enclave_id = draw(user_ids())
    message: Any
    if method == PROVISION:
        message = control_pb2.ProvisionRequest(
            enclave_id=enclave_id,
            owner=draw(user_ids()),
            jwks_json=draw(texts(200)),
        )
    elif method == QUOTE:
        message = control_pb2.QuoteRequest(enclave_id=enclave_id, nonce=draw(binaries()))
    else:
        message = control_pb2.DeprovisionRequest(enclave_id=enclave_id)
    return bytes(message.SerializeToString())


@pytest.mark.parametrize("method", [PROVISION, DEPROVISION, QUOTE])
@FUZZ
@given(data=st.data())
def test_backend_enclave_rpcs_with_arbitrary_fields(
    internal: grpc.Channel, ledger: Ledger, method: str, data: st.DataObject
) -> None:
    payload = data.draw(control_requests(method))
    outcome = call_any_raw(internal, method, payload)
    if method != DEPROVISION:  # deprovisioning is idempotent: nothing there is fine
        assert outcome.code is not grpc.StatusCode.OK  # none of these enclaves exists
    ledger.check(outcome)
