"""Putting every enclave right: after a (crashed) restart, when provisioning is interrupted
while the backend runs (the database went away under it), and when licences expire.

With several backends against one database, the passes split in two (``Reconciler.run``):

- cluster-wide, the leader's alone (``leadership``): ``reap_expired``,
  ``release_abandoned``, ``settle_orphaned``, ``settle_orphaned_workloads``. They act on
  any row, whichever backend started it; two backends running them at once would delete,
  fail and stop the same enclaves twice, race each other's writes, and double the
  Kubernetes reads.
- this backend's own, every backend: ``settle_interrupted``. It settles what this
  backend's provisioner knows ended without a final phase (``interruption``), from its
  in-memory tasks: no other backend can see those, so the leader could not do it. And
  ``settle_lost_workloads``, of this backend's enclaves: a local runtime sees only the
  processes it started, and the backend whose TPM measured an enclave is the one whose
  PCR 23 must drop it.

With replicas (``backend_id`` set), each enclave row names the backend that started
it, and each backend heartbeats into ``backends``: ``reconcile_after_start`` and
``settle_interrupted`` touch only this backend's rows, and the leader's
``settle_orphaned`` fails the in-flight rows of a backend whose heartbeat is stale, and
driven rows that name no backend (from before the column). Without it (SQLite, one
backend) every row is this backend's, as it always was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from licensing_common.errors import Unavailable
from licensing_server.leadership import LeaderElection, while_leading
from licensing_server.provisioning._provisioner import EnclaveProvisioner
from licensing_server.runtimes import EnclaveRuntime
from licensing_server.storage import EnclaveRecord, EnclaveStore, Phase

_log = logging.getLogger(__name__)

_IN_FLIGHT = {
    Phase.ACCEPTED,
    Phase.SCHEDULED,
    Phase.RUNNING,
    Phase.CERTIFICATE_ISSUED,
    Phase.ATTESTING,
}
_SETTLED = {Phase.READY, Phase.ATTESTED}
#: Phases only a provisioning task moves on from: without one, the enclave is stuck there.
_DRIVEN = (_IN_FLIGHT - {Phase.ACCEPTED}) | {Phase.READY}
_NO_TASK = "provisioning was interrupted; create the enclave again"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Reconciler:
    def __init__(
        self,
        *,
        store: EnclaveStore,
        runtime: EnclaveRuntime,
        provisioner: EnclaveProvisioner,
        interval_seconds: float = 5.0,
        settle_interval_seconds: float = 5.0,
        abandoned_after: dt.timedelta = dt.timedelta(seconds=60),
        clock: Callable[[], dt.datetime] = _utcnow,
        backend_id: str | None = None,
        heartbeat_seconds: float = 5.0,
        stale_after: dt.timedelta = dt.timedelta(seconds=30),
    ):
        self._store = store
        self._backend_id = backend_id
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_after = stale_after
        self._runtime = runtime
        self._provisioner = provisioner
        self._interval = interval_seconds
        self._settle_interval = settle_interval_seconds
        self._abandoned_after = abandoned_after
        self._clock = clock

    async def reconcile_after_start(self) -> None:
        """No provisioning survives a backend restart: finish each one as FAILED.

        Enclaves that were ready stay so only if their workload still runs
        (a pod does; a local child process does not outlive its backend).
        """
        if self._backend_id is not None:
            await self._store.heartbeat(self._backend_id)
        keep: set[str] = set()
        for record in await self._store.in_phases(_IN_FLIGHT):
            if not self._owns(record):
                keep.add(record.id)  # another backend's (or the leader's) to settle
                continue
            await self._provisioner.fail(
                record,
                "PROVISIONING_INTERRUPTED",
                "provisioning was interrupted by a backend restart; create the enclave again",
            )
        for record in await self._store.in_phases(_SETTLED):
            if record.backend_id is not None and not self._owns(record):
                keep.add(record.id)  # another backend's workload: not this runtime's to judge
            elif await self._runtime.is_alive(record.id, record.runtime_handle):
                keep.add(record.id)
            else:
                await self._provisioner.fail(
                    record, "WORKLOAD_LOST", "the enclave's workload stopped running"
                )
        removed = await self._runtime.sweep(keep)
        if removed:
            _log.info("removed leftovers of %d enclaves", len(removed))

    async def settle_after_shutdown(self) -> None:
        """Record what a shutdown did to workloads that do not outlive this process."""
        for record in await self._store.in_phases(_IN_FLIGHT | _SETTLED):
            if not self._owns(record):
                continue  # another backend's: this shutdown stopped nothing of it
            if not await self._runtime.is_alive(record.id, record.runtime_handle):
                await self._provisioner.fail(
                    record, "BACKEND_SHUTDOWN", "the backend shut down and stopped the enclave"
                )

    async def reap_expired(self) -> int:
        expired = await self._store.expired(self._clock())
        for record in expired:
            _log.info("enclave %s expired", record.id)
            await self._provisioner.deprovision(record.id)
        return len(expired)

    async def release_abandoned(self) -> int:
        """Free the licences of ACCEPTED enclaves nobody asked us to provision.

        The frontend reserves a licence, then calls Provision; a caller that goes
        away in between (and never repeats its request id) would otherwise hold
        that licence until the enclave expires.
        """
        cutoff = self._clock() - self._abandoned_after
        released = 0
        for record in await self._store.in_phases({Phase.ACCEPTED}):
            if record.created_at <= cutoff and not self._provisioner.is_provisioning(record.id):
                await self._provisioner.fail(
                    record,
                    "PROVISIONING_ABANDONED",
                    "the request was abandoned before provisioning started; create it again",
                )
                released += 1
        return released

    async def settle_interrupted(self) -> int:
        """Provisioning that ended without a final phase while this backend runs: FAILED.

        Its task stopped the workload but could not record the failure (the database
        was down), or died of a bug (logged). Nothing else would ever move such an
        enclave on, and it holds a licence: stop whatever is left, record FAILED /
        ``PROVISIONING_INTERRUPTED``, tell its followers.
        """
        settled = 0
        for record in await self._store.in_phases(_DRIVEN | {Phase.ACCEPTED}):
            if self._provisioner.is_provisioning(record.id):
                continue
            cause = self._provisioner.interruption(record.id)
            if record.phase is Phase.ACCEPTED and cause is None:
                continue  # never started: release_abandoned's business
            if cause is None and not self._owns(record):
                continue  # another backend drives it; the leader settles it if that one died
            # Read after the check: a task that has ended wrote everything it will.
            current = await self._store.get(record.id)
            if current is None or current.phase not in _DRIVEN | {Phase.ACCEPTED}:
                continue
            if self._provisioner.is_provisioning(record.id):
                continue  # a repeated create took the ACCEPTED enclave up meanwhile
            await self._provisioner.fail(current, "PROVISIONING_INTERRUPTED", cause or _NO_TASK)
            settled += 1
        return settled

    def _owns(self, record: EnclaveRecord) -> bool:
        return self._backend_id is None or record.backend_id == self._backend_id

    async def heartbeat(self) -> int:
        """Tell the other backends' leader this one is alive (its rows are not orphans)."""
        if self._backend_id is not None:
            await self._store.heartbeat(self._backend_id)
        return 0

    async def settle_orphaned(self) -> int:
        """Driven rows (READY too) nobody alive drives: FAILED / ``PROVISIONING_INTERRUPTED``.

        Their backend's heartbeat is older than ``stale_after`` (it died and did not come
        back under the same id), or, driven past ACCEPTED, they name no backend (from
        before ownership was recorded). ACCEPTED rows no backend started stay
        ``release_abandoned``'s.
        """
        if self._backend_id is None:
            return 0  # one backend: settle_interrupted sees every row
        live = await self._store.live_backends(self._stale_after)
        live.add(self._backend_id)
        settled = 0
        for record in await self._store.in_phases(_DRIVEN | {Phase.ACCEPTED}):
            if record.backend_id in live or self._provisioner.is_provisioning(record.id):
                continue
            if record.backend_id is None and record.phase is Phase.ACCEPTED:
                continue
            current = await self._store.get(record.id)
            if current is None or current.phase not in _DRIVEN | {Phase.ACCEPTED}:
                continue
            if current.backend_id != record.backend_id:
                continue  # taken up meanwhile
            who = f"backend {record.backend_id}" if record.backend_id else "its backend"
            await self._provisioner.fail(
                current,
                "PROVISIONING_INTERRUPTED",
                f"provisioning was interrupted: {who} stopped; create the enclave again",
            )
            settled += 1
        return settled

    async def settle_lost_workloads(self) -> int:
        """This backend's ATTESTED enclaves whose workload stopped (crashed, killed):
        FAILED / ``WORKLOAD_LOST``.

        Nothing else notices while the backend runs: the row would hold its licence, and
        its certificate stay in the measured set, until the enclave expired.
        """
        return await self._settle_lost(self._owns)

    async def settle_orphaned_workloads(self) -> int:
        """``settle_lost_workloads`` for the enclaves of backends that are gone (the leader's)."""
        if self._backend_id is None:
            return 0  # one backend: settle_lost_workloads sees every row
        live = await self._store.live_backends(self._stale_after)
        live.add(self._backend_id)
        return await self._settle_lost(lambda record: record.backend_id not in live)

    async def _settle_lost(self, mine: Callable[[EnclaveRecord], bool]) -> int:
        lost = 0
        for record in await self._store.in_phases({Phase.ATTESTED}):
            if not mine(record):
                continue
            if self._provisioner.is_provisioning(record.id) or await self._runtime.is_alive(
                record.id, record.runtime_handle
            ):
                continue
            current = await self._store.get(record.id)  # deleted meanwhile: nothing to do
            if current is None or current.phase is not Phase.ATTESTED:
                continue
            await self._provisioner.fail(
                current, "WORKLOAD_LOST", "the enclave's workload stopped running"
            )
            lost += 1
        return lost

    async def run(self, election: LeaderElection | None = None) -> None:
        """Each step on its period; a failed step is logged and tried again next period.

        The cluster-wide steps run only while ``election`` leads (None: always), and stop
        the moment it no longer does; ``settle_interrupted`` runs on every backend.
        """

        async def cluster_wide() -> None:
            await asyncio.gather(
                self._every(self._interval, self.reap_expired, self.release_abandoned),
                self._every(
                    self._settle_interval, self.settle_orphaned_workloads, self.settle_orphaned
                ),
            )

        leader_only = cluster_wide() if election is None else while_leading(election, cluster_wide)
        await asyncio.gather(
            leader_only,
            self._every(
                self._settle_interval,
                self.settle_interrupted,
                self.settle_lost_workloads,
                self._provisioner.forget_settled_elsewhere,
            ),
            self._every(self._heartbeat_seconds, self.heartbeat),
        )

    async def _every(self, seconds: float, *steps: Callable[[], Awaitable[int]]) -> None:
        while True:
            for step in steps:
                try:
                    await step()
                except Unavailable as exc:  # the database (or TPM) is down: next period
                    _log.warning("reconciling (%s) postponed: %s", _name(step), exc.reason)
                except Exception:
                    _log.exception("reconciling (%s) failed; retrying", _name(step))
            await asyncio.sleep(seconds)


def _name(step: Callable[[], Awaitable[int]]) -> str:
    return getattr(step, "__name__", repr(step))
