"""Every RPC in the contract has exactly one access rule, and no rule outlives its RPC."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import licensing.v1
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from licensing.control.v1 import control_pb2

from licensing_common.rpc.guard import AccessGuard
from licensing_server.api.policy import (
    BACKEND_POLICY,
    BACKEND_QUOTE_POLICY,
    FRONTEND_POLICY,
    Access,
)


def _public_api_modules() -> list[ModuleType]:
    """Every generated ``licensing.v1.*_pb2`` module, so a new proto file cannot be missed."""
    return [
        importlib.import_module(f"licensing.v1.{info.name}")
        for info in pkgutil.iter_modules(licensing.v1.__path__)
        if info.name.endswith("_pb2")
    ]


def _methods(*modules: ModuleType) -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


FRONTEND_METHODS = _methods(*_public_api_modules())
BACKEND_METHODS = _methods(control_pb2)
_REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
#: Health and reflection, served on every listener (reflection under v1 and v1alpha).
OPS_METHODS = _methods(health_pb2) | {
    f"/{package}.ServerReflection/{method.name}"
    for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha")
    for method in _REFLECTION.methods
}


def test_the_descriptors_are_what_the_servers_serve() -> None:
    # Guards the walk below: an empty walk would make every other test pass vacuously.
    assert "/licensing.v1.AuthService/Login" in FRONTEND_METHODS
    assert "/licensing.v1.EnclaveService/CreateEnclave" in FRONTEND_METHODS
    assert "/licensing.control.v1.CertificateService/SignUserCertificate" in BACKEND_METHODS
    assert "/grpc.health.v1.Health/Check" in OPS_METHODS
    assert "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in OPS_METHODS


@pytest.mark.parametrize("method", sorted(FRONTEND_METHODS | OPS_METHODS))
def test_every_frontend_method_has_an_access_rule(method: str) -> None:
    assert method in FRONTEND_POLICY


@pytest.mark.parametrize("method", sorted(BACKEND_METHODS | OPS_METHODS))
def test_every_backend_method_has_an_access_rule(method: str) -> None:
    assert method in BACKEND_POLICY


def test_the_frontend_table_has_no_stale_rules() -> None:
    assert set(FRONTEND_POLICY) - (FRONTEND_METHODS | OPS_METHODS) == set()


def test_the_backend_table_has_no_stale_rules() -> None:
    assert set(BACKEND_POLICY) - (BACKEND_METHODS | OPS_METHODS) == set()


def test_only_enrollment_and_discovery_are_public() -> None:
    public = {method for method, access in FRONTEND_POLICY.items() if access is Access.PUBLIC}

    assert public == OPS_METHODS | {
        "/licensing.v1.AuthService/SignUp",
        "/licensing.v1.AuthService/Login",
        "/licensing.v1.AuthService/RefreshToken",
        "/licensing.v1.TrustService/GetTrustBundle",
    }
    # Everything else on the public API needs a user certificate and a token bound to it.
    for method in FRONTEND_METHODS - public:
        assert FRONTEND_POLICY[method] is Access.USER, method


def test_the_internal_api_is_for_the_frontend_only() -> None:
    for method in BACKEND_METHODS:
        assert BACKEND_POLICY[method] is Access.FRONTEND, method
    for method in OPS_METHODS:
        assert BACKEND_POLICY[method] is Access.FRONTEND, method  # health and reflection too


def test_the_listener_for_other_pods_serves_quotes_to_frontends_and_nothing_else() -> None:
    """Other pods' frontends reach a backend's QuoteService; the rest stays pod-loopback."""
    quote_methods = {
        m for m in BACKEND_METHODS if m.startswith("/licensing.control.v1.QuoteService/")
    }
    # Quotes (one by one or batched), and a client's nonce for the measuring backend's
    # next re-attestation round.
    assert quote_methods == {
        "/licensing.control.v1.QuoteService/Quote",
        "/licensing.control.v1.QuoteService/QuoteBatch",
        "/licensing.control.v1.QuoteService/RequestReattestation",
    }
    assert set(BACKEND_QUOTE_POLICY) == quote_methods | OPS_METHODS
    for method, access in BACKEND_QUOTE_POLICY.items():
        assert access is Access.FRONTEND, method


# Deny by default ----------------------------------------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.trailing_metadata: Any = ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self.code, self.trailing_metadata = code, trailing_metadata
        raise _Aborted


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


async def test_a_method_missing_from_the_table_is_denied_before_it_runs() -> None:
    ran = []

    async def behavior(request: Any, context: Any) -> Any:
        ran.append(request)

    async def continuation(_: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behavior)

    guard = AccessGuard(FRONTEND_POLICY)
    details: Any = _CallDetails("/licensing.v1.AuthService/DeleteEveryone")
    handler: Any = await guard.intercept_service(continuation, details)
    context = _Context()
    with pytest.raises(_Aborted):
        await handler.unary_unary(object(), context)

    assert ran == []
    assert context.code == grpc.StatusCode.PERMISSION_DENIED
    for key, value in context.trailing_metadata:
        if key == "grpc-status-details-bin":
            info = error_details_pb2.ErrorInfo()
            assert status_pb2.Status.FromString(value).details[0].Unpack(info)
            assert info.reason == "METHOD_NOT_ALLOWED"
            break
    else:
        pytest.fail("no ErrorInfo in the trailers")
