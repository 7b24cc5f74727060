"""Settings: parsed once from the environment into a frozen, typed object.

Every process (frontend, backend, supervisor) reads the same ``LICENSING_*``
variables; every problem is reported at once so an operator fixes them in one go.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from licensing_common.logs import LOG_FORMATS
from licensing_server.catalog import (
    CERTIFICATE_ISSUERS,
    ENCLAVE_LAUNCHERS,
    ENCLAVE_RUNTIMES,
    LEADER_ELECTIONS,
    TPM_TRANSPORTS,
)
from licensing_server.layout import DataLayout
from licensing_server.registry import Registry

__all__ = ["ConfigError", "KubernetesSettings", "Settings"]


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def _backend(registry: Registry[object], value: str, default: str, problems: list[str]) -> str:
    """The registered name ``value`` (``default`` when empty); an unknown one is a problem."""
    choice = value.strip().lower() or default
    problem = registry.problem(choice)
    if problem is not None:
        problems.append(problem)
        return default
    return choice


def _launcher(value: str, has_command: bool, problems: list[str]) -> str:
    choice = value.strip().lower() or ("exec" if has_command else "fork-server")
    problem = ENCLAVE_LAUNCHERS.problem(choice)
    if problem is not None:
        problems.append(problem)
        return "exec"
    if choice == "fork-server" and has_command:
        problems.append(
            "LICENSING_ENCLAVE_LAUNCHER=fork-server runs the built-in enclave only; "
            "unset LICENSING_ENCLAVE_COMMAND or use exec"
        )
    return choice


#: Where a pod's ServiceAccount mount says which namespace the pod runs in.
_POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """``LICENSING_KUBERNETES_*``: the ``kubernetes`` runtime and the ``cert-manager`` issuer."""

    #: A kubeconfig file; empty: ``KUBECONFIG``, else the pod's in-cluster credentials.
    kubeconfig: str = ""
    #: Where enclave pods run (the backend's Role is in this namespace only).
    namespace: str = "licensing-enclaves"
    enclave_image: str = "licensing-enclave:0.1.0"
    #: The ServiceAccount enclave pods run as (no API rights; its token proves the pod).
    enclave_service_account: str = "licensing-enclave"
    enclave_port: int = 8443
    enclave_cpu_request: str = "50m"
    enclave_cpu_limit: str = "500m"
    enclave_memory_request: str = "64Mi"
    enclave_memory_limit: str = "256Mi"
    #: The audience of the projected token a pod enrols with; TokenReview checks it.
    token_audience: str = "licensing-backend"  # noqa: S105 - an audience, not a secret
    #: Where the backend takes enclave CSRs (TLS, token-authenticated), and the
    #: host:port pods dial for it (empty: the same).
    enrollment_addr: str = "127.0.0.1:8445"
    enrollment_url: str = ""
    #: When set, each enclave also gets an Ingress ``<id>.<domain>`` with TLS
    #: passthrough, and clients are sent there (port 443).
    ingress_domain: str = ""
    ingress_class: str = ""
    #: The cert-manager issuer enclave CertificateRequests name.
    cert_manager_issuer: str = "licensing-ca"
    cert_manager_issuer_kind: str = "ClusterIssuer"
    #: Threads for blocking Kubernetes API calls.
    api_workers: int = 8
    #: The ``kubernetes-lease`` leader election's Lease: in the backend's own namespace
    #: (empty: the pod's, from its ServiceAccount mount; else ``licensing``).
    lease_namespace: str = ""
    lease_name: str = "licensing-backend-leader"

    @property
    def effective_enrollment_url(self) -> str:
        return self.enrollment_url or self.enrollment_addr

    @property
    def effective_lease_namespace(self) -> str:
        if self.lease_namespace:
            return self.lease_namespace
        try:
            return _POD_NAMESPACE_FILE.read_text().strip() or "licensing"
        except OSError:
            return "licensing"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".licensing")
    database_url: str = ""
    frontend_enroll_addr: str = "127.0.0.1:8443"
    frontend_api_addr: str = "127.0.0.1:9443"
    backend_addr: str = "127.0.0.1:8444"
    # Extra DNS names / IPs for the frontend's server certificate.
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    bcrypt_cost: int = 12
    bcrypt_threads: int = field(default_factory=_default_threads)
    login_queue_limit: int = 64
    # Failed logins allowed per username per minute (and at once); 0: no limit. Like the
    # rate limits, counted across all frontends on PostgreSQL, per frontend on SQLite.
    login_failures_per_minute: int = 10
    # Scales the per-method rate limits of api/limits.py; 0 turns them off.
    rate_limit_percent: int = 100
    # What connections to the public frontend may hold (rpc.server.ConnectionLimits);
    # calls in flight per client address are counted by the guard.
    handshake_timeout_seconds: int = 10
    connection_idle_seconds: int = 120
    max_connections: int = 2000
    max_streams_per_connection: int = 100
    max_calls_per_address: int = 256
    # How often the frontend returns freed heap memory to the OS (glibc); 0: never.
    malloc_trim_seconds: int = 30
    access_token_ttl_seconds: int = 600
    # The token signing key set's directory. Unset: the frontend's data directory, where a
    # first start creates the set. Set (a mounted Secret): only read, it must hold a key.
    token_keys_dir: Path | None = None
    # How often the frontend looks whether the key set's file changed (SIGHUP: at once).
    token_keys_reload_seconds: int = 10
    refresh_token_ttl_seconds: int = 7 * 24 * 3600
    client_certificate_ttl_seconds: int = 24 * 3600
    token_issuer: str = "licensing"  # noqa: S105 - a name, not a secret
    token_audience: str = "licensing"  # noqa: S105 - a name, not a secret
    log_level: str = "INFO"
    # "text" (one line per event) or "json" (one object per line, for log collectors).
    log_format: str = "text"
    # Where each process serves Prometheus metrics over plain HTTP (GET /metrics);
    # "" (LICENSING_*_METRICS_ADDR=off): not served. Loopback by default.
    frontend_metrics_addr: str = "127.0.0.1:9464"
    backend_metrics_addr: str = "127.0.0.1:9465"
    # Licences: defaults for users without an entitlement row (see licensing-admin).
    max_enclaves: int = 3
    enclave_ttl_seconds: int = 3600
    # Where enclaves run (catalog.ENCLAVE_RUNTIMES) and who signs their certificates
    # (catalog.CERTIFICATE_ISSUERS).
    enclave_runtime: str = "local"
    certificate_issuer: str = "builtin"
    # The local runtime: the enclave program and, optionally, the ports it may use.
    enclave_command: tuple[str, ...] = ()
    # "fork-server" (pre-imported, fast) or "exec" (a fresh process; the only way to
    # run a custom enclave_command). Empty: fork-server unless enclave_command is set.
    enclave_launcher: str = ""
    enclave_ports: tuple[int, int] | None = None
    reap_interval_seconds: int = 5
    # How often the backend settles provisioning interrupted while it runs (its database
    # writes failed): workload stopped, FAILED recorded, licence freed, watchers told.
    reconcile_interval_seconds: int = 5
    # An ACCEPTED enclave not taken up for provisioning by then releases its licence.
    abandoned_after_seconds: int = 60
    # The TPM: a TCTI string ("device:/dev/tpmrm0" for hardware). Empty means the
    # embedded default: a software TPM (swtpm) that licensing-server runs on swtpm_port.
    tpm_tcti: str = ""
    tpm_manufacturer_ca_file: str = ""
    swtpm_port: int = 2321
    tpm_command_timeout_seconds: int = 10
    # Benchmarks only: delay added before each quote to mimic a hardware TPM.
    tpm_simulated_latency_ms: int = 0
    # --- Continuous attestation (issue 13) ---
    # Every this many seconds the backend re-attests each ATTESTED enclave it runs, with
    # one TPM quote per round over all of them (attestation.ReattestationRounds).
    reattest_interval_seconds: int = 30
    # How long a TPM may fail to quote before its enclaves are revoked
    # (ATTESTATION_TPM_UNREACHABLE); a TPM that answers with a quote that does not
    # cover an enclave revokes it at once, whatever this says.
    reattest_grace_seconds: int = 90
    # Which backend runs the cluster-wide reconciler passes (catalog.LEADER_ELECTIONS);
    # empty: "sole" with SQLite (one backend), "advisory-lock" with PostgreSQL.
    leader_election: str = ""
    # kubernetes-lease: the Lease's duration (renewed every third of it); advisory-lock:
    # how often a backend that is not the leader asks for the lock again.
    leader_lease_seconds: int = 15
    leader_retry_seconds: int = 2
    # Which backend drives an enclave (PostgreSQL replicas): stable across a restart of the
    # same backend. Empty: POD_NAME, else the host name and a hash of the data directory.
    backend_id: str = ""
    # Each backend's heartbeat period; the leader settles the in-flight enclaves of a
    # backend whose heartbeat is older than backend_stale_after_seconds.
    backend_heartbeat_seconds: int = 5
    backend_stale_after_seconds: int = 30
    # Attestation with replicas: the backend's second mTLS listener, QuoteService only, for
    # the frontends of other pods ("": none, the single-backend default), and the host:port
    # it records in ``backends`` for them to dial (empty: the listener's, unless a wildcard).
    backend_quote_addr: str = ""
    backend_quote_advertise_addr: str = ""
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)

    @property
    def effective_backend_id(self) -> str:
        """The same backend after a restart has the same id (unlike its election identity)."""
        if self.backend_id:
            return self.backend_id
        pod = os.environ.get("POD_NAME", "").strip()
        if pod:
            return pod
        where = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return f"{socket.gethostname()}-{where}"

    @property
    def effective_quote_advertise_addr(self) -> str:
        """Where other pods' frontends reach this backend's QuoteService ("": they cannot)."""
        if self.backend_quote_advertise_addr or not self.backend_quote_addr:
            return self.backend_quote_advertise_addr
        host = self.backend_quote_addr.rpartition(":")[0].strip("[]")
        return "" if host in ("0.0.0.0", "::", "") else self.backend_quote_addr  # noqa: S104

    @property
    def effective_token_keys_dir(self) -> Path:
        return self.token_keys_dir or DataLayout(self.data_dir).token_keys_dir

    @property
    def effective_tpm_tcti(self) -> str:
        return self.tpm_tcti or f"swtpm:host=127.0.0.1,port={self.swtpm_port}"

    @property
    def tpm_transport(self) -> str:
        """The TCTI's name (``swtpm``, ``device``): which ``catalog.TPM_TRANSPORTS`` entry."""
        return self.effective_tpm_tcti.partition(":")[0].strip().lower()

    @property
    def swtpm_state_dir(self) -> Path:
        return self.data_dir / "tpm"

    @property
    def effective_manufacturer_ca_file(self) -> Path:
        if self.tpm_manufacturer_ca_file:
            return Path(self.tpm_manufacturer_ca_file)
        return self.swtpm_state_dir / "manufacturer-ca.pem"

    @property
    def uses_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_leader_election(self) -> str:
        """The one place the election is chosen: SQLite has one backend, always the leader."""
        if self.uses_sqlite:
            return "sole"
        return self.leader_election or "advisory-lock"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'licensing.db').resolve()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(f"LICENSING_{name}", default).strip() or default

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(f"LICENSING_{name}")
            if raw is None or not raw.strip():
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"LICENSING_{name}={raw!r} is not an integer")
                return default
            if not low <= value <= high:
                problems.append(f"LICENSING_{name}={value} is outside {low}..{high}")
                return default
            return value

        def address(name: str, default: str) -> str:
            value = text(name, default)
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"LICENSING_{name}={value!r} is not host:port")
                return default
            return value

        def address_or_none(name: str) -> str:
            """host:port, or "" when unset, blank or "off"."""
            if env.get(f"LICENSING_{name}", "").strip().lower() in ("", "off"):
                return ""
            return address(name, "")

        def optional_address(name: str, default: str) -> str:
            """host:port, or "" for "off" (blank, like every variable: ``default``)."""
            if env.get(f"LICENSING_{name}", "").strip().lower() == "off":
                return ""
            return address(name, default)

        names = tuple(
            n.strip() for n in text("SERVER_NAMES", ",".join(defaults.server_names)).split(",")
        )
        settings = cls(
            data_dir=Path(text("DATA_DIR", str(defaults.data_dir))),
            database_url=_normalise_database_url(text("DATABASE_URL", ""), problems),
            frontend_enroll_addr=address("FRONTEND_ENROLL_ADDR", defaults.frontend_enroll_addr),
            frontend_api_addr=address("FRONTEND_API_ADDR", defaults.frontend_api_addr),
            backend_addr=address("BACKEND_ADDR", defaults.backend_addr),
            server_names=tuple(n for n in names if n),
            bcrypt_cost=integer("BCRYPT_COST", defaults.bcrypt_cost, 4, 16),
            bcrypt_threads=integer("BCRYPT_THREADS", defaults.bcrypt_threads, 1, 64),
            login_queue_limit=integer("LOGIN_QUEUE_LIMIT", defaults.login_queue_limit, 1, 10_000),
            login_failures_per_minute=integer(
                "LOGIN_FAILURES_PER_MINUTE", defaults.login_failures_per_minute, 0, 1_000_000
            ),
            rate_limit_percent=integer(
                "RATE_LIMIT_PERCENT", defaults.rate_limit_percent, 0, 1_000_000
            ),
            handshake_timeout_seconds=integer(
                "HANDSHAKE_TIMEOUT_SECONDS", defaults.handshake_timeout_seconds, 1, 300
            ),
            connection_idle_seconds=integer(
                "CONNECTION_IDLE_SECONDS", defaults.connection_idle_seconds, 1, 86400
            ),
            max_connections=integer("MAX_CONNECTIONS", defaults.max_connections, 1, 1_000_000),
            max_streams_per_connection=integer(
                "MAX_STREAMS_PER_CONNECTION", defaults.max_streams_per_connection, 1, 10_000
            ),
            max_calls_per_address=integer(
                "MAX_CALLS_PER_ADDRESS", defaults.max_calls_per_address, 0, 1_000_000
            ),
            malloc_trim_seconds=integer(
                "MALLOC_TRIM_SECONDS", defaults.malloc_trim_seconds, 0, 86400
            ),
            access_token_ttl_seconds=integer(
                "ACCESS_TOKEN_TTL_SECONDS", defaults.access_token_ttl_seconds, 30, 3600
            ),
            token_keys_dir=Path(keys_dir) if (keys_dir := text("TOKEN_KEYS_DIR", "")) else None,
            token_keys_reload_seconds=integer(
                "TOKEN_KEYS_RELOAD_SECONDS", defaults.token_keys_reload_seconds, 1, 3600
            ),
            refresh_token_ttl_seconds=integer(
                "REFRESH_TOKEN_TTL_SECONDS", defaults.refresh_token_ttl_seconds, 60, 90 * 86400
            ),
            client_certificate_ttl_seconds=integer(
                "CLIENT_CERTIFICATE_TTL_SECONDS",
                defaults.client_certificate_ttl_seconds,
                60,
                7 * 86400,
            ),
            token_issuer=text("TOKEN_ISSUER", defaults.token_issuer),
            token_audience=text("TOKEN_AUDIENCE", defaults.token_audience),
            log_level=text("LOG_LEVEL", defaults.log_level).upper(),
            log_format=text("LOG_FORMAT", defaults.log_format).lower(),
            frontend_metrics_addr=optional_address(
                "FRONTEND_METRICS_ADDR", defaults.frontend_metrics_addr
            ),
            backend_metrics_addr=optional_address(
                "BACKEND_METRICS_ADDR", defaults.backend_metrics_addr
            ),
            max_enclaves=integer("MAX_ENCLAVES", defaults.max_enclaves, 0, 10_000),
            enclave_ttl_seconds=integer(
                "ENCLAVE_TTL_SECONDS", defaults.enclave_ttl_seconds, 10, 365 * 86400
            ),
            enclave_runtime=_backend(
                ENCLAVE_RUNTIMES,
                text("ENCLAVE_RUNTIME", text("RUNTIME", "")),
                defaults.enclave_runtime,
                problems,
            ),
            certificate_issuer=_backend(
                CERTIFICATE_ISSUERS,
                text("CERTIFICATE_ISSUER", ""),
                defaults.certificate_issuer,
                problems,
            ),
            enclave_command=tuple(shlex.split(text("ENCLAVE_COMMAND", ""))),
            enclave_ports=_port_range(text("ENCLAVE_PORTS", ""), problems),
            enclave_launcher=_launcher(
                text("ENCLAVE_LAUNCHER", ""), bool(text("ENCLAVE_COMMAND", "").strip()), problems
            ),
            reap_interval_seconds=integer(
                "REAP_INTERVAL_SECONDS", defaults.reap_interval_seconds, 1, 3600
            ),
            reconcile_interval_seconds=integer(
                "RECONCILE_INTERVAL_SECONDS", defaults.reconcile_interval_seconds, 1, 3600
            ),
            abandoned_after_seconds=integer(
                "ABANDONED_AFTER_SECONDS", defaults.abandoned_after_seconds, 1, 86400
            ),
            tpm_tcti=text("TPM_TCTI", ""),
            tpm_manufacturer_ca_file=text("TPM_MANUFACTURER_CA_FILE", ""),
            swtpm_port=integer("SWTPM_PORT", defaults.swtpm_port, 1, 65534),
            tpm_command_timeout_seconds=integer(
                "TPM_COMMAND_TIMEOUT_SECONDS", defaults.tpm_command_timeout_seconds, 1, 600
            ),
            tpm_simulated_latency_ms=integer(
                "TPM_SIMULATED_LATENCY_MS", defaults.tpm_simulated_latency_ms, 0, 10_000
            ),
            reattest_interval_seconds=integer(
                "REATTEST_INTERVAL_SECONDS", defaults.reattest_interval_seconds, 1, 3600
            ),
            reattest_grace_seconds=integer(
                "REATTEST_GRACE_SECONDS", defaults.reattest_grace_seconds, 0, 86400
            ),
            leader_election=_leader_election(text("LEADER_ELECTION", ""), problems),
            leader_lease_seconds=integer(
                "LEADER_LEASE_SECONDS", defaults.leader_lease_seconds, 2, 300
            ),
            leader_retry_seconds=integer(
                "LEADER_RETRY_SECONDS", defaults.leader_retry_seconds, 1, 60
            ),
            backend_id=text("BACKEND_ID", ""),
            backend_heartbeat_seconds=integer(
                "BACKEND_HEARTBEAT_SECONDS", defaults.backend_heartbeat_seconds, 1, 600
            ),
            backend_stale_after_seconds=integer(
                "BACKEND_STALE_AFTER_SECONDS", defaults.backend_stale_after_seconds, 2, 3600
            ),
            backend_quote_addr=address_or_none("BACKEND_QUOTE_ADDR"),
            backend_quote_advertise_addr=address_or_none("BACKEND_QUOTE_ADVERTISE_ADDR"),
            kubernetes=_kubernetes(env, text, integer, address, problems),
        )
        if settings.uses_sqlite and settings.leader_election not in ("", "sole"):
            problems.append(
                f"LICENSING_LEADER_ELECTION={settings.leader_election} needs PostgreSQL: "
                "with embedded SQLite there is one backend, always the leader"
            )
        if (transport := TPM_TRANSPORTS.problem(settings.tpm_transport)) is not None:
            problems.append(f"{transport} (from {settings.effective_tpm_tcti!r})")
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"LICENSING_LOG_LEVEL={settings.log_level!r} is not a log level")
        if settings.log_format not in LOG_FORMATS:
            problems.append(
                f"LICENSING_LOG_FORMAT={settings.log_format!r} is not {' or '.join(LOG_FORMATS)}"
            )
        if problems:
            raise ConfigError(problems)
        return settings


def _kubernetes(
    env: Mapping[str, str],
    text: Callable[[str, str], str],
    integer: Callable[[str, int, int, int], int],
    address: Callable[[str, str], str],
    problems: list[str],
) -> KubernetesSettings:
    d = KubernetesSettings()
    kind = text("KUBERNETES_CERT_MANAGER_ISSUER_KIND", d.cert_manager_issuer_kind)
    if kind not in ("ClusterIssuer", "Issuer"):
        problems.append(
            f"LICENSING_KUBERNETES_CERT_MANAGER_ISSUER_KIND={kind!r} is not ClusterIssuer or Issuer"
        )
        kind = d.cert_manager_issuer_kind
    url = text("KUBERNETES_ENROLLMENT_URL", "")
    if url and (":" not in url or not url.rpartition(":")[2].isdigit()):
        problems.append(f"LICENSING_KUBERNETES_ENROLLMENT_URL={url!r} is not host:port")
        url = ""
    return KubernetesSettings(
        kubeconfig=text("KUBERNETES_KUBECONFIG", env.get("KUBECONFIG", "").strip()),
        namespace=text("KUBERNETES_NAMESPACE", d.namespace),
        enclave_image=text("KUBERNETES_ENCLAVE_IMAGE", d.enclave_image),
        enclave_service_account=text(
            "KUBERNETES_ENCLAVE_SERVICE_ACCOUNT", d.enclave_service_account
        ),
        enclave_port=integer("KUBERNETES_ENCLAVE_PORT", d.enclave_port, 1, 65535),
        enclave_cpu_request=text("KUBERNETES_ENCLAVE_CPU_REQUEST", d.enclave_cpu_request),
        enclave_cpu_limit=text("KUBERNETES_ENCLAVE_CPU_LIMIT", d.enclave_cpu_limit),
        enclave_memory_request=text("KUBERNETES_ENCLAVE_MEMORY_REQUEST", d.enclave_memory_request),
        enclave_memory_limit=text("KUBERNETES_ENCLAVE_MEMORY_LIMIT", d.enclave_memory_limit),
        token_audience=text("KUBERNETES_TOKEN_AUDIENCE", d.token_audience),
        enrollment_addr=address("KUBERNETES_ENROLLMENT_ADDR", d.enrollment_addr),
        enrollment_url=url,
        ingress_domain=text("KUBERNETES_INGRESS_DOMAIN", d.ingress_domain),
        ingress_class=text("KUBERNETES_INGRESS_CLASS", d.ingress_class),
        cert_manager_issuer=text("KUBERNETES_CERT_MANAGER_ISSUER", d.cert_manager_issuer),
        cert_manager_issuer_kind=kind,
        api_workers=integer("KUBERNETES_API_WORKERS", d.api_workers, 1, 64),
        lease_namespace=text("KUBERNETES_LEASE_NAMESPACE", d.lease_namespace),
        lease_name=text("KUBERNETES_LEASE_NAME", d.lease_name),
    )


def _leader_election(value: str, problems: list[str]) -> str:
    """A registered election, or "" (chosen by the database: ``effective_leader_election``)."""
    choice = value.strip().lower()
    if choice and (problem := LEADER_ELECTIONS.problem(choice)) is not None:
        problems.append(problem)
        return ""
    return choice


def _normalise_database_url(url: str, problems: list[str]) -> str:
    """Accept the URLs operators paste and pin the async drivers we ship."""
    if not url:
        return ""
    for prefix, replacement in (
        ("postgresql+psycopg://", "postgresql+psycopg://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    problems.append("LICENSING_DATABASE_URL must be a postgresql:// or sqlite:// URL")
    return ""


def _port_range(raw: str, problems: list[str]) -> tuple[int, int] | None:
    if not raw:
        return None
    low, sep, high = raw.partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        problems.append(f"LICENSING_ENCLAVE_PORTS={raw!r} is not LOW-HIGH")
        return None
    first, last = int(low), int(high)
    if not 0 < first <= last < 65536:
        problems.append(f"LICENSING_ENCLAVE_PORTS={raw!r} is not a valid port range")
        return None
    return first, last
