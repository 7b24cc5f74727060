"""What a connection to the public frontend may hold, with the limits lowered to test them.

Each limit is observed as the peer sees it: a GOAWAY, a closed socket, a refused
HTTP/2 stream, or RESOURCE_EXHAUSTED with a reason. No assertion is about time:
the tests wait (up to a generous socket timeout) for the server's own answer.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from licensing_server.config import ConfigError, Settings
from tests.support import Stack, error_info, start_stack

#: How long a test waits for the server to act; the limits under test are 1-2 s.
PATIENCE = 60.0
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Connections that do nothing are closed after a second."""
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("brief"),
        None,
        LICENSING_HANDSHAKE_TIMEOUT_SECONDS="1",
        LICENSING_CONNECTION_IDLE_SECONDS="1",
    )


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Few connections, two streams per connection, three calls per address."""
    yield from start_stack(
        "sqlite",
        tmp_path_factory.mktemp("tight"),
        None,
        LICENSING_MAX_CONNECTIONS="6",
        LICENSING_MAX_STREAMS_PER_CONNECTION="2",
        LICENSING_MAX_CALLS_PER_ADDRESS="3",
    )


class Http2:
    """A bare HTTP/2 client over TLS on the enrollment listener."""

    def __init__(self, stack: Stack):
        context = ssl.create_default_context(cadata=stack.ca_pem.decode())
        context.check_hostname = False  # the certificate names the service, not 127.0.0.1
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", stack.enroll_port), timeout=PATIENCE)
        self.sock = context.wrap_socket(raw)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def events(self) -> Iterator[h2.events.Event]:
        """Events as they come; ends when the server closes the connection."""
        while data := self.sock.recv(65536):
            yield from self.conn.receive_data(data)
            self.flush()

    def settings(self) -> dict[int, int]:
        """The server's SETTINGS (acknowledged, so the server applies its own)."""
        for event in self.events():
            if isinstance(event, h2.events.RemoteSettingsChanged):
                return {code: s.new_value for code, s in event.changed_settings.items()}
        raise AssertionError("the server closed the connection before its SETTINGS")

    def call(self, method: str) -> int:
        """Start a gRPC call with an empty request, ignoring the advertised stream limit."""
        self.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
        self.conn.remote_settings.acknowledge()
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", method),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self.conn.send_data(stream, struct.pack(">BI", 0, 0), end_stream=True)
        self.flush()
        return stream

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _idle_goaway(client: Http2) -> h2.events.ConnectionTerminated:
    for event in client.events():
        if isinstance(event, h2.events.ConnectionTerminated):
            return event
    raise AssertionError("the server closed the connection without GOAWAY")


def test_a_connection_without_calls_gets_goaway_after_the_idle_timeout(brief: Stack) -> None:
    client = Http2(brief)
    try:
        client.settings()
        assert _idle_goaway(client).additional_data == b"connection idle"
    finally:
        client.close()


def test_a_call_in_flight_keeps_its_connection(brief: Stack) -> None:
    """A Health/Watch stream outlives the idle timeout: watchers are never idle."""
    watcher = Http2(brief)
    try:
        watcher.settings()
        stream = watcher.call(HEALTH_WATCH)
        for event in watcher.events():
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                break
        # A connection opened later, without calls, is closed as idle first ...
        later = Http2(brief)
        try:
            later.settings()
            _idle_goaway(later)
        finally:
            later.close()
        # ... while the watcher's still answers a ping, with no GOAWAY before it.
        watcher.conn.ping(b"watching")
        watcher.flush()
        for event in watcher.events():
            assert not isinstance(event, h2.events.ConnectionTerminated | h2.events.StreamReset)
            if isinstance(event, h2.events.PingAckReceived):
                assert event.ping_data == b"watching"
                break
        else:
            raise AssertionError("the watcher's connection was closed")
    finally:
        watcher.close()


def test_a_tcp_connection_that_never_starts_tls_is_closed(brief: Stack) -> None:
    with socket.create_connection(("127.0.0.1", brief.enroll_port), timeout=PATIENCE) as sock:
        while sock.recv(4096):
            pass  # the server may say goodbye in plaintext first; then it closes


def test_a_tls_connection_that_never_speaks_http2_is_closed(brief: Stack) -> None:
    context = ssl.create_default_context(cadata=brief.ca_pem.decode())
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", brief.enroll_port), timeout=PATIENCE)
    with context.wrap_socket(raw) as sock, contextlib.suppress(ssl.SSLError, ConnectionError):
        while sock.recv(4096):
            pass


def test_the_server_advertises_and_enforces_its_stream_limit(tight: Stack) -> None:
    client = Http2(tight)
    try:
        settings = client.settings()
        assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 2
        first, second, third = (client.call(HEALTH_WATCH) for _ in range(3))
        answered, refused = set(), None
        for event in client.events():
            if isinstance(event, h2.events.ResponseReceived):
                answered.add(event.stream_id)
            if isinstance(event, h2.events.StreamReset):
                refused = event
            if refused and answered == {first, second}:
                break
        assert refused is not None
        assert refused.stream_id == third
        assert refused.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
    finally:
        client.close()


def test_connections_beyond_the_limit_are_closed_at_once(tight: Stack) -> None:
    held: list[Http2] = []
    try:
        refused = None
        for _ in range(7):
            try:
                client = Http2(tight)
                held.append(client)
                client.settings()
            except (ssl.SSLError, ConnectionError, AssertionError) as exc:
                refused = exc
                break
        assert refused is not None, "seven connections were accepted with a limit of six"
        assert 1 <= len(held) <= 6
    finally:
        for client in held:
            client.close()


def test_calls_beyond_the_per_address_limit_are_resource_exhausted(tight: Stack) -> None:
    channels = [tight.enroll_channel() for _ in range(4)]
    watches = []
    try:
        for channel in channels[:3]:
            # wait_for_ready: the connections the test before held may not all be closed
            # on the server's side yet (the connection limit refuses handshakes meanwhile).
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=PATIENCE, wait_for_ready=True
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watches.append(watch)
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channels[3]).Check(
                health_pb2.HealthCheckRequest(), timeout=PATIENCE, wait_for_ready=True
            )
        error = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(error)
        assert info is not None
        assert (info.reason, info.metadata["limit"]) == ("TOO_MANY_CALLS", "3")
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            channel.close()


def test_the_limits_are_read_from_the_environment_and_checked() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.handshake_timeout_seconds,
        defaults.connection_idle_seconds,
        defaults.max_connections,
        defaults.max_streams_per_connection,
        defaults.max_calls_per_address,
        defaults.malloc_trim_seconds,
    ) == (10, 120, 2000, 100, 256, 30)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "LICENSING_HANDSHAKE_TIMEOUT_SECONDS": "0",
                "LICENSING_MAX_CONNECTIONS": "0",
                "LICENSING_MAX_STREAMS_PER_CONNECTION": "lots",
            }
        )
    assert len(caught.value.problems) == 3
