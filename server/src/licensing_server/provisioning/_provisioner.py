"""The backend's provisioning loop: one task per enclave, every phase written before it is told."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from licensing_common.errors import DomainError, FailedPrecondition, NotFound, Unavailable
from licensing_common.phases import TERMINAL
from licensing_server.attestation import Attestor, encode_attestation
from licensing_server.events import EventBus, follow_events
from licensing_server.issuers import CertificateIssuer, EnclaveCertificateRequest
from licensing_server.observability import ProvisioningMetrics
from licensing_server.pki import TRUST_DOMAIN
from licensing_server.provisioning._probe import HealthProbe
from licensing_server.runtimes import (
    EnclaveRuntime,
    RuntimeFailure,
    WorkloadSpec,
    enclave_server_name,
)
from licensing_server.storage import (
    DatabaseUnavailable,
    EnclaveRecord,
    EnclaveStore,
    EventRecord,
    Phase,
)
from licensing_server.tasks import spawn

_log = logging.getLogger(__name__)

#: Enclaves whose certificate is measured in PCR 23 (re-measured in a new log epoch).
MEASURED = frozenset({Phase.CERTIFICATE_ISSUED, Phase.READY, Phase.ATTESTING, Phase.ATTESTED})
#: Messages of PROVISIONING_INTERRUPTED, by cause.
_DATABASE_LOST = (
    "provisioning was interrupted: the database was unavailable, so the enclave was stopped; "
    "create it again"
)
_TASK_DIED = "provisioning was interrupted by an internal error; create the enclave again"


def terminal_phases() -> frozenset[Phase]:
    """Where provisioning ends."""
    return TERMINAL


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def enclave_identity(enclave_id: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/enclave/{enclave_id}"


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    token_issuer: str
    token_audience: str
    #: How long a workload may take to send its CSR, and to answer SERVING.
    start_timeout: float = 30.0
    ready_timeout: float = 15.0
    #: How long a create right after start waits for the attestation key to be proven.
    attestation_key_wait: float = 10.0


class _PhaseTimer:
    """One provisioning's clock: how long each phase took to reach from the one before."""

    def __init__(self, metrics: ProvisioningMetrics):
        self._metrics = metrics
        self._last = time.perf_counter()

    def reached(self, phase: Phase) -> None:
        now = time.perf_counter()
        self._metrics.phase.labels(phase.value).observe(now - self._last)
        self._last = now


class EnclaveProvisioner:
    def __init__(
        self,
        *,
        store: EnclaveStore,
        runtime: EnclaveRuntime,
        issuer: CertificateIssuer,
        probe: HealthProbe,
        attestor: Attestor,
        settings: ProvisioningSettings,
        clock: Callable[[], dt.datetime] = _utcnow,
        metrics: ProvisioningMetrics | None = None,
        backend_id: str | None = None,
    ):
        self._store = store
        #: Recorded on each enclave this backend starts (None: SQLite's single backend).
        self._backend_id = backend_id
        self._metrics = metrics or ProvisioningMetrics()
        self._runtime = runtime
        self._issuer = issuer
        self._probe = probe
        self._attestor = attestor
        self._settings = settings
        self._clock = clock
        self._bus = EventBus()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deprovisioning: set[str] = set()
        #: Why each enclave whose provisioning ended without a final phase stopped.
        self._interrupted: dict[str, str] = {}

    async def forget_settled_elsewhere(self) -> int:
        """Measured enclaves another backend settled or deleted leave our PCR 23."""
        return await self._attestor.resync(self.is_provisioning)

    # Commands -----------------------------------------------------------------
    async def start(self, enclave_id: str, owner_id: str, jwks_json: str) -> EnclaveRecord:
        """Begin provisioning an ACCEPTED enclave; repeating it is harmless."""
        record = await self._store.get(enclave_id)
        if record is None or record.owner_id != owner_id:
            raise NotFound("ENCLAVE_NOT_FOUND", "no such enclave")
        if record.phase is Phase.ACCEPTED and self._backend_id is not None:
            # Before the row leaves ACCEPTED: a driven row always names its backend.
            await self._store.claim(enclave_id, self._backend_id)
        if record.phase is Phase.ACCEPTED and enclave_id not in self._tasks:
            if not jwks_json:
                raise FailedPrecondition("JWKS_REQUIRED", "the enclave needs the token keys")
            self._attestor.check_available()  # a TPM in lockout: refuse before starting anything
            task = spawn(
                self._provision(record, jwks_json),
                name=f"provision-{enclave_id}",
                on_failure=functools.partial(self._task_died, enclave_id),
            )
            self._tasks[enclave_id] = task
            self._interrupted.pop(enclave_id, None)
            task.add_done_callback(lambda _: self._tasks.pop(enclave_id, None))
        return record

    def _task_died(self, enclave_id: str, _exc: BaseException) -> None:
        """A bug escaped ``_provision`` (it is logged): the reconciler settles the row."""
        self._interrupted.setdefault(enclave_id, _TASK_DIED)

    def is_provisioning(self, enclave_id: str) -> bool:
        """Whether a task of this backend drives (or removes) the enclave right now.

        Once it is False for an enclave past ACCEPTED it stays False (only ACCEPTED
        enclaves are started), and everything its task wrote is in the database.
        """
        return enclave_id in self._tasks or enclave_id in self._deprovisioning

    def interruption(self, enclave_id: str) -> str | None:
        """Why this backend's provisioning of the enclave ended without a final phase
        (a message for its FAILED event), or None if nothing is known of it."""
        return self._interrupted.get(enclave_id)

    def follow(self, enclave_id: str, after: int) -> AsyncIterator[EventRecord]:
        return self._follow(enclave_id, after)

    async def _follow(self, enclave_id: str, after: int) -> AsyncIterator[EventRecord]:
        with self._bus.subscribe(enclave_id, after) as wake:
            async for event in follow_events(
                self._store, enclave_id, after, TERMINAL.__contains__, wake=wake
            ):
                yield event

    async def deprovision(self, enclave_id: str) -> None:
        """Stop the workload and remove every trace of the enclave; idempotent."""
        self._deprovisioning.add(enclave_id)
        try:
            task = self._tasks.get(enclave_id)
            if task is not None:
                if not task.done():
                    self._metrics.outcomes.labels(Phase.DELETED.value, "").inc()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            record = await self._store.get(enclave_id)
            await self._runtime.stop(enclave_id, record.runtime_handle if record else "")
            await self._store.remove(enclave_id)
            self._attestor.forget(enclave_id)
        finally:
            self._deprovisioning.discard(enclave_id)
        self._interrupted.pop(enclave_id, None)
        self._bus.close(enclave_id)
        _log.info("enclave %s deprovisioned", enclave_id)

    async def fail(self, record: EnclaveRecord, reason: str, message: str) -> None:
        """Stop whatever runs and record FAILED (used by the reconciler too).

        Raises ``Unavailable`` when the database cannot record it: the workload is
        stopped all the same, and the row stays for the reconciler to settle.
        """
        with contextlib.suppress(Exception):
            await self._runtime.stop(record.id, record.runtime_handle)
        try:
            event = await self._store.advance(
                record.id, Phase.FAILED, message, self._clock(), failure_reason=reason
            )
        except (NotFound, FailedPrecondition):
            self._interrupted.pop(record.id, None)
            return  # deleted or already failed meanwhile
        finally:
            self._attestor.forget(record.id)  # stopped: out of the measured set either way
        self._interrupted.pop(record.id, None)
        self._bus.publish(event)
        self._metrics.outcomes.labels(Phase.FAILED.value, reason).inc()
        _log.info("enclave %s failed: %s (%s)", record.id, reason, message)

    async def shutdown(self) -> None:
        """Stop in-flight provisioning; the reconciler settles their rows at next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # The phases -----------------------------------------------------------------
    async def _advance(
        self, timer: _PhaseTimer, enclave_id: str, phase: Phase, message: str, **fields: object
    ) -> None:
        event = await self._store.advance(
            enclave_id,
            phase,
            message,
            self._clock(),
            **fields,  # type: ignore[arg-type]
        )
        timer.reached(phase)
        self._bus.publish(event)

    async def _provision(self, record: EnclaveRecord, jwks_json: str) -> None:
        enclave_id = record.id
        handle = ""
        settings = self._settings
        timer = _PhaseTimer(self._metrics)
        try:
            workload = await self._runtime.place(
                WorkloadSpec(
                    enclave_id=enclave_id,
                    owner_id=record.owner_id,
                    jwks_json=jwks_json,
                    ca_pem=self._issuer.ca_certificates_pem[0],
                    token_issuer=settings.token_issuer,
                    token_audience=settings.token_audience,
                )
            )
            handle = workload.handle
            await self._advance(
                timer, enclave_id, Phase.SCHEDULED, "workload placed", runtime_handle=handle
            )
            try:
                csr_pem = await asyncio.wait_for(
                    workload.certificate_request(), settings.start_timeout
                )
            except TimeoutError as exc:
                raise RuntimeFailure(
                    "ENCLAVE_START_TIMEOUT", "the enclave did not start in time"
                ) from exc
            await self._advance(
                timer, enclave_id, Phase.RUNNING, "workload running; it made its key and CSR"
            )
            name = workload.names.server_name or enclave_server_name(enclave_id)
            issued = await self._issuer.issue_enclave_certificate(
                EnclaveCertificateRequest(
                    csr_pem=csr_pem,
                    common_name=enclave_id,
                    lifetime=max(record.expires_at - self._clock(), dt.timedelta(minutes=1)),
                    dns_names=list(workload.names.dns_names),
                    ip_addresses=list(workload.names.ip_addresses),
                    uris=[enclave_identity(enclave_id)],
                    enclave_id=enclave_id,
                )
            )
            await self._attestor.wait_until_proven(settings.attestation_key_wait)
            await self._attestor.measure(enclave_id, issued.sha256)
            await self._advance(
                timer,
                enclave_id,
                Phase.CERTIFICATE_ISSUED,
                f"certificate issued and measured into PCR 23, SHA-256 {issued.sha256.hex()}",
                certificate_pem=issued.pem,
                certificate_sha256=issued.sha256,
                tls_server_name=name,
            )
            endpoint = await asyncio.wait_for(
                workload.install_certificate(issued.pem, self._issuer.ca_certificates_pem),
                settings.start_timeout,
            )
            await self._probe.wait_serving(endpoint, name, settings.ready_timeout)
            await self._advance(
                timer,
                enclave_id,
                Phase.READY,
                f"serving on {endpoint}; health check SERVING over mTLS",
                endpoint=endpoint,
            )
            await self._advance(
                timer, enclave_id, Phase.ATTESTING, "quoting the TPM over the certificate"
            )
            nonce = record.nonce or secrets.token_bytes(32)
            evidence = await self._attestor.attest(issued.pem, issued.sha256, nonce)
            origin = "your nonce" if record.nonce else "a server-chosen nonce (none was given)"
            await self._advance(
                timer,
                enclave_id,
                Phase.ATTESTED,
                f"TPM quote binds {origin} to the certificate",
                attestation=encode_attestation(evidence),
            )
            self._metrics.outcomes.labels(Phase.ATTESTED.value, "").inc()
            _log.info("enclave %s ready on %s and attested", enclave_id, endpoint)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._runtime.stop(enclave_id, handle)
            raise
        except DatabaseUnavailable:
            await self._fail_current(enclave_id, handle, "PROVISIONING_INTERRUPTED", _DATABASE_LOST)
        except RuntimeFailure as exc:
            await self._fail_current(enclave_id, handle, exc.reason, exc.message)
        except DomainError as exc:
            if isinstance(exc, NotFound):  # deleted while provisioning
                self._metrics.outcomes.labels(Phase.DELETED.value, "").inc()
                with contextlib.suppress(Exception):
                    await self._runtime.stop(enclave_id, handle)
                return
            await self._fail_current(enclave_id, handle, exc.reason, exc.message)
        except TimeoutError:
            await self._fail_current(
                enclave_id, handle, "ENCLAVE_START_TIMEOUT", "the enclave did not start in time"
            )
        except Exception:
            _log.exception("provisioning enclave %s failed unexpectedly", enclave_id)
            await self._fail_current(
                enclave_id, handle, "PROVISIONING_ERROR", "provisioning failed unexpectedly"
            )

    async def _fail_current(self, enclave_id: str, handle: str, reason: str, message: str) -> None:
        """Stop the workload first (the database may be what failed), then record FAILED.

        If the database cannot take the record, the task still ends cleanly: the
        reconciler's next pass finds the row without a task and settles it.
        """
        with contextlib.suppress(Exception):
            await self._runtime.stop(enclave_id, handle)
        try:
            record = await self._store.get(enclave_id)
            if record is None:
                return
            if handle and not record.runtime_handle:
                record = _with_handle(record, handle)
            await self.fail(record, reason, message)
        except Unavailable as exc:
            self._interrupted[enclave_id] = (
                _DATABASE_LOST if isinstance(exc, DatabaseUnavailable) else message
            )
            _log.warning(
                "enclave %s stopped (%s) but its failure could not be recorded (%s); "
                "the reconciler will settle it",
                enclave_id,
                reason,
                exc.reason,
            )


def _with_handle(record: EnclaveRecord, handle: str) -> EnclaveRecord:
    return dataclasses.replace(record, runtime_handle=handle)


async def measured_certificates(
    store: EnclaveStore, backend_id: str | None = None
) -> list[tuple[str, bytes]]:
    """(enclave id, certificate SHA-256) of every enclave whose certificate is in PCR 23.

    With replicas, each backend's TPM measures the enclaves it provisioned: only rows
    naming ``backend_id`` (None: SQLite's single backend, every row).
    """
    return [
        (r.id, r.certificate_sha256)
        for r in await store.in_phases(set(MEASURED))
        if r.certificate_sha256 and (backend_id is None or r.backend_id == backend_id)
    ]
