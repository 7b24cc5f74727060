"""Continuous attestation: every live enclave re-proven each round, one TPM quote per round.

Each round this backend takes the ATTESTED enclaves it runs (each backend has its own
TPM and measured set, so rounds run on every backend, never only the leader's), checks
that each workload still runs, and asks the attestor for one quote whose qualifying
data is a Merkle root over a fresh server nonce per enclave (plus any nonce a client
asked for). The TPM cost of a round is one quote whatever the number of enclaves; the
database cost is one read and one write transaction.

The licence is gated on it. An enclave is revoked (FAILED, workload stopped, licence
freed, watchers told by its FAILED event) at once when:

- its workload is gone or replaced (``WORKLOAD_LOST``, as the reconciler says it);
- the quote does not cover its certificate: the certificate on record is not the one
  measured into PCR 23, e.g. replaced behind the backend's back
  (``ATTESTATION_NOT_MEASURED``);
- the TPM answers with a PCR 23 that does not hold the measured set even after the
  attestor wrote it again (``ATTESTATION_LOG_MISMATCH``): every enclave of the round.

A TPM that cannot quote at all (unreachable, timing out, in lockout) is not evidence
against any enclave: the rounds keep trying, and only once it has failed for longer
than ``grace`` does every enclave of this backend get revoked
(``ATTESTATION_TPM_UNREACHABLE``). The grace exists because swtpm or a TPM resource
manager restarts in seconds, and revoking every seat on a blip would make the
licensing server the outage; it is bounded so that no seat runs unproven for longer
than ``interval + grace``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from licensing_common.errors import DomainError
from licensing_server.attestation import Attestor, encode_attestation
from licensing_server.provisioning._provisioner import EnclaveProvisioner
from licensing_server.runtimes import EnclaveRuntime
from licensing_server.storage import (
    EnclaveRecord,
    EnclaveStore,
    Phase,
    ReattestationResult,
    ReattestationStore,
)

_log = logging.getLogger(__name__)

#: Client nonces queued per enclave for the next round; more are refused until it runs.
MAX_REQUESTED_PER_ENCLAVE = 8


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RoundReport:
    """What one round did (logged, and returned for tests and benchmarks)."""

    round: int
    enclaves: int = 0
    quotes: int = 0
    attested: int = 0
    revoked: dict[str, str] = field(default_factory=dict)  # enclave id -> reason
    tpm_unreachable: bool = False
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class ReattestationRounds:
    def __init__(
        self,
        *,
        store: EnclaveStore,
        results: ReattestationStore,
        runtime: EnclaveRuntime,
        provisioner: EnclaveProvisioner,
        attestor: Attestor,
        interval_seconds: float = 30.0,
        grace_seconds: float = 90.0,
        backend_id: str | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self._store = store
        self._results = results
        self._runtime = runtime
        self._provisioner = provisioner
        self._attestor = attestor
        self.interval = interval_seconds
        self.grace = dt.timedelta(seconds=grace_seconds)
        self._backend_id = backend_id
        self._clock = clock
        self._round = 0
        self._requested: defaultdict[str, list[bytes]] = defaultdict(list)
        #: When the TPM first failed to quote in the current run of failures.
        self.unreachable_since: dt.datetime | None = None

    def request(self, enclave_id: str, nonce: bytes) -> bool:
        """Quote over ``nonce`` for the enclave in the next round; False if too many wait."""
        queued = self._requested[enclave_id]
        if len(queued) >= MAX_REQUESTED_PER_ENCLAVE:
            return False
        queued.append(nonce)
        return True

    def _owns(self, record: EnclaveRecord) -> bool:
        return self._backend_id is None or record.backend_id == self._backend_id

    async def run_round(self) -> RoundReport:
        """One round: liveness, one quote over all, results and revocations recorded."""
        started_cpu, started = time.process_time(), time.perf_counter()
        if self._round == 0:
            self._round = await self._results.last_round()
        self._round += 1
        report = RoundReport(self._round)
        try:
            await self._run(report)
        finally:
            report.cpu_seconds = time.process_time() - started_cpu
            report.wall_seconds = time.perf_counter() - started
        if report.enclaves or report.revoked:
            _log.info(
                "re-attestation round %d: %d enclaves, %d quote(s), %d attested, %d revoked%s",
                report.round,
                report.enclaves,
                report.quotes,
                report.attested,
                len(report.revoked),
                " (TPM unreachable)" if report.tpm_unreachable else "",
            )
        return report

    async def _run(self, report: RoundReport) -> None:
        records = [
            r
            for r in await self._store.in_phases({Phase.ATTESTED})
            if self._owns(r) and not self._provisioner.is_provisioning(r.id)
        ]
        report.enclaves = len(records)
        live: list[EnclaveRecord] = []
        for record in records:
            if await self._runtime.is_alive(record.id, record.runtime_handle):
                live.append(record)
            else:
                await self._revoke(
                    report,
                    record,
                    "WORKLOAD_LOST",
                    "licence revoked: the enclave's workload is gone, so it cannot be re-attested",
                )
        if not live:
            self.unreachable_since = None
            return
        requested = {r.id: self._requested.pop(r.id, []) for r in live}
        for stale in [i for i in self._requested if i not in requested]:
            del self._requested[stale]  # enclaves gone: their requests with them
        asks: list[tuple[EnclaveRecord, bytes, bool]] = []
        for record in live:
            # A client's nonce proves freshness to that client; without one, the server's.
            if not requested[record.id]:
                asks.append((record, secrets.token_bytes(32), False))
            asks.extend((record, nonce, True) for nonce in requested[record.id])
        try:
            report.quotes = 1
            outcomes = await self._attestor.attest_round(
                [(r.certificate_pem, r.certificate_sha256, nonce) for r, nonce, _ in asks]
            )
        except Exception as exc:
            if isinstance(exc, DomainError) and exc.reason == "MEASUREMENT_LOG_MISMATCH":
                # The TPM answered, and its PCR 23 does not hold the measured set even after
                # a rewrite: the quote covers none of them. Evidence, not an outage.
                for record in live:
                    await self._revoke(
                        report,
                        record,
                        "ATTESTATION_LOG_MISMATCH",
                        "licence revoked: the TPM's quote does not show the measured set in "
                        "PCR 23, even after it was written again",
                    )
                return
            # The TPM could not quote: no verdict on any enclave (the grace applies).
            report.tpm_unreachable = True
            for record in live:  # put client requests back for the next round
                self._requested[record.id][:0] = requested[record.id]
            await self._tpm_unreachable(report, live, exc)
            return
        self.unreachable_since = None
        results: list[ReattestationResult] = []
        failed: set[str] = set()
        for (record, _nonce, asked), outcome in zip(asks, outcomes, strict=True):
            if record.id in failed:
                continue
            if isinstance(outcome, DomainError):
                failed.add(record.id)
                await self._revoke(
                    report,
                    record,
                    "ATTESTATION_NOT_MEASURED",
                    "licence revoked: the TPM quote does not cover the enclave's certificate "
                    "(it is not the one measured into PCR 23)",
                )
                continue
            origin = "your nonce" if asked else "a fresh server nonce"
            results.append(
                ReattestationResult(
                    record.id,
                    report.round,
                    encode_attestation(outcome),
                    f"re-attested in round {report.round}: TPM quote binds {origin} "
                    "to the certificate",
                )
            )
        results = [r for r in results if r.enclave_id not in failed]
        written = await self._results.record(results, self._clock())
        report.attested = len({e.enclave_id for e in written})

    async def _tpm_unreachable(
        self, report: RoundReport, live: list[EnclaveRecord], exc: Exception
    ) -> None:
        now = self._clock()
        if self.unreachable_since is None:
            self.unreachable_since = now
        down = now - self.unreachable_since
        reason = exc.reason if isinstance(exc, DomainError) else type(exc).__name__
        if down < self.grace:
            _log.warning(
                "re-attestation round %d: the TPM did not quote (%s) for %.0fs; "
                "revoking nothing within the %.0fs grace",
                report.round,
                reason,
                down.total_seconds(),
                self.grace.total_seconds(),
            )
            return
        for record in live:
            await self._revoke(
                report,
                record,
                "ATTESTATION_TPM_UNREACHABLE",
                f"licence revoked: the TPM could not quote for {down.total_seconds():.0f}s, "
                f"longer than the {self.grace.total_seconds():.0f}s grace",
            )

    async def _revoke(
        self, report: RoundReport, record: EnclaveRecord, reason: str, message: str
    ) -> None:
        current = await self._store.get(record.id)
        if current is None or current.phase is not Phase.ATTESTED:
            return  # deleted or settled meanwhile
        self._requested.pop(record.id, None)
        await self._provisioner.fail(current, reason, message)
        report.revoked[record.id] = reason

    async def run(self) -> None:
        """A round every ``interval`` seconds (from the start of one to the next)."""
        loop = asyncio.get_running_loop()
        while True:
            begun = loop.time()
            try:
                await self.run_round()
            except Exception as exc:  # the database is down, or a bug (logged): next round
                if isinstance(exc, DomainError):
                    _log.warning("re-attestation round postponed: %s", exc.reason)
                else:
                    _log.exception("re-attestation round failed; retrying next round")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - begun)))
