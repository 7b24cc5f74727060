"""Building a grpc.aio server: limits, keepalive, TLS listeners, health and reflection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from licensing_common.rpc.reflection import enable_reflection

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HEALTH_SERVICE = "grpc.health.v1.Health"

SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Watchers keep streams open for long; let their keepalive pings through.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.so_reuseport", 0),
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection, and all of them together, may hold on a public server.

    Each maps to a grpc core channel argument, enforced in C before any Python runs:
    ``handshake_timeout_seconds`` closes connections that have not finished TLS and
    sent their HTTP/2 settings (idle TCP and idle TLS connections);
    ``idle_seconds`` sends GOAWAY to connections without a call in flight for that
    long (watch streams are calls, so watchers are never idle); ``max_connections``
    closes connections accepted beyond it, on all of the server's listeners together;
    ``max_streams_per_connection`` is advertised as HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
    (grpc clients queue beyond it; a peer that opens more gets RST_STREAM REFUSED_STREAM).
    grpc has no per-address connection cap; calls per address are bounded by the guard.
    """

    handshake_timeout_seconds: int = 10
    idle_seconds: int = 120
    max_connections: int = 2000
    max_streams_per_connection: int = 100

    def options(self) -> list[tuple[str, int]]:
        return [
            *SERVER_OPTIONS,
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout_seconds * 1000),
            ("grpc.max_connection_idle_ms", self.idle_seconds * 1000),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
        ]


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """A server's certificate chain and key (PEM) and the CA its clients must chain to."""

    key_pem: bytes
    chain_pem: bytes
    ca_pem: bytes


def tls_credentials(identity: ServerIdentity) -> grpc.ServerCredentials:
    """Server-authenticated TLS: for callers that have no certificate yet."""
    return grpc.ssl_server_credentials([(identity.key_pem, identity.chain_pem)])


def mtls_credentials(identity: ServerIdentity) -> grpc.ServerCredentials:
    """Mutual TLS: the handshake fails without a client certificate from our CA."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.chain_pem)],
        root_certificates=identity.ca_pem,
        require_client_auth=True,
    )


def add_listener(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials) -> int:
    port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Sequence[str]
) -> HealthServicer:
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *service_names):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection(server, [*service_names, HEALTH_SERVICE])
    return servicer
