"""Who may call what: one table per server, keyed by full method name, deny by default."""

from __future__ import annotations

from licensing_common.rpc.policy import Access

__all__ = ["BACKEND_POLICY", "BACKEND_QUOTE_POLICY", "FRONTEND_POLICY", "Access"]


_OPS = {
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}

FRONTEND_POLICY: dict[str, Access] = {
    **dict.fromkeys(_OPS, Access.PUBLIC),
    "/licensing.v1.AuthService/SignUp": Access.PUBLIC,
    "/licensing.v1.AuthService/Login": Access.PUBLIC,
    "/licensing.v1.AuthService/RefreshToken": Access.PUBLIC,
    "/licensing.v1.AuthService/Logout": Access.USER,
    "/licensing.v1.AuthService/GetCurrentUser": Access.USER,
    "/licensing.v1.TrustService/GetTrustBundle": Access.PUBLIC,
    "/licensing.v1.EnclaveService/CreateEnclave": Access.USER,
    "/licensing.v1.EnclaveService/WatchEnclave": Access.USER,
    "/licensing.v1.EnclaveService/GetEnclave": Access.USER,
    "/licensing.v1.EnclaveService/ListEnclaves": Access.USER,
    "/licensing.v1.EnclaveService/DeleteEnclave": Access.USER,
    "/licensing.v1.AttestationService/GetAttestation": Access.USER,
    # Continuous attestation (issue 13).
    "/licensing.v1.EnclaveService/RequestAttestation": Access.USER,
}

BACKEND_POLICY: dict[str, Access] = {
    **dict.fromkeys(_OPS, Access.FRONTEND),
    "/licensing.control.v1.CertificateService/SignUserCertificate": Access.FRONTEND,
    "/licensing.control.v1.CertificateService/GetCaCertificates": Access.FRONTEND,
    "/licensing.control.v1.ProvisioningService/Provision": Access.FRONTEND,
    "/licensing.control.v1.ProvisioningService/Deprovision": Access.FRONTEND,
    "/licensing.control.v1.QuoteService/Quote": Access.FRONTEND,
    "/licensing.control.v1.QuoteService/QuoteBatch": Access.FRONTEND,
    # Continuous attestation (issue 13).
    "/licensing.control.v1.QuoteService/RequestReattestation": Access.FRONTEND,
    "/licensing.control.v1.ProvisioningService/RevokeSessions": Access.FRONTEND,
}

#: The backend's listener for the frontends of other pods (attestation with replicas):
#: quotes of the enclaves its TPM measured, nothing else of the control API.
BACKEND_QUOTE_POLICY: dict[str, Access] = {
    **dict.fromkeys(_OPS, Access.FRONTEND),
    "/licensing.control.v1.QuoteService/Quote": Access.FRONTEND,
    "/licensing.control.v1.QuoteService/QuoteBatch": Access.FRONTEND,
    # A client's own nonce goes to the backend whose rounds re-attest the enclave.
    "/licensing.control.v1.QuoteService/RequestReattestation": Access.FRONTEND,
}
