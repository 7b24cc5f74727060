"""Leader election on Kubernetes: a ``coordination.k8s.io/v1`` Lease in the backend's namespace.

The rules are client-go's: whoever holds the Lease renews ``renewTime`` every third of
``leaseDurationSeconds``; a candidate takes it over only after it has seen the Lease
unchanged for a whole duration by its own clock (never by comparing ``renewTime`` with
it: the clocks of two nodes differ), and every write carries the ``resourceVersion`` it
read, so of two candidates writing at once the apiserver accepts one (409 for the other).
A holder that could not renew for a duration, counted from before its last successful
renewal was sent, steps down by itself: by then another candidate may lead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client import CoordinationV1Api
from kubernetes.client.exceptions import ApiException

from licensing_common.errors import DomainError
from licensing_server.kube import KubeApi
from licensing_server.leadership._protocol import ElectionState, Leadership, candidate_identity
from licensing_server.observability import LeaderMetrics

__all__ = ["LeaseElection"]

_log = logging.getLogger(__name__)
_NOT_FOUND_OR_CONFLICT = frozenset({404, 409})


def _micro_time(moment: dt.datetime) -> str:
    """A MicroTime as the apiserver parses it (RFC 3339 with exactly six decimals)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class _Observed:
    """The Lease as last read, and when (this process's monotonic clock) it last changed."""

    holder: str
    resource_version: str
    changed_at: float


class LeaseElection(ElectionState):
    """Leads while it holds the Lease ``name`` in ``namespace`` and has renewed it in time."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str = "licensing-backend-leader",
        lease_seconds: float = 15.0,
        release_on_stop: bool = True,
        metrics: LeaderMetrics | None = None,
        identity: str = "",
    ):
        self._api = api
        self._namespace = namespace
        self._name = name
        self._duration = lease_seconds
        self._renew_every = lease_seconds / 3
        self._release_on_stop = release_on_stop
        self._state = Leadership(
            identity or candidate_identity(), f"Lease {namespace}/{name}", metrics
        )
        self._observed: _Observed | None = None
        #: Monotonic time by which this holder must have renewed, or step down.
        self._deadline = 0.0

    def _coordination(self) -> CoordinationV1Api:
        return CoordinationV1Api(self._api.client)

    async def run(self) -> None:
        """Campaign until cancelled; then step down and (``release_on_stop``) hand the
        Lease back, so that the next candidate need not wait out its duration."""
        try:
            while True:
                await self._round()
                if self.is_leader:
                    pause = min(self._renew_every, max(0.0, self._deadline - time.monotonic()))
                else:
                    pause = self._renew_every
                await asyncio.sleep(pause)
        finally:
            was_leader = self.is_leader
            self._state.lost("the backend is stopping")
            if was_leader and self._release_on_stop:
                await asyncio.shield(self._release())

    async def _round(self) -> None:
        started = time.monotonic()
        budget = (self._deadline - started) if self.is_leader else self._duration
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
            # lands as the call completes, and a stopping candidate would campaign on.
            async with asyncio.timeout(max(0.05, budget)):
                won = await self._try_acquire_or_renew()
        except (TimeoutError, DomainError) as exc:
            won = False
            _log.debug("leader election: %s", exc)
        except Exception:  # a bug (an unexpected answer): logged; the deadline still holds
            won = False
            _log.exception("leader election: renewing the Lease failed")
        if won:
            self._deadline = started + self._duration
            self._state.gained()
        elif self.is_leader and time.monotonic() >= self._deadline:
            self._state.lost("the Lease could not be renewed within its duration")
        elif self.is_leader and self._observed and self._observed.holder != self.identity:
            self._state.lost(f"the Lease is held by {self._observed.holder}")

    async def _try_acquire_or_renew(self) -> bool:
        api = self._coordination()
        now = dt.datetime.now(dt.UTC)
        timeout = min(self._api.request_timeout, self._duration)
        found = await self._api.call(
            "get leases",
            api.read_namespaced_lease,
            self._name,
            self._namespace,
            accept=_NOT_FOUND_OR_CONFLICT,
            _request_timeout=timeout,
        )
        if isinstance(found, ApiException):
            body = self._body(now, acquired=now, transitions=0)
            created = await self._api.call(
                "create leases",
                api.create_namespaced_lease,
                self._namespace,
                body,
                accept=_NOT_FOUND_OR_CONFLICT,
                _request_timeout=timeout,
            )
            return not isinstance(created, ApiException)
        spec = found.spec
        holder = (spec.holder_identity or "") if spec else ""
        version = str(found.metadata.resource_version)
        if self._observed is None or self._observed.resource_version != version:
            self._observed = _Observed(holder, version, time.monotonic())
        if holder == self.identity:
            acquired = spec.acquire_time or now
            body = self._body(now, acquired=acquired, transitions=spec.lease_transitions or 0)
        else:
            held_for = (spec.lease_duration_seconds or 0) if spec else 0
            if holder and time.monotonic() < self._observed.changed_at + held_for:
                return False  # another leader, not yet expired by our clock
            transitions = ((spec.lease_transitions or 0) + 1) if spec else 0
            body = self._body(now, acquired=now, transitions=transitions)
        body["metadata"]["resourceVersion"] = version  # one of two writers gets a 409
        replaced = await self._api.call(
            "update leases",
            api.replace_namespaced_lease,
            self._name,
            self._namespace,
            body,
            accept=_NOT_FOUND_OR_CONFLICT,
            _request_timeout=timeout,
        )
        if isinstance(replaced, ApiException):
            return False
        self._observed = _Observed(
            self.identity, str(replaced.metadata.resource_version), time.monotonic()
        )
        return True

    def _body(self, now: dt.datetime, *, acquired: dt.datetime, transitions: int) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self._duration)),
                "acquireTime": _micro_time(acquired),
                "renewTime": _micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    async def _release(self) -> None:
        """Give the Lease back (holder empty, as client-go does); a failure costs the next
        leader one lease duration, nothing more."""
        api = self._coordination()
        try:
            async with asyncio.timeout(self._renew_every):
                found = await self._api.call(
                    "get leases",
                    api.read_namespaced_lease,
                    self._name,
                    self._namespace,
                    accept=_NOT_FOUND_OR_CONFLICT,
                )
            spec = None if isinstance(found, ApiException) else found.spec
            if spec is None or spec.holder_identity != self.identity:
                return
            body = self._body(
                dt.datetime.now(dt.UTC),
                acquired=spec.acquire_time or dt.datetime.now(dt.UTC),
                transitions=spec.lease_transitions or 0,
            )
            body["spec"]["holderIdentity"] = ""
            body["spec"]["leaseDurationSeconds"] = 1
            body["metadata"]["resourceVersion"] = str(found.metadata.resource_version)
            async with asyncio.timeout(self._renew_every):
                await self._api.call(
                    "update leases",
                    api.replace_namespaced_lease,
                    self._name,
                    self._namespace,
                    body,
                    accept=_NOT_FOUND_OR_CONFLICT,
                )
            _log.info("released the Lease %s/%s", self._namespace, self._name)
        except (TimeoutError, DomainError) as exc:
            _log.warning("could not release the Lease %s/%s: %s", self._namespace, self._name, exc)
