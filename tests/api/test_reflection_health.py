"""Operators and tools discover every server through reflection and check its health."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

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


CONTROL_SYMBOLS = [
    "licensing.control.v1.ProvisioningService",
    "licensing.control.v1.CertificateService",
    "licensing.control.v1.QuoteService",
    "licensing.control.v1.SignUserCertificateRequest",
]
CONTROL_FILE = "licensing/control/v1/control.proto"
REFLECTION_METHODS = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
]


def _reflect(
    channel: grpc.Channel, method: str, requests: list[reflection_pb2.ServerReflectionRequest]
) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream; v1 and v1alpha share their messages on the wire."""
    rpc = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(rpc(iter(requests), timeout=30))


def _files(response: reflection_pb2.ServerReflectionResponse) -> set[str]:
    names = set()
    for raw in response.file_descriptor_response.file_descriptor_proto:
        names.add(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
    return names


def _backend_channel(stack: Stack) -> grpc.Channel:
    frontend = stack.data_dir / "frontend"
    return stack.backend_channel(
        (frontend / "internal-client-key.pem").read_bytes(),
        (frontend / "internal-client.pem").read_bytes(),
    )


@pytest.mark.parametrize("method", REFLECTION_METHODS)
def test_the_frontend_describes_nothing_of_the_control_api(stack: Stack, method: str) -> None:
    channel = stack.enroll_channel()
    asks = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in CONTROL_SYMBOLS
    ]
    asks.append(reflection_pb2.ServerReflectionRequest(file_by_filename=CONTROL_FILE))
    for answer in _reflect(channel, method, asks):
        assert answer.WhichOneof("message_response") == "error_response", answer
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

    # What it does describe, with every import, stays within what it serves.
    served = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=s)
        for s in sorted(FRONTEND_SERVICES)
    ]
    # The error details it sends are described too, so grpcurl can print them.
    served.append(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.ErrorInfo")
    )
    files = set().union(*(_files(a) for a in _reflect(channel, method, served)))
    assert {"licensing/v1/enclave.proto", "google/rpc/error_details.proto"} <= files
    assert not [f for f in files if f.startswith("licensing/control/")], files


@pytest.mark.parametrize("method", REFLECTION_METHODS)
def test_the_backend_still_describes_the_control_api(stack: Stack, method: str) -> None:
    asks = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in CONTROL_SYMBOLS
    ]
    for answer in _reflect(_backend_channel(stack), method, asks):
        assert CONTROL_FILE in _files(answer), answer


@pytest.mark.parametrize("listener", ["enrollment", "api"])
def test_grpcurl_cannot_describe_a_control_service_on_the_frontend(
    stack: Stack, grpcurl: str, listener: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    *flags, address = _listeners(stack, tmp_path_factory)[listener]
    for symbol in CONTROL_SYMBOLS:
        described = run_grpcurl(grpcurl, *flags, address, "describe", symbol)
        assert described.returncode != 0, described.stdout
        assert "not found" in described.stderr.lower(), described.stderr
