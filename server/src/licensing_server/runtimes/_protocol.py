"""The contract every enclave runtime implements.

The provisioner drives the phases and owns the database; a runtime only places,
talks to and removes workloads. Every method raises ``RuntimeFailure`` (with a
stable reason) for anything that goes wrong with the workload itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class RuntimeFailure(Exception):
    """The workload could not be placed, started or reached."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


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
