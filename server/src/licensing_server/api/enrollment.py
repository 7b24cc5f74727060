"""Servicer of ``enclave.v1.EnrollmentService``: enclave pods trade their CSR for a certificate.

Served on its own TLS listener (the pods have no client certificate yet), which
NetworkPolicy opens to enclave pods only; the caller proves which pod it is with its
projected ServiceAccount token, checked by the ``EnrollmentDesk``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from enclave.v1 import enrollment_pb2, enrollment_pb2_grpc

from licensing_common.rpc.guard import bearer_token
from licensing_common.rpc.policy import Access
from licensing_server.runtimes import EnrollmentDesk

__all__ = ["ENROLLMENT_POLICY", "ENROLLMENT_SERVICE", "EnrollmentServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

ENROLLMENT_SERVICE = "enclave.v1.EnrollmentService"
ENROLLMENT_POLICY: dict[str, Access] = {
    "/grpc.health.v1.Health/Check": Access.PUBLIC,
    "/grpc.health.v1.Health/Watch": Access.PUBLIC,
    f"/{ENROLLMENT_SERVICE}/Enroll": Access.PUBLIC,
    # The pod's token is checked by the desk, as for Enroll (issue 13).
    f"/{ENROLLMENT_SERVICE}/WatchRevocations": Access.PUBLIC,
}


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, desk: EnrollmentDesk):
        self._desk = desk

    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: Context
    ) -> enrollment_pb2.EnrollResponse:
        token = bearer_token(context.invocation_metadata())
        certificate_pem, ca_pems = await self._desk.enroll(
            request.enclave_id, token, request.csr_pem
        )
        return enrollment_pb2.EnrollResponse(
            certificate_pem=certificate_pem, ca_certificates_pem=ca_pems
        )

    async def WatchRevocations(
        self, request: enrollment_pb2.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[enrollment_pb2.WatchRevocationsResponse]:
        """The pod's channel for logouts: its enclave refuses those sessions' tokens."""
        token = bearer_token(context.invocation_metadata())
        async for session_ids in self._desk.revocations(request.enclave_id, token):
            yield enrollment_pb2.WatchRevocationsResponse(session_ids=session_ids)
