"""The contract every enclave runtime implements.

The provisioner drives the phases and owns the database; a runtime only places,
talks to and removes workloads. Every method raises ``RuntimeFailure`` (with a
stable reason) for anything that goes wrong with the workload itself.

What a runtime reports reaches users (event messages, ``failure_reason``), so it
is a stable reason and a fixed message per reason, never exception text: details
go to the log under a correlation id that the message names (``logged_failure``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from licensing_server.pki import TRUST_DOMAIN

if TYPE_CHECKING:
    from licensing_server.runtimes._enrollment import EnrollmentDesk

_CORRELATION_ID = re.compile(r"[0-9a-f]{16}")


class RuntimeFailure(Exception):
    """The workload could not be placed, started or reached."""

    def __init__(self, reason: str, message: str, *, correlation_id: str = ""):
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: Names the log record that holds the details ("" when there are none).
        self.correlation_id = correlation_id


def new_correlation_id() -> str:
    """As ``api.errors`` makes them for INTERNAL: short, random, only hex."""
    return uuid.uuid4().hex[:16]


def is_correlation_id(value: object) -> bool:
    """Whether ``value`` (from a less trusted process) is one of ours: it is then passed on."""
    return isinstance(value, str) and _CORRELATION_ID.fullmatch(value) is not None


def logged_failure(
    log: logging.Logger,
    reason: str,
    message: str,
    detail: str,
    *args: object,
    exc: BaseException | None = None,
    correlation_id: str = "",
) -> RuntimeFailure:
    """A failure that says ``message`` and the correlation id; ``detail % args`` (and
    ``exc``'s traceback) go to the log under that id, and to nobody else."""
    if not is_correlation_id(correlation_id):
        correlation_id = new_correlation_id()
    log.error(
        "%s (%s, correlation id %s): " + detail,
        message,
        reason,
        correlation_id,
        *args,
        exc_info=exc,
    )
    return RuntimeFailure(
        reason, f"{message} (correlation id {correlation_id})", correlation_id=correlation_id
    )


def enclave_server_name(enclave_id: str) -> str:
    """The name clients check the enclave's certificate against (and the probe dials)."""
    return f"{enclave_id}.enclaves.{TRUST_DOMAIN}"


@dataclass(frozen=True, slots=True)
class WorkloadNames:
    """The names a workload's certificate carries besides its SPIFFE id (the first DNS
    name is ``enclave_server_name``)."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    #: The name clients and the readiness probe send as SNI and check the certificate
    #: against, when not ``enclave_server_name``: an enclave reached through an SNI-routed
    #: TLS-passthrough Ingress must be asked for by its Ingress host, or the ingress
    #: controller has no route for the connection.
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    enclave_id: str
    owner_id: str
    #: The JWK Set whose keys sign the access tokens the enclave accepts.
    jwks_json: str
    #: The licensing CA the enclave trusts for client certificates.
    ca_pem: str
    token_issuer: str
    token_audience: str


class Workload(Protocol):
    """One placed workload, as seen while it is being provisioned."""

    @property
    def handle(self) -> str:
        """What ``EnclaveRuntime.stop`` needs to find it again, even after a restart."""
        ...

    @property
    def names(self) -> WorkloadNames:
        """What its certificate must name for the runtime's network to reach it."""
        ...

    async def certificate_request(self) -> str:
        """Wait until the workload runs and return the CSR it made (its key stays inside)."""
        ...

    async def install_certificate(self, certificate_pem: str, ca_pems: list[str]) -> str:
        """Hand the signed certificate over; return the ``host:port`` it then serves on."""
        ...


class EnclaveRuntime(Protocol):
    """Where enclaves run; one per backend, named by ``LICENSING_ENCLAVE_RUNTIME``.

    The composition root calls ``start`` once before anything else and ``close``
    once at the end, also when start-up fails half-way (so ``close`` works whether
    or not ``start`` ran or succeeded).
    """

    @property
    def enrollment_desk(self) -> EnrollmentDesk | None:
        """Where workloads that cannot be handed their certificate over a pipe send
        their CSR (``enclave.v1.EnrollmentService``); None when none do."""
        ...

    async def start(self) -> None:
        """Get ready to place workloads (start helpers, connect to an API)."""
        ...

    async def place(self, spec: WorkloadSpec) -> Workload:
        """Place the workload (SCHEDULED once this returns)."""
        ...

    async def stop(self, enclave_id: str, handle: str) -> None:
        """Stop and remove the workload and everything made for it; idempotent."""
        ...

    async def is_alive(self, enclave_id: str, handle: str) -> bool:
        """Whether the workload still runs (used after a restart)."""
        ...

    async def sweep(self, keep: set[str]) -> list[str]:
        """Remove leftovers of enclaves not in ``keep``; return what was removed."""
        ...

    async def close(self) -> None:
        """Stop every workload this runtime started and what ``start`` started (the
        process is shutting down); idempotent."""
        ...


@runtime_checkable
class SessionRevoker(Protocol):
    """A runtime with a channel to each of its enclaves (the local runtime's stdin pipe).

    ``revoke_sessions`` tells every enclave it runs, and every one it starts later
    (while such tokens can still be unexpired), to refuse the sessions' access
    tokens; it returns how many running enclaves were told. Enclaves never ask the
    database: this push is the only way a logout reaches them before ``exp``.
    """

    async def revoke_sessions(self, session_ids: Sequence[str]) -> int: ...
