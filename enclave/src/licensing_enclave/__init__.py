"""The enclave workload: one per user request, serving enclave.v1.WorkloadService over mTLS.

Started by the backend's runtime with ``python -m licensing_enclave``; the stdio handshake
(``_bootstrap``), or in a Kubernetes pod the call to enclave.v1.EnrollmentService
(``_enroll``), gets its key certified without the key ever leaving the process.
"""

from licensing_enclave._access import ENCLAVE_POLICY, WORKLOAD_SERVICE
from licensing_enclave._bootstrap import StartupError, obtain_certificate
from licensing_enclave._keys import EnclaveKey
from licensing_enclave._stdio import ParentStdin, ProtocolOut

__all__ = [
    "ENCLAVE_POLICY",
    "WORKLOAD_SERVICE",
    "EnclaveKey",
    "ParentStdin",
    "ProtocolOut",
    "StartupError",
    "obtain_certificate",
]
