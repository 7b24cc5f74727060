"""Composition root of the backend: builds the CA, the TPM, the runtime and the internal API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from cryptography import x509
from enclave.v1 import enrollment_pb2_grpc
from grpc_health.v1 import health_pb2
from licensing.control.v1 import control_pb2_grpc
from prometheus_client import CollectorRegistry

from licensing_common.errors import Unavailable
from licensing_common.rpc.guard import AccessGuard
from licensing_common.rpc.server import (
    SERVER_OPTIONS,
    ServerIdentity,
    add_health_and_reflection,
    add_listener,
    mtls_credentials,
    tls_credentials,
)
from licensing_server.api.backend import (
    QUOTE_SERVICE,
    SERVICE_NAMES,
    CertificateServicer,
    ProvisioningServicer,
    QuoteServicer,
)
from licensing_server.api.enrollment import (
    ENROLLMENT_POLICY,
    ENROLLMENT_SERVICE,
    EnrollmentServicer,
)
from licensing_server.api.policy import BACKEND_POLICY, BACKEND_QUOTE_POLICY
from licensing_server.attestation import Attestor
from licensing_server.catalog import (
    CERTIFICATE_ISSUERS,
    ENCLAVE_RUNTIMES,
    LEADER_ELECTIONS,
    TPM_TRANSPORTS,
)
from licensing_server.config import Settings
from licensing_server.layout import DataLayout
from licensing_server.observability import (
    AttestationMetrics,
    DatabaseMetrics,
    LeaderMetrics,
    ProvisioningMetrics,
    RpcMetrics,
    RpcObserver,
    TpmMetrics,
    process_registry,
    serve_metrics,
)
from licensing_server.pki import (
    BACKEND_IDENTITY,
    FRONTEND_IDENTITY,
    CertificateAuthority,
    write_private_file,
    write_public_file,
)
from licensing_server.process import run_process, stop_requested
from licensing_server.provisioning import (
    EnclaveProvisioner,
    HealthProbe,
    ProvisioningSettings,
    ReattestationRounds,
    Reconciler,
    measured_certificates,
)
from licensing_server.runtimes import EnrollmentDesk, SessionRevoker
from licensing_server.storage import (
    SESSIONS_REVOKED,
    BackendDirectory,
    Database,
    DatabaseUnavailable,
    EnclaveStore,
    MeasurementStore,
    Notifications,
    ReattestationStore,
    notifications,
    run_migrations,
)
from licensing_server.tasks import TaskSet, spawn
from licensing_server.tpm import TpmDevice, TpmTransport

_log = logging.getLogger(__name__)


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _split_names(names: list[str]) -> tuple[list[str], list[str]]:
    dns, ips = [], []
    for name in dict.fromkeys(names):
        try:
            ipaddress.ip_address(name)
            ips.append(name)
        except ValueError:
            if name and name not in ("0.0.0.0", "::"):  # noqa: S104 - a bind address, not a SAN
                dns.append(name)
    return dns, ips


def _needs_renewal(path_cert: Path, remaining: dt.timedelta) -> bool:
    if not path_cert.exists():
        return True
    cert = x509.load_pem_x509_certificate(path_cert.read_bytes())
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < remaining


def provision_frontend_identity(
    ca: CertificateAuthority, layout: DataLayout, settings: Settings
) -> None:
    """Issue the frontend's server and internal client certificates when missing or ageing."""
    renew_within = CertificateAuthority.SERVER_LIFETIME / 3
    if _needs_renewal(layout.frontend_server_cert, renew_within):
        dns, ips = _split_names(
            [
                *settings.server_names,
                _host(settings.frontend_enroll_addr),
                _host(settings.frontend_api_addr),
            ]
        )
        key, cert = ca.issue_key_pair(
            common_name="licensing-frontend", dns_names=dns, ip_addresses=ips, server=True
        )
        write_private_file(layout.frontend_server_key, key)
        write_public_file(layout.frontend_server_cert, cert.pem.encode())
        _log.info("issued frontend server certificate for %s", ", ".join(dns + ips))
    if _needs_renewal(layout.frontend_client_cert, renew_within):
        key, cert = ca.issue_key_pair(
            common_name="licensing-frontend", uris=[FRONTEND_IDENTITY], client=True
        )
        write_private_file(layout.frontend_client_key, key)
        write_public_file(layout.frontend_client_cert, cert.pem.encode())
        _log.info("issued frontend internal client certificate")


def _manufacturer_ca(transport: TpmTransport) -> bytes:
    """The CA bundle that must have signed the TPM's EK certificate."""
    try:
        return transport.manufacturer_ca_pem()
    except FileNotFoundError as exc:
        raise SystemExit(f"licensing-backend: {exc}") from exc


class _AfterShutdown:
    """Records what the shutdown did to workloads; runs once the runtime has closed."""

    def __init__(self) -> None:
        self.reconciler: Reconciler | None = None

    async def run(self) -> None:
        if self.reconciler is None:
            return
        try:
            await self.reconciler.settle_after_shutdown()
        except Unavailable as exc:  # the reconciler at the next start settles them
            _log.warning("could not record the stopped enclaves: %s", exc.reason)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task  # a failure was logged by spawn


async def serve(settings: Settings) -> None:
    """Build the backend in start-up order, each part closed by the exit stack.

    Whatever ends the backend (SIGTERM, a lost reconciler, a start-up step that
    fails half-way), everything opened so far is closed in reverse order, the TPM
    last (TPM2_Shutdown for swtpm).
    """
    async with contextlib.AsyncExitStack() as stack:
        # From the start: a SIGTERM while starting up still ends in an orderly shutdown.
        stopping = spawn(stop_requested(), name="stop-signal")
        stack.push_async_callback(_cancelled, stopping)
        await asyncio.sleep(0)
        registry = process_registry()
        endpoint = serve_metrics("backend", settings.backend_metrics_addr, registry)
        if endpoint is not None:
            stack.callback(endpoint.close)
        if (
            settings.enclave_runtime == "kubernetes"
            or settings.certificate_issuer == "cert-manager"
        ):
            from licensing_server.kube import KubernetesApiCollector  # only with Kubernetes

            registry.register(KubernetesApiCollector())
        transport = TPM_TRANSPORTS.resolve(settings.tpm_transport)(settings)
        tpm = TpmDevice(
            transport.tcti,
            command_timeout=settings.tpm_command_timeout_seconds,
            shutdown_on_close=transport.shutdown_on_close,
            metrics=TpmMetrics(registry),
        )
        stack.push_async_callback(tpm.close)
        await _serve(settings, stack, tpm, transport, stopping, registry)


async def _serve(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    tpm: TpmDevice,
    transport: TpmTransport,
    stopping: asyncio.Task[None],
    registry: CollectorRegistry,
) -> None:
    layout = DataLayout(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = settings.effective_database_url
    await asyncio.to_thread(run_migrations, url)
    database = Database.connect(url, DatabaseMetrics(registry))
    stack.push_async_callback(database.close)
    after_shutdown = _AfterShutdown()  # before the database closes, after the runtime did
    stack.push_async_callback(after_shutdown.run)
    store = EnclaveStore(database)
    ca = CertificateAuthority.load_or_create(layout.ca_key, layout.ca_certificate)
    provision_frontend_identity(ca, layout, settings)
    ca_pem = ca.ca_certificates_pem[0].encode()
    probe_key, probe_cert = ca.issue_key_pair(
        common_name="licensing-backend", uris=[BACKEND_IDENTITY], client=True
    )
    issuer = CERTIFICATE_ISSUERS.resolve(settings.certificate_issuer)(settings, ca)
    stack.push_async_callback(issuer.close)
    runtime = ENCLAVE_RUNTIMES.resolve(settings.enclave_runtime)(settings, layout)
    stack.push_async_callback(runtime.close)
    await runtime.start()
    # Rows name the backend driving them only where there can be several (PostgreSQL);
    # that backend's TPM measures them, into its own log.
    backend_id = None if settings.uses_sqlite else settings.effective_backend_id
    attestor = Attestor(
        tpm=tpm,
        ca=ca,
        measurements=MeasurementStore(database, backend_id),
        manufacturer_ca_pem=_manufacturer_ca(transport),
        ak_certificate_path=layout.ak_certificate,
        live_certificates=lambda: measured_certificates(store, backend_id),
        simulated_tpm_latency=settings.tpm_simulated_latency_ms / 1000,
        metrics=AttestationMetrics(registry),
    )
    stack.push_async_callback(attestor.close)
    background = TaskSet()
    stack.push_async_callback(background.cancel_all)
    background.spawn(attestor.keep_proving(), name="prove-attestation-key")
    provisioner = EnclaveProvisioner(
        store=store,
        runtime=runtime,
        issuer=issuer,
        probe=HealthProbe(ca_pem=ca_pem, key_pem=probe_key, cert_pem=probe_cert.pem.encode()),
        attestor=attestor,
        settings=ProvisioningSettings(
            token_issuer=settings.token_issuer,
            token_audience=settings.token_audience,
            attestation_key_wait=settings.tpm_command_timeout_seconds,
        ),
        metrics=ProvisioningMetrics(registry),
        backend_id=backend_id,
    )
    stack.push_async_callback(provisioner.shutdown)
    reconciler = Reconciler(
        store=store,
        runtime=runtime,
        provisioner=provisioner,
        interval_seconds=settings.reap_interval_seconds,
        settle_interval_seconds=settings.reconcile_interval_seconds,
        abandoned_after=dt.timedelta(seconds=settings.abandoned_after_seconds),
        backend_id=backend_id,
        heartbeat_seconds=settings.backend_heartbeat_seconds,
        stale_after=dt.timedelta(seconds=settings.backend_stale_after_seconds),
    )
    after_shutdown.reconciler = reconciler
    await reconciler.reconcile_after_start()
    # Continuous attestation (issue 13): on every backend, for the enclaves it runs.
    rounds = ReattestationRounds(
        store=store,
        results=ReattestationStore(database),
        runtime=runtime,
        provisioner=provisioner,
        attestor=attestor,
        interval_seconds=settings.reattest_interval_seconds,
        grace_seconds=settings.reattest_grace_seconds,
        backend_id=backend_id,
    )
    revoke_sessions = _session_revoker(runtime)
    if revoke_sessions is not None:
        # PostgreSQL replicas: every backend hears every frontend's logouts.
        await stack.enter_async_context(
            notifications(database, lambda listener: _hear_revocations(listener, revoke_sessions))
        )

    dns, ips = _split_names(
        [
            "localhost",
            "licensing-backend",
            "127.0.0.1",
            _host(settings.backend_addr),
            _host(settings.backend_quote_addr),
            _host(settings.effective_quote_advertise_addr),
        ]
    )
    key, cert = ca.issue_key_pair(
        common_name="licensing-backend", dns_names=dns, ip_addresses=ips, server=True
    )
    identity = ServerIdentity(key, cert.pem.encode(), ca_pem)

    rpc_metrics = RpcMetrics(registry)
    server = grpc.aio.server(
        interceptors=[RpcObserver(rpc_metrics, AccessGuard(BACKEND_POLICY))],
        options=SERVER_OPTIONS,
    )
    stack.push_async_callback(server.stop, 5)
    control_pb2_grpc.add_CertificateServiceServicer_to_server(
        CertificateServicer(
            ca,
            max_user_lifetime=dt.timedelta(seconds=settings.client_certificate_ttl_seconds),
            ak_certificate_chain_pem=lambda: attestor.ak_certificate_chain_pem,
        ),
        server,
    )
    control_pb2_grpc.add_ProvisioningServiceServicer_to_server(
        ProvisioningServicer(provisioner, revoke_sessions), server
    )
    quotes = QuoteServicer(attestor, store, rounds)
    control_pb2_grpc.add_QuoteServiceServicer_to_server(quotes, server)
    health = await add_health_and_reflection(server, SERVICE_NAMES)
    stack.push_async_callback(health.enter_graceful_shutdown)

    async def tpm_availability(available: bool) -> None:
        # NOT_SERVING while the TPM is in dictionary-attack lockout.
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if available else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await health.set(name, status)

    await attestor.set_availability_listener(tpm_availability)
    try:
        add_listener(server, settings.backend_addr, mtls_credentials(identity))
    except (OSError, RuntimeError) as exc:
        raise SystemExit(
            f"licensing-backend: cannot listen on {settings.backend_addr} "
            "(is another process listening there?)"
        ) from exc
    await server.start()
    _log.info("backend serving internal mTLS API on %s", settings.backend_addr)
    if settings.backend_quote_addr:
        await _serve_quotes(settings, stack, quotes, identity, rpc_metrics)
    if backend_id is not None:
        announcer = _Announcer(
            BackendDirectory(database),
            backend_id,
            settings.effective_quote_advertise_addr,
            lambda: attestor.ak_certificate_chain_pem,
        )
        background.spawn(announcer.run(settings.backend_heartbeat_seconds), name="announce-backend")
        stack.push_async_callback(announcer.withdraw)
    desk = runtime.enrollment_desk
    if desk is not None:
        await _serve_enrollment(settings, stack, ca, desk, rpc_metrics)
    # Of several backends against one database, the leader alone runs the cluster-wide
    # passes (provisioning._reconciler says which); its campaign runs for the backend's life.
    election = LEADER_ELECTIONS.resolve(settings.effective_leader_election)(
        settings, LeaderMetrics(registry)
    )
    electing = background.spawn(election.run(), name="leader-election")
    stack.push_async_callback(_cancelled, electing)
    reconciling = background.spawn(reconciler.run(election), name="reconciler")
    stack.push_async_callback(_cancelled, reconciling)
    reattesting = background.spawn(rounds.run(), name="reattestation-rounds")
    stack.push_async_callback(_cancelled, reattesting)

    await asyncio.wait({stopping, reconciling, electing}, return_when=asyncio.FIRST_COMPLETED)
    _log.info("backend shutting down")
    # Neither the reconciler nor the election ends by itself; if one did (logged), nothing
    # would settle interrupted enclaves, or no backend would ever lead again: stop, and
    # let the supervisor start a fresh backend.
    if reconciling.done():
        raise SystemExit("the reconciler stopped unexpectedly")
    if electing.done():
        raise SystemExit("the leader election stopped unexpectedly")


async def _serve_quotes(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    quotes: QuoteServicer,
    identity: ServerIdentity,
    rpc_metrics: RpcMetrics,
) -> None:
    """QuoteService alone, for the frontends of other pods (the rest stays pod-loopback):
    a frontend that gets ``GetAttestation`` for an enclave this backend's TPM measured."""
    server = grpc.aio.server(
        interceptors=[RpcObserver(rpc_metrics, AccessGuard(BACKEND_QUOTE_POLICY))],
        options=SERVER_OPTIONS,
    )
    stack.push_async_callback(server.stop, 5)
    control_pb2_grpc.add_QuoteServiceServicer_to_server(quotes, server)
    health = await add_health_and_reflection(server, (QUOTE_SERVICE,))
    stack.push_async_callback(health.enter_graceful_shutdown)
    try:
        add_listener(server, settings.backend_quote_addr, mtls_credentials(identity))
    except (OSError, RuntimeError) as exc:
        raise SystemExit(
            f"licensing-backend: cannot listen on {settings.backend_quote_addr} for quotes "
            "(LICENSING_BACKEND_QUOTE_ADDR; is another process listening there?)"
        ) from exc
    await server.start()
    _log.info(
        "backend serving QuoteService to other pods' frontends on %s (advertised as %s)",
        settings.backend_quote_addr,
        settings.effective_quote_advertise_addr or "nothing",
    )


class _Announcer:
    """Keeps this backend's row in ``backends`` saying where its TPM answers and its AK."""

    def __init__(
        self,
        directory: BackendDirectory,
        backend_id: str,
        advertise_addr: str,
        ak_chain: Callable[[], list[str]],
    ):
        self._directory = directory
        self._id = backend_id
        self._address = advertise_addr
        self._ak_chain = ak_chain
        self._announced: tuple[str, list[str]] | None = None
        self._withdrawn = False

    async def run(self, period_seconds: float) -> None:
        """Announce once the AK is proven, and again whenever it is certified anew."""
        while True:
            chain = self._ak_chain()
            if chain and not self._withdrawn and self._announced != (self._address, chain):
                try:
                    await self._directory.announce(
                        self._id, quote_address=self._address, ak_certificate_chain_pem=chain
                    )
                    self._announced = (self._address, chain)
                    _log.info("announced quote address %r and AK", self._address)
                except DatabaseUnavailable as exc:
                    _log.warning("could not announce this backend: %s", exc.reason)
            await asyncio.sleep(0.5 if not self._announced else period_seconds)

    async def withdraw(self) -> None:
        """On shutdown: no frontend dials us from now (they answer at once instead)."""
        self._withdrawn = True
        if self._announced is None:
            return
        try:
            await self._directory.announce(
                self._id, quote_address="", ak_certificate_chain_pem=self._announced[1]
            )
        except DatabaseUnavailable as exc:
            _log.warning("could not withdraw this backend's quote address: %s", exc.reason)


async def _serve_enrollment(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    ca: CertificateAuthority,
    desk: EnrollmentDesk,
    rpc_metrics: RpcMetrics,
) -> None:
    """The TLS listener enclave pods send their CSR to (server-authenticated only:
    they have no client certificate yet; their projected token proves who they are)."""
    k = settings.kubernetes
    dns, ips = _split_names(
        ["localhost", "127.0.0.1", _host(k.enrollment_addr), _host(k.effective_enrollment_url)]
    )
    key, cert = ca.issue_key_pair(
        common_name="licensing-enrollment", dns_names=dns, ip_addresses=ips, server=True
    )
    server = grpc.aio.server(
        interceptors=[RpcObserver(rpc_metrics, AccessGuard(ENROLLMENT_POLICY))],
        options=SERVER_OPTIONS,
    )
    stack.push_async_callback(server.stop, 5)
    enrollment_pb2_grpc.add_EnrollmentServiceServicer_to_server(EnrollmentServicer(desk), server)
    health = await add_health_and_reflection(server, (ENROLLMENT_SERVICE,))
    stack.push_async_callback(health.enter_graceful_shutdown)
    identity = ServerIdentity(key, cert.pem.encode(), ca.ca_certificates_pem[0].encode())
    try:
        add_listener(server, k.enrollment_addr, tls_credentials(identity))
    except (OSError, RuntimeError) as exc:
        raise SystemExit(
            f"licensing-backend: cannot listen on {k.enrollment_addr} for enclave enrolment"
        ) from exc
    await server.start()
    _log.info("backend taking enclave CSRs over TLS on %s", k.enrollment_addr)


def _session_revoker(runtime: object) -> Callable[[list[str]], Awaitable[int]] | None:
    """The runtime's channel to its enclaves for logouts, if it has one (local runtime)."""
    if isinstance(runtime, SessionRevoker):
        return runtime.revoke_sessions
    return None


def _hear_revocations(
    listener: Notifications, revoke: Callable[[list[str]], Awaitable[int]]
) -> None:
    async def push(session_id: str) -> None:
        await revoke([session_id])

    def revoked(session_id: str) -> None:
        spawn(push(session_id), name="push-session-revocation")

    listener.subscribe(SESSIONS_REVOKED, revoked)


def main() -> None:
    run_process("backend", serve)


if __name__ == "__main__":
    main()
