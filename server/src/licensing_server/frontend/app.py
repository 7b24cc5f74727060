"""Composition root of the frontend: storage, auth, tokens, the backend channel, two listeners."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal

import grpc
from licensing.v1 import (
    attestation_pb2_grpc,
    auth_pb2_grpc,
    enclave_pb2_grpc,
    trust_pb2_grpc,
)

from licensing_common.rpc.guard import AccessGuard
from licensing_common.rpc.server import (
    ConnectionLimits,
    ServerIdentity,
    add_health_and_reflection,
    add_listener,
    mtls_credentials,
    tls_credentials,
)
from licensing_server.api.frontend import (
    SERVICE_NAMES,
    AttestationServicer,
    AuthServicer,
    EnclaveServicer,
    TrustServicer,
)
from licensing_server.api.limits import FRONTEND_RATE_LIMITS
from licensing_server.api.policy import FRONTEND_POLICY
from licensing_server.auth import AuthService, PasswordHasher
from licensing_server.config import Settings
from licensing_server.enclaves import EnclaveCatalog
from licensing_server.events import EventTail
from licensing_server.frontend.backend_client import (
    BackendCertificateSigner,
    BackendProvisioningClient,
    BackendQuoteClient,
)
from licensing_server.frontend.quote_routing import (
    REMOTE_CHANNEL_OPTIONS,
    AkCertificates,
    QuoteRouter,
)
from licensing_server.layout import DataLayout
from licensing_server.observability import (
    BcryptMetrics,
    DatabaseMetrics,
    RpcMetrics,
    RpcObserver,
    correlation_propagators,
    process_registry,
    serve_metrics,
)
from licensing_server.process import freed_memory_released, run_process, stop_requested
from licensing_server.storage import (
    BackendDirectory,
    Database,
    EnclaveStore,
    Limits,
    Notifications,
    ReattestationStore,
    UserStore,
    notifications,
    rate_buckets,
    run_migrations,
)
from licensing_server.tasks import TaskSet
from licensing_server.tokens import (
    AccessTokenSigner,
    AccessTokenVerifier,
    KeySetFiles,
    KeySetMissing,
    TokenKeyRing,
)

_log = logging.getLogger(__name__)


async def _wait_for_identity(layout: DataLayout, wait_seconds: float = 60.0) -> None:
    """The backend issues our certificates; on a first start they may not exist yet."""
    paths = [
        layout.ca_certificate,
        layout.frontend_server_cert,
        layout.frontend_server_key,
        layout.frontend_client_cert,
        layout.frontend_client_key,
    ]
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while not all(p.exists() for p in paths):
        if asyncio.get_running_loop().time() > deadline:
            missing = ", ".join(str(p) for p in paths if not p.exists())
            raise SystemExit(f"frontend certificates missing (is the backend running?): {missing}")
        await asyncio.sleep(0.2)


def _token_keys(settings: Settings) -> TokenKeyRing:
    """The key set, read from its files; made on a first start only in our own data dir."""
    files = KeySetFiles(settings.effective_token_keys_dir, create=settings.token_keys_dir is None)
    try:
        return TokenKeyRing(files)
    except KeySetMissing as exc:
        raise SystemExit(f"licensing-frontend: {exc} (LICENSING_TOKEN_KEYS_DIR)") from exc


async def serve(settings: Settings) -> None:
    """Build the frontend in start-up order, each part closed by the exit stack.

    Whatever ends the frontend (SIGTERM, a start-up step that fails half-way),
    everything opened so far is closed in reverse order.
    """
    async with contextlib.AsyncExitStack() as stack:
        await _serve(settings, stack)


async def _serve(settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    layout = DataLayout(settings.data_dir)
    registry = process_registry()
    # First: a frontend stuck waiting for the backend's certificates is scraped too.
    endpoint = serve_metrics("frontend", settings.frontend_metrics_addr, registry)
    if endpoint is not None:
        stack.callback(endpoint.close)
    keys = _token_keys(settings)  # before waiting for the backend: a missing key fails fast
    await _wait_for_identity(layout)
    url = settings.effective_database_url
    await asyncio.to_thread(run_migrations, url)
    database = Database.connect(url, DatabaseMetrics(registry))
    stack.push_async_callback(database.close)
    # Rate limits and the failed-login throttle: one set for all replicas on PostgreSQL.
    buckets = await stack.enter_async_context(rate_buckets(database))

    ca_pem = layout.ca_certificate.read_bytes()
    identity = ServerIdentity(
        layout.frontend_server_key.read_bytes(), layout.frontend_server_cert.read_bytes(), ca_pem
    )
    backend_channel = BackendCertificateSigner.channel(
        settings.backend_addr,
        ca_pem=ca_pem,
        key_pem=layout.frontend_client_key.read_bytes(),
        cert_pem=layout.frontend_client_cert.read_bytes(),
        interceptors=correlation_propagators(),
    )
    stack.push_async_callback(backend_channel.close, None)
    certificates = BackendCertificateSigner(backend_channel)
    provisioning = BackendProvisioningClient(backend_channel)
    # Replicas (PostgreSQL): a quote comes from the backend that measured the enclave, and
    # the trust bundle lists every backend's AK. SQLite: one backend, the pod-mate.
    directory = None if settings.uses_sqlite else BackendDirectory(database)
    stale_after = dt.timedelta(seconds=settings.backend_stale_after_seconds)
    client_key, client_cert = (
        layout.frontend_client_key.read_bytes(),
        layout.frontend_client_cert.read_bytes(),
    )
    quotes = QuoteRouter(
        local=BackendQuoteClient(backend_channel),
        own_backend_id=None if settings.uses_sqlite else settings.effective_backend_id,
        directory=directory,
        stale_after=stale_after,
        channel=lambda address: BackendCertificateSigner.channel(
            address,
            ca_pem=ca_pem,
            key_pem=client_key,
            cert_pem=client_cert,
            interceptors=correlation_propagators(),
            options=REMOTE_CHANNEL_OPTIONS,
        ),
    )
    stack.push_async_callback(quotes.close)
    ak_certificates = AkCertificates(
        own=certificates.ak_certificate_chain, directory=directory, stale_after=stale_after
    )

    verifier = AccessTokenVerifier(
        keys.public_keys(),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    keys.on_change(lambda key_set: verifier.replace_keys(key_set.public_keys()))
    background = TaskSet()
    stack.push_async_callback(background.cancel_all)
    background.spawn(keys.watch(settings.token_keys_reload_seconds), name="token-keys")
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.request_reload)
    stack.callback(asyncio.get_running_loop().remove_signal_handler, signal.SIGHUP)
    signer = AccessTokenSigner(
        keys.signing_key,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        ttl=dt.timedelta(seconds=settings.access_token_ttl_seconds),
    )
    passwords = PasswordHasher(
        cost=settings.bcrypt_cost,
        threads=settings.bcrypt_threads,
        queue_limit=settings.login_queue_limit,
        metrics=BcryptMetrics(registry),
    )
    stack.callback(passwords.close)
    auth = AuthService(
        users=UserStore(database),
        passwords=passwords,
        signer=signer,
        verifier=verifier,
        certificates=certificates,
        refresh_token_ttl=dt.timedelta(seconds=settings.refresh_token_ttl_seconds),
        client_certificate_ttl=dt.timedelta(seconds=settings.client_certificate_ttl_seconds),
        login_failures_per_minute=settings.login_failures_per_minute,
        failures=buckets,
    )
    ca_list = [ca_pem.decode()]
    enclaves = EnclaveStore(database)
    tail = EventTail(enclaves)
    stack.push_async_callback(tail.close)

    def hear(listener: Notifications) -> None:
        auth.listen(listener)  # another replica's logout refuses the session here at once
        tail.listen(listener)  # the backend's phases reach watchers without the poll's wait

    await stack.enter_async_context(notifications(database, hear))
    background.spawn(auth.prune_sessions_forever(), name="session-pruner")

    async def tell_backend(session_id: str) -> None:
        await provisioning.revoke_sessions([session_id])

    # On SQLite this is the only way a logout reaches the enclaves. On PostgreSQL every
    # backend also hears the revocation's notification; the pod-mate is told directly all
    # the same, since a notification sent while its listening connection is down is lost
    # (an enclave refusing a session twice is harmless).
    auth.on_session_revoked = tell_backend
    catalog = EnclaveCatalog(
        store=enclaves,
        backend=provisioning,
        quotes=quotes,
        jwks_json=keys.jwks_json,
        default_limits=Limits(
            max_enclaves=settings.max_enclaves,
            enclave_ttl=dt.timedelta(seconds=settings.enclave_ttl_seconds),
        ),
        tail=tail,
        reattestations=ReattestationStore(database),
    )

    server = grpc.aio.server(
        # One interceptor: the observer runs the guard inside its own per-call coroutine.
        interceptors=[
            RpcObserver(
                RpcMetrics(registry),
                AccessGuard(
                    FRONTEND_POLICY,
                    auth.authenticate,
                    rate_limits=FRONTEND_RATE_LIMITS,
                    rate_limit_percent=settings.rate_limit_percent,
                    max_calls_per_address=settings.max_calls_per_address,
                    buckets=buckets,
                ),
            ),
        ],
        options=ConnectionLimits(
            handshake_timeout_seconds=settings.handshake_timeout_seconds,
            idle_seconds=settings.connection_idle_seconds,
            max_connections=settings.max_connections,
            max_streams_per_connection=settings.max_streams_per_connection,
        ).options(),
    )
    stack.push_async_callback(server.stop, 5)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    trust_pb2_grpc.add_TrustServiceServicer_to_server(
        TrustServicer(
            ca_certificates_pem=lambda: ca_list,
            ak_certificate_chain_pem=ak_certificates,
            jwks_json=keys.jwks_json,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
        ),
        server,
    )
    enclave_pb2_grpc.add_EnclaveServiceServicer_to_server(EnclaveServicer(catalog), server)
    attestation_pb2_grpc.add_AttestationServiceServicer_to_server(
        AttestationServicer(catalog), server
    )
    health = await add_health_and_reflection(server, SERVICE_NAMES)
    stack.push_async_callback(health.enter_graceful_shutdown)
    for address, credentials in (
        (settings.frontend_enroll_addr, tls_credentials(identity)),
        (settings.frontend_api_addr, mtls_credentials(identity)),
    ):
        try:
            add_listener(server, address, credentials)
        except (OSError, RuntimeError) as exc:
            raise SystemExit(
                f"licensing-frontend: cannot listen on {address} "
                "(is another process listening there?)"
            ) from exc
    # Startup objects (modules, descriptors, ORM metadata) live as long as the process;
    # freezing them keeps a full collection from stalling the event loop for tens of ms.
    gc.collect()
    gc.freeze()
    await server.start()
    _log.info(
        "frontend serving: enrollment (TLS) on %s, API (mTLS) on %s",
        settings.frontend_enroll_addr,
        settings.frontend_api_addr,
    )

    async with freed_memory_released(settings.malloc_trim_seconds):
        await stop_requested()
    _log.info("frontend shutting down")


def main() -> None:
    run_process("frontend", serve)


if __name__ == "__main__":
    main()
