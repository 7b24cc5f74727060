"""``EnrollmentDesk``: where a pod's CSR meets the provisioning task that waits for it.

In Kubernetes the backend cannot hand a pod its certificate over a pipe: the pod
calls ``enclave.v1.EnrollmentService/Enroll`` with its CSR and its projected
ServiceAccount token. The desk admits the call only if the token's TokenReview names
exactly the pod the runtime made for that enclave (namespace, ServiceAccount, name
and uid), passes the CSR to the provisioning task, and answers with the certificate
once the task has had it issued and measured.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from licensing_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

__all__ = ["Enrollment", "EnrollmentDesk", "PodIdentity", "PodTokenReview"]

_log = logging.getLogger(__name__)

#: Enclave ids are UUIDs; anything else is refused before any API call.
_ENCLAVE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_CSR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Who a projected ServiceAccount token proves the caller is (from TokenReview)."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


class PodTokenReview(Protocol):
    async def review(self, token: str) -> PodIdentity:
        """The pod the token was issued to; ``Unauthenticated`` if it proves nothing
        (another audience, expired, not a pod-bound ServiceAccount token)."""
        ...


@dataclass(slots=True)
class Enrollment:
    """One enclave's pending enrolment: its pod, and the two halves of the exchange."""

    enclave_id: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    csr: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    certificate: asyncio.Future[tuple[str, list[str]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


#: Revoked sessions repeated to every stream that opens (their tokens are short-lived,
#: so the newest ones are what matters).
_REVOKED_KEPT = 10_000
#: Batches a slow stream may fall behind by; past that it is ended (and reconnects).
_STREAM_BACKLOG = 64


class EnrollmentDesk:
    def __init__(self, reviewer: PodTokenReview, *, answer_within: float = 120.0):
        self._reviewer = reviewer
        self._answer_within = answer_within
        self._pending: dict[str, Enrollment] = {}
        #: Open revocation streams, per enclave (a None in a queue ends that stream).
        self._streams: dict[str, set[asyncio.Queue[list[str] | None]]] = {}
        self._revoked: dict[str, None] = {}

    def revoke_sessions(self, session_ids: list[str]) -> int:
        """Send the revocations down every open stream; returns how many enclaves heard."""
        for session_id in session_ids:
            self._revoked[session_id] = None
        while len(self._revoked) > _REVOKED_KEPT:
            del self._revoked[next(iter(self._revoked))]
        told = set()
        for enclave_id, queues in self._streams.items():
            for queue in list(queues):
                if queue.qsize() >= _STREAM_BACKLOG:
                    queues.discard(queue)
                    queue.put_nowait(None)  # too far behind: it reconnects and gets them all
                    continue
                queue.put_nowait(list(session_ids))
                told.add(enclave_id)
        return len(told)

    async def revocations(self, enclave_id: str, token: str | None) -> AsyncIterator[list[str]]:
        """The stream of an enrolled enclave's pod: the recent revocations, then each new one.

        Admitted as ``enroll`` admits (the token of this very enclave's pod); it ends
        when the enclave is stopped (``forget``).
        """
        await self._admit(enclave_id, token)
        queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self._streams.setdefault(enclave_id, set()).add(queue)
        try:
            yield list(self._revoked)  # possibly empty: it says the stream is open
            while (batch := await queue.get()) is not None:
                yield batch
        finally:
            queues = self._streams.get(enclave_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._streams[enclave_id]

    async def _admit(self, enclave_id: str, token: str | None) -> Enrollment:
        """The enclave's enrolment, if ``token`` is its pod's; raises otherwise."""
        if not token:  # its size and form are the reviewer's to judge
            raise Unauthenticated(
                "ENROLLMENT_TOKEN_INVALID", "a projected ServiceAccount token is required"
            )
        if not _ENCLAVE_ID.fullmatch(enclave_id):
            raise InvalidArgument("ENCLAVE_ID_INVALID", "enclave_id must be an enclave's id")
        identity = await self._reviewer.review(token)
        enrollment = self._pending.get(enclave_id)
        if enrollment is None:
            raise NotFound("ENCLAVE_NOT_ENROLLING", "no enclave of that id waits for a certificate")
        if (
            identity.namespace != enrollment.namespace
            or identity.service_account != enrollment.service_account
            or identity.pod_name != enrollment.pod_name
            or identity.pod_uid != enrollment.pod_uid
        ):
            _log.warning(
                "enclave %s refused a pod: token of pod %s/%s (uid %s), expected %s (uid %s)",
                enclave_id,
                identity.namespace,
                identity.pod_name,
                identity.pod_uid,
                enrollment.pod_name,
                enrollment.pod_uid,
            )
            raise PermissionDenied(
                "ENROLLMENT_POD_MISMATCH", "the token is not the token of this enclave's pod"
            )
        return enrollment

    def expect(
        self, enclave_id: str, *, namespace: str, service_account: str, pod_name: str, pod_uid: str
    ) -> Enrollment:
        """From now on the pod ``pod_name``/``pod_uid`` (and only it) may enrol ``enclave_id``."""
        self.forget(enclave_id)
        enrollment = Enrollment(enclave_id, namespace, service_account, pod_name, pod_uid)
        self._pending[enclave_id] = enrollment
        return enrollment

    def readmit(
        self, enclave_id: str, *, namespace: str, service_account: str, pod_name: str, pod_uid: str
    ) -> None:
        """A pod that enrolled with an earlier backend run and outlived it: it may reopen its
        revocation stream (a second Enroll is ``ALREADY_ENROLLED``)."""
        if enclave_id in self._pending:
            return
        enrollment = Enrollment(enclave_id, namespace, service_account, pod_name, pod_uid)
        enrollment.csr.set_result("")
        self._pending[enclave_id] = enrollment

    def forget(self, enclave_id: str) -> None:
        """Provisioning stopped: a pod still waiting is told so, later calls find nothing."""
        for queue in self._streams.pop(enclave_id, set()):
            queue.put_nowait(None)  # its revocation stream ends with it
        enrollment = self._pending.pop(enclave_id, None)
        if enrollment is None:
            return
        for future in (enrollment.csr, enrollment.certificate):
            if not future.done():
                future.set_exception(
                    FailedPrecondition(
                        "ENROLLMENT_ABANDONED", "provisioning of this enclave has stopped"
                    )
                )
                future.exception()  # retrieved: nobody may be waiting

    def deliver(self, enclave_id: str, certificate_pem: str, ca_pems: list[str]) -> None:
        enrollment = self._pending.get(enclave_id)
        if enrollment is None or enrollment.certificate.done():
            raise FailedPrecondition(
                "ENROLLMENT_ABANDONED", "the enclave's pod no longer waits for its certificate"
            )
        enrollment.certificate.set_result((certificate_pem, ca_pems))

    async def enroll(
        self, enclave_id: str, token: str | None, csr_pem: str
    ) -> tuple[str, list[str]]:
        """The certificate for ``csr_pem``, once issued; see the module docstring."""
        if not token:  # its size and form are the reviewer's to judge
            raise Unauthenticated(
                "ENROLLMENT_TOKEN_INVALID", "a projected ServiceAccount token is required"
            )
        if not _ENCLAVE_ID.fullmatch(enclave_id):
            raise InvalidArgument("ENCLAVE_ID_INVALID", "enclave_id must be an enclave's id")
        if not csr_pem or len(csr_pem) > _MAX_CSR_BYTES:
            raise InvalidArgument("CSR_INVALID", "csr_pem must be a PEM CSR of at most 16 KiB")
        enrollment = await self._admit(enclave_id, token)
        if enrollment.csr.done():
            raise AlreadyExists("ALREADY_ENROLLED", "this enclave has already sent its CSR")
        enrollment.csr.set_result(csr_pem)
        try:
            async with asyncio.timeout(self._answer_within):
                return await asyncio.shield(enrollment.certificate)
        except TimeoutError as exc:
            raise FailedPrecondition(
                "ENROLLMENT_TIMEOUT", "the certificate was not issued in time"
            ) from exc

    async def close(self) -> None:
        for enclave_id in list(self._pending):
            self.forget(enclave_id)
