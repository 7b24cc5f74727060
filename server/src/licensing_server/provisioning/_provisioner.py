"""The backend's provisioning loop: one task per enclave, every phase written before it is told."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from licensing_server.attestation import Attestor
from licensing_server.errors import DomainError, FailedPrecondition, NotFound
from licensing_server.pki import TRUST_DOMAIN, CertificateAuthority, parse_csr
from licensing_server.provisioning._events import EventBus, follow_events
from licensing_server.provisioning._probe import HealthProbe
from licensing_server.runtimes import EnclaveRuntime, RuntimeFailure, WorkloadSpec
from licensing_server.storage import EnclaveRecord, EnclaveStore, EventRecord, Phase

_log = logging.getLogger(__name__)

_TERMINAL = frozenset({Phase.ATTESTED, Phase.FAILED, Phase.DELETED})
#: Enclaves whose certificate is measured in PCR 23 (re-measured in a new log epoch).
MEASURED = frozenset({Phase.CERTIFICATE_ISSUED, Phase.READY, Phase.ATTESTING, Phase.ATTESTED})


def terminal_phases() -> frozenset[Phase]:
    """Where provisioning ends."""
    return _TERMINAL


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def enclave_server_name(enclave_id: str) -> str:
    return f"{enclave_id}.enclaves.{TRUST_DOMAIN}"


def enclave_identity(enclave_id: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/enclave/{enclave_id}"


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    token_issuer: str
    token_audience: str
    #: How long a workload may take to send its CSR, and to answer SERVING.
    start_timeout: float = 30.0
    ready_timeout: float = 15.0


class EnclaveProvisioner:
    def __init__(
        self,
        *,
        store: EnclaveStore,
        runtime: EnclaveRuntime,
        ca: CertificateAuthority,
        probe: HealthProbe,
        attestor: Attestor,
        settings: ProvisioningSettings,
        clock: Callable[[], dt.datetime] = _utcnow,
    ):
        self._store = store
        self._runtime = runtime
        self._ca = ca
        self._probe = probe
        self._attestor = attestor
        self._settings = settings
        self._clock = clock
        self._bus = EventBus()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # Commands -----------------------------------------------------------------
    async def start(self, enclave_id: str, owner_id: str, jwks_json: str) -> EnclaveRecord:
        """Begin provisioning an ACCEPTED enclave; repeating it is harmless."""
        record = await self._store.get(enclave_id)
        if record is None or record.owner_id != owner_id:
            raise NotFound("ENCLAVE_NOT_FOUND", "no such enclave")
        if record.phase is Phase.ACCEPTED and enclave_id not in self._tasks:
            if not jwks_json:
                raise FailedPrecondition("JWKS_REQUIRED", "the enclave needs the token keys")
            task = asyncio.create_task(self._provision(record, jwks_json))
            self._tasks[enclave_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(enclave_id, None))
        return record

    def is_provisioning(self, enclave_id: str) -> bool:
        return enclave_id in self._tasks

    def follow(self, enclave_id: str, after: int) -> AsyncIterator[EventRecord]:
        return self._follow(enclave_id, after)

    async def _follow(self, enclave_id: str, after: int) -> AsyncIterator[EventRecord]:
        with self._bus.subscribe(enclave_id, after) as wake:
            async for event in follow_events(
                self._store, enclave_id, after, _TERMINAL.__contains__, wake=wake
            ):
                yield event

    async def deprovision(self, enclave_id: str) -> None:
        """Stop the workload and remove every trace of the enclave; idempotent."""
        task = self._tasks.pop(enclave_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        record = await self._store.get(enclave_id)
        await self._runtime.stop(enclave_id, record.runtime_handle if record else "")
        await self._store.remove(enclave_id)
        self._attestor.forget(enclave_id)
        self._bus.close(enclave_id)
        _log.info("enclave %s deprovisioned", enclave_id)

    async def fail(self, record: EnclaveRecord, reason: str, message: str) -> None:
        """Stop whatever runs and record FAILED (used by the reconciler too)."""
        with contextlib.suppress(Exception):
            await self._runtime.stop(record.id, record.runtime_handle)
        try:
            event = await self._store.advance(
                record.id, Phase.FAILED, message, self._clock(), failure_reason=reason
            )
        except DomainError:
            return  # deleted or already failed meanwhile
        finally:
            self._attestor.forget(record.id)
        self._bus.publish(event)
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
    async def _advance(self, enclave_id: str, phase: Phase, message: str, **fields: object) -> None:
        event = await self._store.advance(
            enclave_id,
            phase,
            message,
            self._clock(),
            **fields,  # type: ignore[arg-type]
        )
        self._bus.publish(event)

    async def _provision(self, record: EnclaveRecord, jwks_json: str) -> None:
        enclave_id = record.id
        handle = ""
        settings = self._settings
        try:
            workload = await self._runtime.place(
                WorkloadSpec(
                    enclave_id=enclave_id,
                    owner_id=record.owner_id,
                    jwks_json=jwks_json,
                    ca_pem=self._ca.ca_certificates_pem[0],
                    token_issuer=settings.token_issuer,
                    token_audience=settings.token_audience,
                )
            )
            handle = workload.handle
            await self._advance(
                enclave_id, Phase.SCHEDULED, "workload placed", runtime_handle=handle
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
                enclave_id, Phase.RUNNING, "workload running; it made its key and CSR"
            )
            csr = parse_csr(csr_pem)
            name = enclave_server_name(enclave_id)
            issued = self._ca.issue(
                csr.public_key(),
                common_name=enclave_id,
                lifetime=max(record.expires_at - self._clock(), dt.timedelta(minutes=1)),
                dns_names=[name],
                ip_addresses=["127.0.0.1"],
                uris=[enclave_identity(enclave_id)],
                server=True,
            )
            await self._attestor.measure(enclave_id, issued.sha256)
            await self._advance(
                enclave_id,
                Phase.CERTIFICATE_ISSUED,
                f"certificate issued and measured into PCR 23, SHA-256 {issued.sha256.hex()}",
                certificate_pem=issued.pem,
                certificate_sha256=issued.sha256,
                tls_server_name=name,
            )
            endpoint = await asyncio.wait_for(
                workload.install_certificate(issued.pem, self._ca.ca_certificates_pem),
                settings.start_timeout,
            )
            await self._probe.wait_serving(endpoint, name, settings.ready_timeout)
            await self._advance(
                enclave_id,
                Phase.READY,
                f"serving on {endpoint}; health check SERVING over mTLS",
                endpoint=endpoint,
            )
            await self._advance(enclave_id, Phase.ATTESTING, "quoting the TPM over the certificate")
            nonce = record.nonce or secrets.token_bytes(32)
            attestation = await self._attestor.attest(issued.pem, issued.sha256, nonce)
            origin = "your nonce" if record.nonce else "a server-chosen nonce (none was given)"
            await self._advance(
                enclave_id,
                Phase.ATTESTED,
                f"TPM quote binds {origin} to the certificate",
                attestation=attestation.SerializeToString(),
            )
            _log.info("enclave %s ready on %s and attested", enclave_id, endpoint)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._runtime.stop(enclave_id, handle)
            raise
        except RuntimeFailure as exc:
            await self._fail_current(enclave_id, handle, exc.reason, exc.message)
        except DomainError as exc:
            if isinstance(exc, NotFound):  # deleted while provisioning
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
        record = await self._store.get(enclave_id)
        if record is None:
            with contextlib.suppress(Exception):
                await self._runtime.stop(enclave_id, handle)
            return
        if handle and not record.runtime_handle:
            record = _with_handle(record, handle)
        await self.fail(record, reason, message)


def _with_handle(record: EnclaveRecord, handle: str) -> EnclaveRecord:
    return dataclasses.replace(record, runtime_handle=handle)


async def measured_certificates(store: EnclaveStore) -> list[tuple[str, bytes]]:
    """(enclave id, certificate SHA-256) of every enclave whose certificate is in PCR 23."""
    return [
        (r.id, r.certificate_sha256)
        for r in await store.in_phases(set(MEASURED))
        if r.certificate_sha256
    ]
