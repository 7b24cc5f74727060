"""The metric families, grouped by the part of the server that fills them.

Each group registers its families in the registry it is given; a part built
without one (a unit test, a tool) gets a private registry nobody serves, so
nothing here is process-global. Labels take values from small fixed sets only
(method names, status codes, phases, reasons): never an enclave id or a username.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "AttestationMetrics",
    "BcryptMetrics",
    "DatabaseMetrics",
    "LeaderMetrics",
    "ProvisioningMetrics",
    "RpcMethodCalls",
    "RpcMetrics",
    "TpmMetrics",
]

#: RPC latency: a cheap call takes about a millisecond, a login a bcrypt (~0.25 s at
#: cost 12), a watch of a provisioning tens of seconds.
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: TPM commands: a quote takes ~5 ms on swtpm and 50-200 ms on hardware; key creation seconds.
_TPM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Provisioning phases: from milliseconds (a database write) to the start timeout (30 s).
_PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
#: Waiting for a bcrypt thread: zero when idle, seconds in a login storm.
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Quote requests sharing one quote (as many as arrived during the last quote).
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    return CollectorRegistry() if registry is None else registry


class RpcMethodCalls:
    """One method's calls: counts by status code and the latency histogram.

    Plain numbers updated without a lock: only the event loop's thread records
    (grpc.aio runs every call there), and a scrape from the metrics thread reads
    copies. prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take three
    locks and eight Python calls per call, measurable on a call as cheap as
    GetCurrentUser; the exposition is the same families, names and labels.
    """

    __slots__ = ("buckets", "codes", "created", "method", "service", "sum")

    def __init__(self, service: str, method: str):
        self.service, self.method = service, method
        self.codes: dict[str, int] = {}
        #: Calls by latency bucket (not cumulative); the last one is ``+Inf``.
        self.buckets = [0] * (len(_RPC_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()

    def finished(self, code: str, seconds: float) -> None:
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        self.buckets[bisect.bisect_left(_RPC_BUCKETS, seconds)] += 1
        self.sum += seconds


class _RpcCollector(Collector):
    """Exposes ``RpcMethodCalls`` as ``licensing_rpc_requests`` and
    ``licensing_rpc_duration_seconds``, as a Counter and a Histogram would."""

    def __init__(self, methods: dict[tuple[str, str], RpcMethodCalls]):
        self._methods = methods

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "licensing_rpc_requests",
            "RPCs answered, by service, method and gRPC status code",
            labels=("service", "method", "code"),
        )
        duration = HistogramMetricFamily(
            "licensing_rpc_duration_seconds",
            "Time from a call's arrival to its status (a stream: its whole life)",
            labels=("service", "method"),
        )
        bounds = [*(repr(float(b)) for b in _RPC_BUCKETS), "+Inf"]  # as Histogram writes `le`
        for calls in list(self._methods.values()):
            labels = [calls.service, calls.method]
            for code, count in dict(calls.codes).items():
                requests.add_metric([*labels, code], count, created=calls.created)
            total_seconds, cumulative, buckets = calls.sum, 0, []
            for bound, count in zip(bounds, list(calls.buckets), strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            duration.add_metric(labels, buckets, total_seconds)
        yield requests
        yield duration


class RpcMetrics:
    """Every call a gRPC server answers (``observability.RpcObserver`` fills them)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self._methods: dict[tuple[str, str], RpcMethodCalls] = {}
        _registry(registry).register(_RpcCollector(self._methods))

    def method(self, service: str, method: str) -> RpcMethodCalls:
        """The calls of one method, made on its first call (labels are never removed)."""
        found = self._methods.get((service, method))
        if found is None:
            found = self._methods[service, method] = RpcMethodCalls(service, method)
        return found


class BcryptMetrics:
    """The frontend's bcrypt pool (``auth.PasswordHasher``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.queue_depth = Gauge(
            "licensing_bcrypt_queue_depth",
            "bcrypt hashes in flight, waiting or running (LICENSING_LOGIN_QUEUE_LIMIT caps it)",
            registry=r,
        )
        self.wait = Histogram(
            "licensing_bcrypt_wait_seconds",
            "Time a bcrypt hash waited for a thread of the pool",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "licensing_bcrypt_rejected",
            "Logins and sign-ups refused because the bcrypt queue was full (LOGIN_QUEUE_FULL)",
            registry=r,
        )


class TpmMetrics:
    """Commands sent to the backend's TPM (``tpm.TpmDevice``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.command = Histogram(
            "licensing_tpm_command_seconds",
            "Time the TPM took to execute a command, successful or not",
            ("command",),
            buckets=_TPM_BUCKETS,
            registry=r,
        )


class AttestationMetrics:
    """The attestor's quote batching (``attestation.Attestor``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.batch_size = Histogram(
            "licensing_quote_batch_size",
            "Quote requests answered by one TPM quote (a Merkle tree over their nonces)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )


class ProvisioningMetrics:
    """The backend's provisioning of enclaves (``provisioning.EnclaveProvisioner``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.phase = Histogram(
            "licensing_provisioning_phase_seconds",
            "Time an enclave took to reach the phase from the one before it",
            ("phase",),
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "licensing_provisioning_outcomes",
            "Provisionings that ended: ATTESTED, FAILED (with the ErrorInfo reason) or DELETED",
            ("outcome", "reason"),
            registry=r,
        )


class DatabaseMetrics:
    """The storage layer (``storage.Database``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.errors = Counter(
            "licensing_database_errors",
            "Database operations that failed because the database was unavailable",
            registry=r,
        )


class LeaderMetrics:
    """Which backend runs the cluster-wide reconciler passes (``leadership``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.leader = Gauge(
            "licensing_backend_leader",
            "1 while this backend is the leader (runs the cluster-wide reconciler passes), else 0",
            registry=r,
        )
