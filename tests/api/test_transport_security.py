"""Which listener accepts which connection, and the internal API only for the frontend."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography import x509
from licensing.control.v1 import control_pb2, control_pb2_grpc
from licensing.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
    trust_pb2,
    trust_pb2_grpc,
)

from tests.support import PASSWORD, Stack, error_reason, make_csr, new_key


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), error_reason(caught.value)


def _frontend_internal_identity(stack: Stack) -> tuple[bytes, bytes]:
    frontend = stack.data_dir / "frontend"
    return (
        (frontend / "internal-client-key.pem").read_bytes(),
        (frontend / "internal-client.pem").read_bytes(),
    )


def _trust_bundle(channel: grpc.Channel) -> Callable[[], Any]:
    stub: Any = trust_pb2_grpc.TrustServiceStub(channel)
    return lambda: stub.GetTrustBundle(trust_pb2.GetTrustBundleRequest(), timeout=10)


# Plaintext and missing client certificates ---------------------------------------------


@pytest.mark.parametrize("listener", ["enroll", "api", "backend"])
def test_plaintext_is_refused_on_every_listener(stack: Stack, listener: str) -> None:
    address = getattr(stack, f"{listener}_addr")
    channel = grpc.insecure_channel(address)
    try:
        assert _refusal(_trust_bundle(channel))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()


def test_a_plaintext_sign_up_creates_no_account(stack: Stack) -> None:
    # The password would cross the network in the clear: it must never get as far as a row.
    before = stack.row_counts()
    channel = grpc.insecure_channel(stack.enroll_addr)
    stub: Any = auth_pb2_grpc.AuthServiceStub(channel)
    try:
        code, _ = _refusal(
            lambda: stub.SignUp(
                auth_pb2.SignUpRequest(username=f"clear-{uuid.uuid4().hex[:8]}", password=PASSWORD),
                timeout=10,
            )
        )
    finally:
        channel.close()

    assert code == grpc.StatusCode.UNAVAILABLE
    assert stack.row_counts() == before


def test_the_enrollment_listener_serves_public_methods_over_tls(stack: Stack) -> None:
    # The control for the refusals below: TLS without a certificate works here.
    assert _trust_bundle(stack.enroll_channel())().jwks_json


def test_get_current_user_on_the_enrollment_listener_needs_a_client_certificate(
    stack: Stack,
) -> None:
    stub: Any = auth_pb2_grpc.AuthServiceStub(stack.enroll_channel())
    before = stack.row_counts()

    assert _refusal(lambda: stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CLIENT_CERTIFICATE_REQUIRED",
    )
    assert stack.row_counts() == before


def test_the_api_listener_refuses_a_tls_handshake_without_a_client_certificate(
    stack: Stack,
) -> None:
    # Even a public method fails: the handshake itself is refused, before any RPC.
    code, reason = _refusal(_trust_bundle(stack.api_channel()))

    assert code == grpc.StatusCode.UNAVAILABLE
    assert reason is None  # no application answer: nothing past the handshake ran


def test_the_backend_refuses_a_tls_handshake_without_a_client_certificate(stack: Stack) -> None:
    stub: Any = control_pb2_grpc.CertificateServiceStub(stack.backend_channel(None, None))

    code, _ = _refusal(
        lambda: stub.GetCaCertificates(control_pb2.GetCaCertificatesRequest(), timeout=10)
    )

    assert code == grpc.StatusCode.UNAVAILABLE


# The internal API -----------------------------------------------------------------------


def _sign_request() -> Any:
    return control_pb2.SignUserCertificateRequest(
        user_id=str(uuid.uuid4()), username="mallory", csr_pem=make_csr(new_key())
    )


def test_a_user_certificate_cannot_call_the_internal_api(stack: Stack) -> None:
    mallory = stack.new_user()
    stub: Any = control_pb2_grpc.CertificateServiceStub(
        stack.backend_channel(mallory.key_pem, mallory.cert_pem)
    )
    before = stack.row_counts()

    # Minting herself a certificate for somebody else's account is refused ...
    assert _refusal(lambda: stub.SignUserCertificate(_sign_request(), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "INTERNAL_API_ONLY",
    )
    # ... and so is every other internal method.
    assert _refusal(
        lambda: stub.GetCaCertificates(control_pb2.GetCaCertificatesRequest(), timeout=10)
    ) == (grpc.StatusCode.PERMISSION_DENIED, "INTERNAL_API_ONLY")
    assert stack.row_counts() == before


def test_the_frontends_internal_certificate_can_call_the_internal_api(stack: Stack) -> None:
    stub: Any = control_pb2_grpc.CertificateServiceStub(
        stack.backend_channel(*_frontend_internal_identity(stack))
    )
    request = _sign_request()

    reply = stub.SignUserCertificate(request, timeout=10)

    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://licensing.internal/user/{request.user_id}"
    ]


def test_the_frontends_internal_certificate_is_no_user_on_the_public_api(stack: Stack) -> None:
    channel = stack.api_channel(*_frontend_internal_identity(stack))
    stub: Any = auth_pb2_grpc.AuthServiceStub(channel)

    assert _refusal(lambda: stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "USER_CERTIFICATE_REQUIRED",
    )


# User methods: the caller is checked before anything runs ---------------------------------


def _unary(stub_class: Any, method: str, request: Any) -> Callable[[grpc.Channel, Any], Any]:
    return lambda channel, metadata: getattr(stub_class(channel), method)(
        request, metadata=metadata, timeout=10
    )


def _streaming(stub_class: Any, method: str, request: Any) -> Callable[[grpc.Channel, Any], Any]:
    return lambda channel, metadata: list(
        getattr(stub_class(channel), method)(request, metadata=metadata, timeout=10)
    )


NONCE = b"n" * 32
USER_METHODS = {
    "GetEnclave": _unary(
        enclave_pb2_grpc.EnclaveServiceStub,
        "GetEnclave",
        enclave_pb2.GetEnclaveRequest(enclave_id=str(uuid.uuid4())),
    ),
    "ListEnclaves": _unary(
        enclave_pb2_grpc.EnclaveServiceStub, "ListEnclaves", enclave_pb2.ListEnclavesRequest()
    ),
    "DeleteEnclave": _unary(
        enclave_pb2_grpc.EnclaveServiceStub,
        "DeleteEnclave",
        enclave_pb2.DeleteEnclaveRequest(enclave_id=str(uuid.uuid4())),
    ),
    "CreateEnclave": _streaming(
        enclave_pb2_grpc.EnclaveServiceStub,
        "CreateEnclave",
        enclave_pb2.CreateEnclaveRequest(request_id="r1", nonce=NONCE),
    ),
    "WatchEnclave": _streaming(
        enclave_pb2_grpc.EnclaveServiceStub,
        "WatchEnclave",
        enclave_pb2.WatchEnclaveRequest(enclave_id=str(uuid.uuid4())),
    ),
    "GetAttestation": _unary(
        attestation_pb2_grpc.AttestationServiceStub,
        "GetAttestation",
        attestation_pb2.GetAttestationRequest(enclave_id=str(uuid.uuid4()), nonce=NONCE),
    ),
}


@pytest.mark.parametrize("method", sorted(USER_METHODS))
def test_a_user_method_without_a_token_is_refused_before_it_runs(stack: Stack, method: str) -> None:
    # Nobody learns anything about the method (or creates anything) without a valid token.
    alice = stack.new_user()
    before = stack.row_counts()

    assert _refusal(lambda: USER_METHODS[method](stack.user_channel(alice), ())) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_REQUIRED",
    )
    assert stack.row_counts() == before


# The contract is fully served: attestation answers, and says why when it cannot ------------


def test_attesting_an_unknown_enclave_is_not_found(stack: Stack) -> None:
    alice = stack.new_user()
    before = stack.row_counts()
    stub = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(alice))
    request = attestation_pb2.GetAttestationRequest(enclave_id=str(uuid.uuid4()), nonce=NONCE)
    assert _refusal(lambda: stub.GetAttestation(request, metadata=alice.bearer, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "ENCLAVE_NOT_FOUND",
    )
    assert stack.row_counts() == before


def test_the_frontend_asking_the_backend_to_quote_an_unknown_enclave_is_not_found(
    stack: Stack,
) -> None:
    stub: Any = control_pb2_grpc.QuoteServiceStub(
        stack.backend_channel(*_frontend_internal_identity(stack))
    )
    request = control_pb2.QuoteRequest(enclave_id=str(uuid.uuid4()), nonce=NONCE)
    assert _refusal(lambda: stub.Quote(request, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND,
        "ENCLAVE_NOT_FOUND",
    )


def test_a_user_certificate_cannot_even_probe_the_backend(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    mallory = stack.new_user()
    health = health_pb2_grpc.HealthStub(stack.backend_channel(mallory.key_pem, mallory.cert_pem))
    assert _refusal(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "INTERNAL_API_ONLY",
    )
