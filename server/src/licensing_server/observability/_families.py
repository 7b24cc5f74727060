"""The metric families, grouped by the part of the server that fills them.

Each group registers its families in the registry it is given; a part built
without one (a unit test, a tool) gets a private registry nobody serves, so
nothing here is process-global. Labels take values from small fixed sets only
(method names, status codes, phases, reasons): never an enclave id or a username.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "AttestationMetrics",
    "BcryptMetrics",
    "DatabaseMetrics",
    "LeaderMetrics",
    "ProvisioningMetrics",
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


class RpcMetrics:
    """Every call a gRPC server answers (``observability.RpcObserver`` fills them)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = _registry(registry)
        self.requests = Counter(
            "licensing_rpc_requests",
            "RPCs answered, by service, method and gRPC status code",
            ("service", "method", "code"),
            registry=r,
        )
        self.duration = Histogram(
            "licensing_rpc_duration_seconds",
            "Time from a call's arrival to its status (a stream: its whole life)",
            ("service", "method"),
            buckets=_RPC_BUCKETS,
            registry=r,
        )


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
