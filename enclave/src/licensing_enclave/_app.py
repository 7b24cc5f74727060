"""Composition root: enrolment, then one mTLS listener, until a signal (or the parent's death)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar, runtime_checkable

import grpc
from enclave.v1 import workload_pb2_grpc

from licensing_common.rpc.guard import AccessGuard
from licensing_common.rpc.server import (
    SERVER_OPTIONS,
    ServerIdentity,
    add_health_and_reflection,
    add_listener,
    mtls_credentials,
)
from licensing_common.tokens import AccessTokenVerifier
from licensing_enclave._access import ENCLAVE_POLICY, WORKLOAD_SERVICE, OwnerAuthenticator
from licensing_enclave._bootstrap import Enrolment, StartupError
from licensing_enclave._config import EnclaveConfig
from licensing_enclave._keys import EnclaveKey
from licensing_enclave._secrets import SecretStore
from licensing_enclave._servicer import WorkloadServicer

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Seconds in-flight calls get to finish once the enclave is told to stop.
SHUTDOWN_GRACE = 5.0


async def _unless(stop: asyncio.Event, work: Awaitable[_T]) -> _T | None:
    """``work``'s result, or ``None`` if ``stop`` is set first (then ``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def _server(
    config: EnclaveConfig, servicer: WorkloadServicer
) -> tuple[grpc.aio.Server, OwnerAuthenticator]:
    verifier = AccessTokenVerifier(
        config.token_keys, issuer=config.issuer, audience=config.audience
    )
    authenticator = OwnerAuthenticator(verifier, config.owner)
    guard = AccessGuard(ENCLAVE_POLICY, authenticator)
    server = grpc.aio.server(interceptors=[guard], options=SERVER_OPTIONS)
    workload_pb2_grpc.add_WorkloadServiceServicer_to_server(servicer, server)
    return server, authenticator


@runtime_checkable
class RevocationFeed(Protocol):
    """An enrolment whose channel to the backend also brings session revocations."""

    def revoked_sessions(self) -> AsyncIterator[list[str]]: ...


async def _apply_revocations(feed: RevocationFeed, authenticator: OwnerAuthenticator) -> None:
    async for session_ids in feed.revoked_sessions():
        authenticator.revoke(session_ids)
        _log.info("refusing %d revoked session(s) from now on", len(session_ids))


async def run(config: EnclaveConfig, enrolment: Enrolment) -> int:
    """Serve until SIGTERM/SIGINT or ``enrolment.ended()``; the exit status is 0 in those cases.

    What start-up opens is closed by one exit stack in reverse order, also when a
    step fails half-way (the listener cannot bind, the handshake breaks).
    """
    async with contextlib.AsyncExitStack() as stack:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)

        key = EnclaveKey()
        certificate = await _unless(stop, enrolment.obtain(key, config.enclave_id))
        if certificate is None:
            _log.info("enclave %s stopped during the handshake", config.enclave_id)
            return 0

        servicer = WorkloadServicer(
            enclave_id=config.enclave_id,
            owner=config.owner,
            key=key,
            certificate=certificate,
            secrets=SecretStore(),
        )
        server, authenticator = _server(config, servicer)
        stack.push_async_callback(server.stop, SHUTDOWN_GRACE)
        health = await add_health_and_reflection(server, [WORKLOAD_SERVICE])
        stack.push_async_callback(health.enter_graceful_shutdown)
        identity = ServerIdentity(key.tls_private_key_pem(), certificate.chain_pem, config.ca_pem)
        try:
            port = add_listener(server, config.listen, mtls_credentials(identity))
        except (OSError, RuntimeError) as exc:
            raise StartupError(f"cannot listen on {config.listen}: {exc}") from exc
        await server.start()
        address = f"{config.listen_host}:{port}"
        enrolment.serving(address, certificate)
        _log.info("enclave %s serving on %s", config.enclave_id, address)
        if isinstance(enrolment, RevocationFeed):
            revocations = asyncio.ensure_future(_apply_revocations(enrolment, authenticator))
            stack.callback(revocations.cancel)

        why = await _unless(stop, enrolment.ended())
        if why is None:
            _log.info("signalled: enclave %s shuts down", config.enclave_id)
        else:
            _log.info("%s: enclave %s exits", why, config.enclave_id)
    return 0
