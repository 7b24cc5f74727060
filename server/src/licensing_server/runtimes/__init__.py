"""Enclave runtimes: where an enclave's workload runs (a local process, a Kubernetes pod)."""

from licensing_server.runtimes._protocol import (
    EnclaveRuntime,
    RuntimeFailure,
    Workload,
    WorkloadSpec,
)

__all__ = ["EnclaveRuntime", "RuntimeFailure", "Workload", "WorkloadSpec"]
