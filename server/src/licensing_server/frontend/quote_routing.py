"""Attestation with replicas: each enclave's quote comes from the backend that measured it.

Every backend has its own TPM and AK, and PCR 23 of a TPM holds only the enclaves its
backend provisioned (``enclaves.backend_id``). The pod-mate backend is reached over the
pod-loopback control channel; another pod's backend over mTLS at the address it
announced in ``backends`` (its QuoteService-only listener), one cached channel per
address. A measuring backend that is gone, stale or unreachable is an ``UNAVAILABLE`` /
``MEASURING_BACKEND_UNAVAILABLE`` answer, at once or within the call's deadline.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import grpc

from licensing_common.errors import Unavailable
from licensing_server.frontend.backend_client import BackendQuoteClient
from licensing_server.storage import BackendDirectory, EnclaveRecord

_log = logging.getLogger(__name__)

#: Reconnect quickly once a restarted backend is back (grpc's default backoff reaches 120 s).
REMOTE_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
#: Channels kept to other backends; the oldest is closed past this (pods come and go).
MAX_REMOTE_CHANNELS = 32
#: A remote quote's deadline: one TPM quote, plus the queue of a busy TPM.
REMOTE_QUOTE_TIMEOUT = 10.0
#: How long the trust bundle's list of AKs is reused before the database is read again.
AK_LIST_SECONDS = 5.0

ChannelFactory = Callable[[str], grpc.aio.Channel]


def _unavailable(why: str) -> Unavailable:
    return Unavailable(
        "MEASURING_BACKEND_UNAVAILABLE",
        f"the backend whose TPM measured this enclave {why}; retry later",
    )


class QuoteRouter:
    """``QuoteBackend`` for ``EnclaveCatalog``: the measuring backend answers."""

    def __init__(
        self,
        *,
        local: BackendQuoteClient,
        own_backend_id: str | None,
        directory: BackendDirectory | None,
        stale_after: dt.timedelta,
        channel: ChannelFactory,
    ):
        """``directory`` None (SQLite): one backend, the pod-mate, measured everything."""
        self._local = local
        self._own = own_backend_id
        self._directory = directory
        self._stale_after = stale_after
        self._channel = channel
        self._remote: OrderedDict[str, tuple[grpc.aio.Channel, BackendQuoteClient]] = OrderedDict()

    async def quote(self, record: EnclaveRecord, nonce: bytes) -> bytes:
        client, where = await self._measuring(record)
        try:
            return await client.quote(record.id, nonce)
        except Unavailable as exc:
            raise self._not_answering(exc, record, where) from exc

    async def request_reattestation(self, record: EnclaveRecord, nonce: bytes) -> None:
        """The nonce goes to the backend whose rounds re-attest the enclave: its measurer."""
        client, where = await self._measuring(record)
        try:
            await client.request_reattestation(record.id, nonce)
        except Unavailable as exc:
            raise self._not_answering(exc, record, where) from exc

    async def _measuring(self, record: EnclaveRecord) -> tuple[BackendQuoteClient, str]:
        """The client of the backend that measured the enclave, and its address ("" local)."""
        measured_by = record.backend_id
        if self._directory is None or measured_by is None or measured_by == self._own:
            return self._local, ""
        backend = await self._directory.find(measured_by, self._stale_after)
        if backend is None or not backend.live:
            _log.warning("enclave %s: its backend %s is not alive", record.id, measured_by)
            raise _unavailable("is not running")
        if not backend.quote_address:
            _log.warning(
                "enclave %s: backend %s announces no quote address "
                "(stopping, or LICENSING_BACKEND_QUOTE_ADDR unset)",
                record.id,
                measured_by,
            )
            raise _unavailable("cannot be reached from here")
        return await self._client(backend.quote_address), backend.quote_address

    @staticmethod
    def _not_answering(exc: Unavailable, record: EnclaveRecord, where: str) -> Unavailable:
        """A remote backend that did not answer is MEASURING_BACKEND_UNAVAILABLE; anything
        it answered (its TPM's verdict: TPM_LOCKED_OUT, ...) and the pod-mate's errors stay."""
        if not where or exc.reason != "BACKEND_UNAVAILABLE":
            return exc
        _log.warning(
            "enclave %s: backend %s at %s did not answer", record.id, record.backend_id, where
        )
        return _unavailable("did not answer")

    async def _client(self, address: str) -> BackendQuoteClient:
        kept = self._remote.get(address)
        if kept is not None:
            self._remote.move_to_end(address)
            return kept[1]
        channel = self._channel(address)
        client = BackendQuoteClient(channel, timeout=REMOTE_QUOTE_TIMEOUT)
        self._remote[address] = (channel, client)
        while len(self._remote) > MAX_REMOTE_CHANNELS:
            # The least recently used: a pod long gone, most likely.
            _, (oldest, _) = self._remote.popitem(last=False)
            await oldest.close(None)
        return client

    async def close(self) -> None:
        for channel, _ in self._remote.values():
            await channel.close(None)
        self._remote.clear()


class AkCertificates:
    """The trust bundle's AK certificates: every live backend's, each once, CA chain last.

    ``ak_certificate_chain_pem`` stays one flat list: each AK's leaf certificate, then the
    licensing CA chain they all chain to (one CA for every backend), without repeats.
    """

    def __init__(
        self,
        *,
        own: Callable[[], Awaitable[list[str]]],
        directory: BackendDirectory | None,
        stale_after: dt.timedelta,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._own = own
        self._directory = directory
        self._stale_after = stale_after
        self._clock = clock
        self._cached: list[tuple[str, ...]] = []
        self._cached_at = float("-inf")

    async def __call__(self) -> list[str]:
        own = await self._own()
        if self._directory is None:
            return own
        if self._clock() - self._cached_at >= AK_LIST_SECONDS or not self._cached:
            try:
                self._cached = await self._directory.ak_certificate_chains(self._stale_after)
                self._cached_at = self._clock()
            except Unavailable:
                pass  # the database is down: the AKs we listed last
        return merge_chains([own, *self._cached])


def merge_chains(chains: Sequence[Sequence[str]]) -> list[str]:
    """Leaf-first chains into one list: every leaf (AK) first, then the issuers, no repeats."""
    ordered = [chain[0] for chain in chains if chain]
    ordered += [pem for chain in chains for pem in chain[1:]]
    seen: set[str] = set()
    merged = []
    for pem in ordered:
        if pem.strip() not in seen:
            seen.add(pem.strip())
            merged.append(pem)
    return merged
