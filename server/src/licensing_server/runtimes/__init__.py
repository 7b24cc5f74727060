"""Enclave runtimes: where an enclave's workload runs (a local process, a Kubernetes pod).

``EnclaveRuntime`` is the contract; ``licensing_server.catalog`` resolves the configured
runtime (``local``, ``kubernetes``) and, for the local runtime, the launcher
(``exec``, ``fork-server``).
"""

from licensing_server.runtimes._enrollment import (
    Enrollment,
    EnrollmentDesk,
    PodIdentity,
    PodTokenReview,
)
from licensing_server.runtimes._forkserver import ForkServer, start_time
from licensing_server.runtimes._launcher import (
    DEFAULT_COMMAND,
    EnclaveLauncher,
    EnclaveProcess,
    ExecLauncher,
)
from licensing_server.runtimes._local import LocalHandle, LocalProcessRuntime, LocalWorkload
from licensing_server.runtimes._protocol import (
    EnclaveRuntime,
    RuntimeFailure,
    SessionRevoker,
    Workload,
    WorkloadNames,
    WorkloadSpec,
    enclave_server_name,
)

__all__ = [
    "DEFAULT_COMMAND",
    "EnclaveLauncher",
    "EnclaveProcess",
    "EnclaveRuntime",
    "Enrollment",
    "EnrollmentDesk",
    "ExecLauncher",
    "ForkServer",
    "LocalHandle",
    "LocalProcessRuntime",
    "LocalWorkload",
    "PodIdentity",
    "PodTokenReview",
    "RuntimeFailure",
    "SessionRevoker",
    "Workload",
    "WorkloadNames",
    "WorkloadSpec",
    "enclave_server_name",
    "start_time",
]
