"""The frontend's enclave domain. The backend provisions; this reserves, relays and checks.

Licences are reserved here (the ACCEPTED row) so that a user's limit holds
across concurrent creates; everything after ACCEPTED is written by the backend.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import re
import struct
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from licensing_common.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from licensing_common.phases import TERMINAL
from licensing_server.enclaves.nonces import check_nonce
from licensing_server.events import EventTail
from licensing_server.storage import (
    MAX_SEQUENCE,
    REATTESTED_PREFIX,
    DatabaseUnavailable,
    EnclaveRecord,
    EnclaveStore,
    EventRecord,
    Limits,
    Phase,
    ReattestationStore,
)

_log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 100, 20
MAX_CACHED_ROWS = 65_536


class ProvisioningBackend(Protocol):
    """The backend's ProvisioningService as the frontend needs it.

    ``provision`` yields the enclave's events from the first; it raises
    ``Unavailable`` when the backend cannot be reached or the stream breaks.
    """

    def provision(self, record: EnclaveRecord, jwks_json: str) -> AsyncIterator[EventRecord]: ...

    async def deprovision(self, enclave_id: str) -> None: ...


class QuoteBackend(Protocol):
    """Who quotes an enclave: with replicas, the backend whose TPM measured it."""

    async def quote(self, record: EnclaveRecord, nonce: bytes) -> bytes:
        """A fresh serialized ``licensing.v1.Attestation`` of the enclave over ``nonce``."""
        ...

    async def request_reattestation(self, record: EnclaveRecord, nonce: bytes) -> None:
        """Queue ``nonce`` for the enclave's next re-attestation round (on its measurer)."""
        ...


@dataclass(frozen=True, slots=True)
class EnclaveUpdate:
    event: EventRecord
    #: The enclave as stored, on READY and final events.
    enclave: EnclaveRecord | None
    #: The serialized ``licensing.v1.Attestation``, on the ATTESTED event.
    attestation: bytes | None = None
    #: 0: the provisioning attestation; N: made by re-attestation round N.
    attestation_round: int = 0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_enclave_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise InvalidArgument("ENCLAVE_ID_INVALID", "enclave_id must be a UUID") from exc


def _is_terminal(phase: Phase) -> bool:
    return phase in TERMINAL


def _is_final(phase: Phase) -> bool:
    """Where a stream that follows attestations ends: ATTESTED goes on being re-proven."""
    return phase in TERMINAL and phase is not Phase.ATTESTED


class EnclaveCatalog:
    def __init__(
        self,
        *,
        store: EnclaveStore,
        backend: ProvisioningBackend,
        quotes: QuoteBackend,
        jwks_json: Callable[[], str],
        default_limits: Limits,
        tail: EventTail,
        clock: Callable[[], dt.datetime] = _utcnow,
        reattestations: ReattestationStore | None = None,
    ):
        self._store = store
        self._reattestations = reattestations
        self._tail = tail
        self._backend = backend
        self._quotes = quotes
        self._jwks = jwks_json
        self._defaults = default_limits
        self._clock = clock
        # One reservation at a time per user in this process (SQLite has no row locks).
        self._owner_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Rows attest has read, by the enclave id asked for: what it uses of them (id,
        # owner, measuring backend) never changes past ACCEPTED, and the backend answers
        # for existence and phase, so a repeat attestation reads no row here.
        self._quoted: dict[str, EnclaveRecord] = {}

    # Create -----------------------------------------------------------------------
    async def create(
        self, owner_id: str, request_id: str, nonce: bytes, *, follow_attestations: bool = False
    ) -> AsyncIterator[EnclaveUpdate]:
        if not _REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument(
                "REQUEST_ID_INVALID", "request_id must be 1-64 characters of [A-Za-z0-9._-]"
            )
        check_nonce(nonce, optional=True)
        limits = await self._store.limits(owner_id, self._defaults)
        async with self._owner_locks[owner_id]:
            record, created = await self._store.reserve(
                owner_id=owner_id,
                request_id=request_id,
                nonce=nonce,
                limits=limits,
                now=self._clock(),
            )
        progress = self._progress(record, created)
        return self._then_attestations(progress) if follow_attestations else progress

    async def _then_attestations(
        self, updates: AsyncIterator[EnclaveUpdate]
    ) -> AsyncIterator[EnclaveUpdate]:
        """The create's events, then every re-attestation until FAILED or DELETED."""
        last: EnclaveUpdate | None = None
        async for update in updates:
            last = update
            yield update
        if last is None or last.event.phase is not Phase.ATTESTED:
            return
        event = last.event
        async for more in self._tail.follow(event.enclave_id, event.sequence, _is_final):
            yield await self._update(more)

    async def _progress(self, record: EnclaveRecord, created: bool) -> AsyncIterator[EnclaveUpdate]:
        last = 0
        # A repeat of a request still ACCEPTED (its first caller went away before the
        # backend took it) starts it too: the backend's start is idempotent.
        if created or record.phase is Phase.ACCEPTED:
            for event in await self._store.events_after(record.id, 0):
                last = event.sequence
                yield await self._update(event)
            try:
                async for event in self._backend.provision(record, self._jwks()):
                    if event.sequence <= last:
                        continue
                    last = event.sequence
                    yield await self._update(event)
                    if _is_terminal(event.phase):
                        return
            except Unavailable as exc:
                if last <= 1:
                    # With the database down too, the backend's reconciler frees it later.
                    with contextlib.suppress(DatabaseUnavailable):
                        await self._fail_unprovisioned(record, exc)
                    if exc.reason != "BACKEND_UNAVAILABLE":
                        # The backend refused for a reason of its own (a TPM in
                        # lockout): the caller gets it, with its metadata.
                        raise
                # Otherwise the backend restarted mid-way: its reconciler settles the
                # enclave, and the database tells us how.
        async for event in self._tail.follow(record.id, last, _is_terminal):
            yield await self._update(event)

    async def _fail_unprovisioned(self, record: EnclaveRecord, exc: DomainError) -> None:
        """The backend never took the enclave: free the licence now."""
        current = await self._store.get(record.id)
        if current is None or current.phase is not Phase.ACCEPTED:
            return
        try:
            specific = exc.reason != "BACKEND_UNAVAILABLE"
            await self._store.advance(
                record.id,
                Phase.FAILED,
                exc.message
                if specific
                else "the provisioning backend is unavailable; try again shortly",
                self._clock(),
                failure_reason=exc.reason if specific else "BACKEND_UNAVAILABLE",
            )
        except DomainError:
            return
        _log.warning("enclave %s failed before provisioning: %s", record.id, exc.reason)

    async def _update(self, event: EventRecord) -> EnclaveUpdate:
        if event.phase is Phase.READY or _is_terminal(event.phase):
            record = await self._store.get(event.enclave_id)
            attestation = record.attestation if record and event.phase is Phase.ATTESTED else None
            if record and event.phase is Phase.ATTESTED and self._reattestations is not None:
                # A round's event carries that round's evidence, not the creator's.
                found = await self._reattestations.get(event.enclave_id, event.sequence)
                if found is not None:
                    return EnclaveUpdate(event, record, found[1], found[0])
                if _is_reattestation(event):
                    return EnclaveUpdate(event, record, None)  # pruned: too old to keep
            return EnclaveUpdate(event, record, attestation)
        return EnclaveUpdate(event, None)

    # Watch, get, list, delete ------------------------------------------------------
    async def owned(self, owner_id: str, enclave_id: str) -> EnclaveRecord:
        record = await self._store.get(parse_enclave_id(enclave_id))
        if record is None or record.owner_id != owner_id:
            # The same answer whether it does not exist or is someone else's.
            raise NotFound("ENCLAVE_NOT_FOUND", "no such enclave")
        return record

    async def watch(
        self,
        owner_id: str,
        enclave_id: str,
        from_sequence: int,
        *,
        follow_attestations: bool = False,
        attestation_nonce: bytes = b"",
    ) -> AsyncIterator[EnclaveUpdate]:
        if not 0 <= from_sequence <= MAX_SEQUENCE:
            # Checked before any query: SQLite cannot even bind an integer past 2**63 - 1.
            raise InvalidArgument(
                "FROM_SEQUENCE_INVALID", f"from_sequence must be between 0 and {MAX_SEQUENCE}"
            )
        if attestation_nonce:
            check_nonce(attestation_nonce)
        record = await self.owned(owner_id, enclave_id)
        if attestation_nonce:
            await self._quotes.request_reattestation(record, attestation_nonce)
        return self._watch(record.id, from_sequence, _is_final if follow_attestations else None)

    async def _watch(
        self, enclave_id: str, after: int, until: Callable[[Phase], bool] | None = None
    ) -> AsyncIterator[EnclaveUpdate]:
        if until is not None:
            async for event in self._tail.follow(enclave_id, after, until):
                yield await self._update(event)
            return
        # A watcher that does not follow attestations sees what it always saw: the rounds'
        # events are skipped, and the stream ends at the first ATTESTED, FAILED or DELETED.
        async for event in self._tail.follow(enclave_id, after, _is_final):
            if _is_reattestation(event):
                continue
            yield await self._update(event)
            if _is_terminal(event.phase):
                return

    async def request_attestation(self, owner_id: str, enclave_id: str, nonce: bytes) -> None:
        """The owner's nonce in the enclave's next re-attestation round."""
        check_nonce(nonce)
        record = await self.owned(owner_id, enclave_id)
        await self._quotes.request_reattestation(record, nonce)

    async def list(
        self, owner_id: str, page_size: int, page_token: str
    ) -> tuple[list[EnclaveRecord], str]:
        if page_size < 0:
            raise InvalidArgument("PAGE_SIZE_INVALID", "page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token) if page_token else None
        records = await self._store.list_owned(owner_id, size + 1, after)
        if len(records) <= size:
            return records, ""
        records = records[:size]
        return records, _encode_page_token(records[-1])

    async def attest(self, owner_id: str, enclave_id: str, nonce: bytes) -> bytes:
        check_nonce(nonce)
        record = self._quoted.get(enclave_id)
        if record is None or record.owner_id != owner_id:
            record = await self.owned(owner_id, enclave_id)
            if record.phase is not Phase.ACCEPTED:  # past ACCEPTED its backend is final
                if len(self._quoted) >= MAX_CACHED_ROWS:
                    self._quoted.clear()
                self._quoted[enclave_id] = record
        try:
            return await self._quotes.quote(record, nonce)
        except NotFound:
            self._quoted.pop(enclave_id, None)  # gone: the next call reads the row again
            raise

    async def delete(self, owner_id: str, enclave_id: str) -> None:
        record = await self.owned(owner_id, enclave_id)
        self._quoted.pop(enclave_id, None)
        self._quoted.pop(record.id, None)
        await self._backend.deprovision(record.id)


def _is_reattestation(event: EventRecord) -> bool:
    return event.message.startswith(REATTESTED_PREFIX)


#: Page token: version, creation time (microseconds since the epoch), enclave id.
#: A fixed layout: nothing in it can nest, recurse or grow.
_PAGE_TOKEN = struct.Struct(">Bq16s")
_PAGE_TOKEN_VERSION = 1
_PAGE_TOKEN_CHARS = 34  # base64url of 25 bytes, unpadded
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _encode_page_token(record: EnclaveRecord) -> str:
    micros = (record.created_at - _EPOCH) // _MICROSECOND
    return _encode_raw(_PAGE_TOKEN.pack(_PAGE_TOKEN_VERSION, micros, uuid.UUID(record.id).bytes))


def _decode_page_token(token: str) -> tuple[dt.datetime, str]:
    """The position after which the next page starts; anything but our own layout is refused."""
    invalid = InvalidArgument("PAGE_TOKEN_INVALID", "page_token is not valid")
    # The length is checked before decoding, so a huge token costs nothing.
    if len(token) != _PAGE_TOKEN_CHARS or not token.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, micros, enclave_id = _PAGE_TOKEN.unpack(raw)
        created = _EPOCH + micros * _MICROSECOND
    except (ValueError, OverflowError, struct.error, binascii.Error) as exc:
        raise invalid from exc
    # Re-encoding refuses what the lenient decoder skipped (stray characters, spare bits).
    if version != _PAGE_TOKEN_VERSION or _encode_raw(raw) != token:
        raise invalid
    return created, str(uuid.UUID(bytes=enclave_id))


def _encode_raw(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
