"""What operators watch: Prometheus metrics and the correlation id of every call.

Each process builds one ``CollectorRegistry`` in its composition root, hands the
metric groups (``RpcMetrics``, ``BcryptMetrics``, ...) to the parts that fill them,
and serves the registry with ``MetricsEndpoint`` on its own port. The README's
"Metrics and logs" section lists every metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from licensing_server.observability._families import (
    AttestationMetrics,
    BcryptMetrics,
    DatabaseMetrics,
    LeaderMetrics,
    ProvisioningMetrics,
    RpcMetrics,
    TpmMetrics,
)
from licensing_server.observability._http import MetricsEndpoint
from licensing_server.observability._propagation import correlation_propagators
from licensing_server.observability._rpc import (
    CORRELATION_HEADERS,
    RpcObserver,
    correlation_id_from,
)

__all__ = [
    "CORRELATION_HEADERS",
    "AttestationMetrics",
    "BcryptMetrics",
    "DatabaseMetrics",
    "LeaderMetrics",
    "MetricsEndpoint",
    "ProvisioningMetrics",
    "RpcMetrics",
    "RpcObserver",
    "TpmMetrics",
    "correlation_id_from",
    "correlation_propagators",
    "process_registry",
    "serve_metrics",
]


def process_registry() -> CollectorRegistry:
    """A process's registry, with the standard ``process_*`` figures (CPU, memory, fds)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


def serve_metrics(
    process: str, address: str, registry: CollectorRegistry
) -> MetricsEndpoint | None:
    """Serve ``registry`` on ``address``; None when it is "" (``LICENSING_*_METRICS_ADDR=off``).

    A port that cannot be bound stops the start-up, as for the gRPC listeners.
    """
    if not address:
        return None
    try:
        return MetricsEndpoint.start(address, registry)
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"licensing-{process}: cannot serve metrics on {address} "
            "(is another process listening there?)"
        ) from exc
