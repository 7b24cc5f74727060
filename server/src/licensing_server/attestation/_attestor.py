"""The backend's attestor: proves its AK, measures certificates, answers quote requests.

PCR 23 holds the root of a Merkle tree over the live enclave certificates: each
change of that set resets PCR 23 and extends the new root once, and each answer
carries that one event and the certificate's inclusion proof, so evidence stays
logarithmic in the live enclaves however many were ever created. One asyncio
lock orders every TPM use that touches PCR 23, so no quote is taken while PCR 23
is being rewritten. Quote requests that arrive while the TPM is busy share the
next quote through a Merkle tree of their qualifying values: throughput then
scales past the TPM's own quote rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from licensing_common.binding import (
    AK_CERTIFICATE_IDENTITY,
    DERIVATION,
    MEASURED_SET_KIND,
    MEASUREMENT_PCR,
    MerkleTree,
    merkle_root_and_proofs,
    qualifying_value,
)
from licensing_common.errors import DomainError, FailedPrecondition, Unavailable
from licensing_server.attestation._batching import BatchWindow
from licensing_server.attestation._evidence import (
    AttestationEvidence,
    MeasurementEvent,
    MerkleProof,
    PcrValue,
)
from licensing_server.observability import AttestationMetrics
from licensing_server.pki import CertificateAuthority, write_public_file
from licensing_server.storage import EpochRecord, MeasurementRecord, MeasurementStore
from licensing_server.tasks import spawn
from licensing_server.tpm import (
    AttestationKeyInfo,
    LockoutState,
    QuoteResult,
    TpmLockedOut,
    make_credential,
    public_key_pem,
)

_log = logging.getLogger(__name__)

QUOTED_PCRS = [0, 1, 2, 3, 4, 5, 6, 7, MEASUREMENT_PCR]
#: Not a throughput ceiling: the batch is whatever arrived during the last quote, and
#: this only bounds one batch's memory (a Merkle tree and proofs: about 2 MB).
MAX_BATCH = 16_384
COALESCE_SECONDS = 0.002
AK_LIFETIME = dt.timedelta(days=365)


class QuoteSource(Protocol):
    """What the attestor needs of a TPM (``licensing_server.tpm.TpmDevice`` provides it)."""

    async def ek_certificate_der(self) -> bytes: ...
    async def ek_public(self) -> bytes: ...
    async def attestation_key(self) -> AttestationKeyInfo: ...
    async def activate_credential(
        self, credential_blob: bytes, encrypted_secret: bytes
    ) -> bytes: ...
    async def extend_pcr(self, pcr: int, sha256_digest: bytes) -> None: ...
    async def reset_pcr(self, pcr: int) -> None: ...
    async def quote(self, qualifying_data: bytes, pcrs: list[int]) -> QuoteResult: ...
    async def lockout_state(self) -> LockoutState: ...
    async def clock_info(self) -> tuple[int, int]: ...


LiveCertificates = Callable[[], Awaitable[list[tuple[str, bytes]]]]
#: Told True when the attestor can serve, False while the TPM is in lockout.
AvailabilityListener = Callable[[bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Request:
    certificate_pem: str
    certificate_sha256: bytes
    nonce: bytes
    value: bytes
    future: asyncio.Future[AttestationEvidence]


@dataclass(frozen=True, slots=True)
class _MeasuredSet:
    """What PCR 23 was last written with: the tree over a version of the live set."""

    epoch: EpochRecord
    events: list[MeasurementRecord]
    tree: MerkleTree | None  # None while no enclave is live (PCR 23 stays zero)
    index: dict[bytes, int]  # certificate SHA-256 -> leaf index
    pcr: bytes
    version: int

    def proof(self, certificate_sha256: bytes) -> MerkleProof | None:
        index = self.index.get(certificate_sha256)
        if index is None or self.tree is None:
            return None
        return MerkleProof(
            leaf_index=index, leaf_count=len(self.tree), siblings=tuple(self.tree.proof(index))
        )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _replay(events: list[MeasurementRecord]) -> bytes:
    pcr = bytes(32)
    for event in events:
        if event.pcr == MEASUREMENT_PCR:
            pcr = hashlib.sha256(pcr + event.digest).digest()
    return pcr


def _not_measured() -> DomainError:
    return FailedPrecondition(
        "ENCLAVE_NOT_MEASURED",
        "the enclave's certificate is not among the live ones measured into PCR 23",
    )


def _chains_to(cert: x509.Certificate, anchors: list[x509.Certificate]) -> bool:
    current = cert
    for _ in range(4):
        issuer = next((a for a in anchors if _issued_by(current, a)), None)
        if issuer is None:
            return False
        if issuer.subject == issuer.issuer:
            return True
        current = issuer
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class Attestor:
    def __init__(
        self,
        *,
        tpm: QuoteSource,
        ca: CertificateAuthority,
        measurements: MeasurementStore,
        manufacturer_ca_pem: bytes,
        ak_certificate_path: Path,
        live_certificates: LiveCertificates,
        simulated_tpm_latency: float = 0.0,
        clock: Callable[[], dt.datetime] = _utcnow,
        metrics: AttestationMetrics | None = None,
    ):
        self._tpm = tpm
        self._metrics = metrics or AttestationMetrics()
        self._ca = ca
        self._store = measurements
        self._manufacturer = x509.load_pem_x509_certificates(manufacturer_ca_pem)
        self._ak_path = ak_certificate_path
        self._live = live_certificates
        self._latency = simulated_tpm_latency
        self._clock = clock
        self._lock = asyncio.Lock()
        self._ak: AttestationKeyInfo | None = None
        self._ak_proven = asyncio.Event()
        self._ak_failure = ""  # why the last attempt to prove the AK failed
        self._lockout: LockoutState | None = None  # set while the TPM is in DA lockout
        self._listener: AvailabilityListener | None = None
        self._ak_chain: list[str] = []
        # The live set (enclave id -> certificate SHA-256), read from the database at
        # first use and kept here after; _version counts its changes.
        self._members: dict[str, bytes] | None = None
        self._forgotten: set[str] = set()
        self._version = 0
        # What PCR 23 holds; None when unknown or mid-rewrite (the next use rewrites it).
        self._written: _MeasuredSet | None = None
        self._pending: list[_Request] = []
        self._worker: asyncio.Task[None] | None = None
        self._window = BatchWindow()
        # Set once len(_pending) reaches _cohort while the worker waits for its cohort.
        self._cohort_back = asyncio.Event()
        self._cohort = 0

    @property
    def ak_certificate_chain_pem(self) -> list[str]:
        return list(self._ak_chain)

    # The attestation key ------------------------------------------------------------
    async def prove_attestation_key(self) -> None:
        """Check the EK certificate, activate a credential for the AK, then certify the AK.

        Credential activation shows the AK lives in the same TPM as the EK whose
        certificate the manufacturer signed; only then does our CA vouch for it.
        """
        async with self._lock:
            await self._note_lockout(await self._tpm.lockout_state())
            if self._lockout is not None:
                raise TpmLockedOut(self._lockout)
            ek_cert = x509.load_der_x509_certificate(await self._tpm.ek_certificate_der())
            if not _chains_to(ek_cert, self._manufacturer):
                raise FailedPrecondition(
                    "EK_CERTIFICATE_UNTRUSTED",
                    "the TPM's EK certificate does not chain to the manufacturer CA",
                )
            ek_public = await self._tpm.ek_public()
            ek_key = serialization.load_pem_public_key(public_key_pem(ek_public))
            cert_key = ek_cert.public_key()
            if ek_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) != cert_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                raise FailedPrecondition(
                    "EK_MISMATCH", "the EK certificate is not for this TPM's EK"
                )
            ak = await self._tpm.attestation_key()
            secret = secrets.token_bytes(32)
            blob, encrypted = make_credential(ek_public, secret, ak.name)
            recovered = await self._tpm.activate_credential(blob, encrypted)
            if not hmac.compare_digest(recovered, secret):
                raise FailedPrecondition(
                    "AK_ACTIVATION_FAILED", "credential activation did not return the secret"
                )
            ak_key = serialization.load_pem_public_key(ak.public_pem.encode())
            if not isinstance(ak_key, ec.EllipticCurvePublicKey):
                raise FailedPrecondition("AK_NOT_ECC", "the attestation key is not ECC")
            issued = self._ca.issue(
                ak_key,
                common_name="licensing attestation key",
                lifetime=AK_LIFETIME,
                uris=[AK_CERTIFICATE_IDENTITY],
            )
            write_public_file(self._ak_path, issued.pem.encode())
            self._ak = ak
            self._ak_chain = [issued.pem, *self._ca.ca_certificates_pem]
            self._ak_proven.set()
            _log.info("attestation key proven by credential activation and certified")

    async def keep_proving(self, retry_seconds: float = 2.0) -> None:
        """Prove the AK, retrying until the TPM answers; then watch for DA lockout.

        The TPM may start after us or be down for a while. A TPM in lockout is
        reported as such (``TPM_LOCKED_OUT``) until it recovers or is cleared.
        """
        while True:
            if self._ak is None:
                try:
                    await self.prove_attestation_key()
                    continue
                except Exception as exc:
                    # Callers are told a domain error's fixed text, never another's detail.
                    self._ak_failure = exc.message if isinstance(exc, DomainError) else ""
                    _log.warning("attestation key not proven yet: %r", exc)
            else:
                # Quote failures surface to their callers; only lockout is noted here.
                with contextlib.suppress(Exception):
                    await self._note_lockout(await self._tpm.lockout_state())
            await asyncio.sleep(retry_seconds)

    async def set_availability_listener(self, listener: AvailabilityListener) -> None:
        """Tell ``listener`` now and at every change whether the attestor can serve."""
        self._listener = listener
        await listener(self._lockout is None)

    async def _note_lockout(self, state: LockoutState) -> None:
        locked = state if state.in_lockout else None
        if (locked is None) == (self._lockout is None):
            self._lockout = locked
            return
        self._lockout = locked
        if locked is not None:
            _log.error("%s", TpmLockedOut(locked).message)
        else:
            _log.info("the TPM is out of dictionary-attack lockout")
        if self._listener is not None:
            await self._listener(locked is None)

    def check_available(self) -> None:
        """Raise ``TpmLockedOut`` while the TPM is known to be in lockout."""
        if self._lockout is not None:
            raise TpmLockedOut(self._lockout)

    async def wait_until_proven(self, wait_seconds: float) -> None:
        """Wait (at most ``wait_seconds``) for the AK: a create right after start needs it."""
        self.check_available()
        if self._ak is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ak_proven.wait(), wait_seconds)
        self._require_ak()

    def _require_ak(self) -> AttestationKeyInfo:
        self.check_available()
        if self._ak is None:
            detail = f": {self._ak_failure}" if self._ak_failure else ""
            raise Unavailable(
                "TPM_UNAVAILABLE", f"the attestation key is not available yet{detail}"
            )
        return self._ak

    # Measurements ---------------------------------------------------------------------
    async def measure(self, enclave_id: str, certificate_sha256: bytes) -> None:
        """Add a new enclave certificate to the live set and rewrite PCR 23 before returning."""
        self._require_ak()
        async with self._lock:
            members = await self._load_members()
            members[enclave_id] = certificate_sha256
            self._version += 1
            try:
                await self._write(None)
            except BaseException:
                if members.get(enclave_id) == certificate_sha256:
                    del members[enclave_id]
                    self._version += 1
                raise

    def is_measured(self, enclave_id: str, certificate_sha256: bytes) -> bool:
        """Whether the certificate is in the live set now (no database read, no TPM use).

        False also when the live set was not loaded yet: callers then read the database.
        """
        members = self._members
        return members is not None and members.get(enclave_id) == certificate_sha256

    def forget(self, enclave_id: str) -> None:
        """Drop an enclave (deleted, failed) from the live set.

        PCR 23 follows at the next measure or quote, before any evidence is made,
        so a delete never waits for (or fails with) the TPM, and a burst of them
        costs one rewrite.
        """
        if self._members is None:
            self._forgotten.add(enclave_id)  # in case a load is reading the live set now
        elif self._members.pop(enclave_id, None) is not None:
            self._version += 1

    async def resync(self, busy: Callable[[str], bool]) -> int:
        """Forget members the database no longer lists as live; returns how many.

        With replicas another backend may settle or delete an enclave this TPM measured
        (the leader; a delete through another pod's frontend): its certificate leaves PCR
        23 at the next quote. ``busy`` enclaves (being provisioned here) are left alone.
        """
        if self._members is None:
            return 0
        live = {enclave_id for enclave_id, _ in await self._live()}
        gone = [i for i in list(self._members) if i not in live and not busy(i)]
        for enclave_id in gone:
            self.forget(enclave_id)
        return len(gone)

    async def _load_members(self) -> dict[str, bytes]:
        if self._members is None:
            live = await self._live()
            self._members = {i: d for i, d in live if i not in self._forgotten}
            self._forgotten.clear()
        return self._members

    async def _write(self, reset_count: int | None) -> _MeasuredSet:
        """Under the lock: reset PCR 23, extend the live set's root once, start an epoch.

        Until it completes ``_written`` is None, so a crash or TPM failure in between
        only means the next use writes PCR 23 again from the live set.
        """
        members = await self._load_members()
        version = self._version
        digests = sorted(set(members.values()))
        tree = MerkleTree(digests) if digests else None
        previous, self._written = self._written, None
        await self._tpm.reset_pcr(MEASUREMENT_PCR)
        if reset_count is None:
            if previous is not None:
                reset_count = previous.epoch.reset_count
            else:
                reset_count, _ = await self._tpm.clock_info()
        if tree is not None:
            await self._tpm.extend_pcr(MEASUREMENT_PCR, tree.root)
        events = [] if tree is None else [(MEASUREMENT_PCR, tree.root, MEASURED_SET_KIND, "")]
        epoch, records = await self._store.start_epoch(reset_count, self._clock(), events)
        written = _MeasuredSet(
            epoch=epoch,
            events=records,
            tree=tree,
            index={digest: i for i, digest in enumerate(digests)},
            pcr=_replay(records),
            version=version,
        )
        self._written = written
        if previous is None or previous.epoch.reset_count != reset_count:
            _log.info(
                "PCR 23 re-established over %d live certificates (epoch %d, TPM reset count %d)",
                len(digests),
                epoch.id,
                reset_count,
            )
        return written

    # Quotes ---------------------------------------------------------------------------
    async def attest(
        self, certificate_pem: str, certificate_sha256: bytes, nonce: bytes
    ) -> AttestationEvidence:
        """A quote bound to ``nonce`` and the certificate, with its proof of being in PCR 23.

        Raises ``FailedPrecondition`` ``ENCLAVE_NOT_MEASURED`` when the certificate is not
        in the live set when the quote is taken (the enclave was deleted or failed).
        """
        self._require_ak()
        return await self._enqueue(certificate_pem, certificate_sha256, nonce)

    async def attest_many(
        self, requests: list[tuple[str, bytes, bytes]]
    ) -> list[AttestationEvidence | DomainError]:
        """``attest`` for each ``(certificate_pem, certificate_sha256, nonce)`` at once.

        Each result is that request's evidence or its own ``DomainError``; they join the
        pending queue together, so they share quotes as concurrent ``attest`` calls do.
        """
        self._require_ak()
        futures = [self._enqueue(pem, digest, nonce) for pem, digest, nonce in requests]
        results: list[AttestationEvidence | DomainError] = []
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, AttestationEvidence | DomainError):
                results.append(outcome)
            else:
                raise outcome  # a bug or cancellation: not one request's verdict
        return results

    def _enqueue(
        self, certificate_pem: str, certificate_sha256: bytes, nonce: bytes
    ) -> asyncio.Future[AttestationEvidence]:
        future: asyncio.Future[AttestationEvidence] = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Request(
                certificate_pem,
                certificate_sha256,
                nonce,
                qualifying_value(nonce, certificate_sha256),
                future,
            )
        )
        if self._cohort and len(self._pending) >= self._cohort:
            self._cohort_back.set()
        if self._worker is None or self._worker.done():
            self._worker = spawn(
                self._drain(), name="attestation-quotes", on_failure=self._fail_pending
            )
        return future

    async def attest_round(
        self, requests: list[tuple[str, bytes, bytes]]
    ) -> list[AttestationEvidence | DomainError]:
        """One quote over every ``(certificate_pem, certificate_sha256, nonce)``, however many.

        For re-attestation rounds: unlike ``attest`` there is no ``MAX_BATCH``, so a
        round costs one TPM quote whatever the number of live enclaves (the Merkle
        tree of qualifying values grows by a level per doubling). Each result is the
        evidence or that request's own error (``ENCLAVE_NOT_MEASURED``); a TPM that
        cannot quote raises for the whole round.
        """
        self._require_ak()
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        batch = [
            _Request(pem, digest, nonce, qualifying_value(nonce, digest), loop.create_future())
            for pem, digest, nonce in requests
        ]
        async with self._lock:
            self._metrics.batch_size.observe(len(batch))
            return await self._quote_batch(batch)

    def _fail_pending(self, exc: BaseException) -> None:
        """The quote worker died of a bug (logged): nobody waiting on it may hang."""
        pending, self._pending = self._pending, []
        for request in pending:
            if not request.future.done():
                request.future.set_exception(
                    Unavailable("TPM_UNAVAILABLE", "the quote could not be made")
                )

    async def _drain(self) -> None:
        """Quote whatever is pending, batch after batch, until nothing is.

        The batch size follows the arrival rate: everything that queued while the
        previous quote was taken goes into the next one, with no ceiling but
        ``MAX_BATCH``'s memory bound, and a quote waits (boundedly) for the clients it
        just answered to come back (``BatchWindow``).
        """
        while self._pending:
            # A short window lets requests sent in the same instant share one quote (and
            # with a fast TPM, fewer quotes cost less CPU per answer).
            await asyncio.sleep(COALESCE_SECONDS)
            await self._await_cohort()
            async with self._lock:
                # Formed under the lock: whatever queued while measurements ran joins too.
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._metrics.batch_size.observe(len(batch))
                started = time.monotonic()
                try:
                    results = await self._quote_batch(batch)
                except Exception as exc:
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    continue
                self._window.quoted(len(batch), len(self._pending), time.monotonic() - started)
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, DomainError):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)

    async def _await_cohort(self) -> None:
        """Wait, at most the window's bound, until the last quote's cohort is back."""
        cohort, seconds = self._window.linger(len(self._pending))
        if seconds <= 0:
            return
        self._cohort = cohort
        self._cohort_back.clear()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cohort_back.wait(), seconds)
        finally:
            self._cohort = 0

    async def _quote_batch(self, batch: list[_Request]) -> list[AttestationEvidence | DomainError]:
        """One quote for the batch, taken with PCR 23 as ``written`` says (checked after)."""
        ak = self._require_ak()
        proofs: list[list[bytes]] = [[]]
        if len(batch) == 1:
            extra = batch[0].value
        else:
            extra, proofs = merkle_root_and_proofs([r.value for r in batch])
        written = self._written
        if written is None or written.version != self._version:
            written = await self._write(None)
        for attempt in range(2):
            if self._latency:
                await asyncio.sleep(self._latency)
            quote = await self._tpm.quote(extra, QUOTED_PCRS)
            if (
                written.epoch.reset_count == quote.reset_count
                and written.pcr == quote.pcr_values[MEASUREMENT_PCR]
            ):
                break
            if attempt:
                raise Unavailable(
                    "MEASUREMENT_LOG_MISMATCH", "the measurement log could not be re-established"
                )
            # The TPM was reset (or PCR 23 changed behind our back): write it again.
            _log.warning("PCR 23 does not hold the live set (TPM reset?); writing it again")
            written = await self._write(quote.reset_count)
        values = tuple(PcrValue(p, quote.pcr_values[p]) for p in QUOTED_PCRS)
        log = tuple(
            MeasurementEvent(e.pcr, e.digest, e.kind, e.enclave_id, e.sequence)
            for e in written.events
        )
        results: list[AttestationEvidence | DomainError] = []
        for index, request in enumerate(batch):
            measured = written.proof(request.certificate_sha256)
            if measured is None:
                results.append(_not_measured())
                continue
            shared = None
            if len(batch) > 1:
                shared = MerkleProof(
                    leaf_index=index, leaf_count=len(batch), siblings=tuple(proofs[index])
                )
            evidence = AttestationEvidence(
                quote=quote.attest,
                signature=quote.signature,
                ak_public=ak.public,
                ak_public_pem=ak.public_pem,
                ak_certificate_chain_pem=tuple(self._ak_chain),
                hash_algorithm="sha256",
                pcr_selection=tuple(QUOTED_PCRS),
                pcr_values=values,
                event_log=log,
                enclave_certificate_pem=request.certificate_pem,
                enclave_certificate_sha256=request.certificate_sha256,
                nonce=request.nonce,
                qualifying_data_derivation=DERIVATION,
                log_epoch=written.epoch.id,
                measurement_proof=measured,
                merkle_proof=shared,
            )
            results.append(evidence)
        return results

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
