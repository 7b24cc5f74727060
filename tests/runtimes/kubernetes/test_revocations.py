"""A logout reaches enclave pods too: over the stream each pod keeps to the backend.

The local runtime pushes revocations down each enclave's stdin; a pod has no pipe, so it
keeps ``enclave.v1.EnrollmentService/WatchRevocations`` open (authenticated with its
projected token) and the backend pushes the logout there.
"""

from __future__ import annotations

import time

import grpc
from enclave.v1 import workload_pb2
from licensing.v1 import auth_pb2, auth_pb2_grpc

from tests.enclaves.helpers import Owner, wait_until
from tests.kube.licensing_stack import KubeStack
from tests.support import error_reason


def test_after_logout_an_enclave_pod_refuses_the_token_within_a_second(
    kube_licensing: KubeStack,
) -> None:
    stack = kube_licensing.stack
    owner = Owner.of(stack)
    try:
        enclave = owner.create_attested()
        second = stack.log_in(owner.user.username)  # another login of the owner
        workload = owner.workload(enclave, as_user=second)
        request = workload_pb2.GetIdentityRequest()
        workload.GetIdentity(request, metadata=second.bearer, timeout=30)
        auth = auth_pb2_grpc.AuthServiceStub(stack.user_channel(second))
        auth.Logout(auth_pb2.LogoutRequest(), metadata=second.bearer, timeout=10)
        logged_out = time.monotonic()

        def refused() -> bool:
            try:
                workload.GetIdentity(request, metadata=second.bearer, timeout=5)
            except grpc.RpcError as exc:
                return error_reason(exc) == "SESSION_REVOKED"
            return False

        assert wait_until(refused, 5.0, 0.02)
        assert time.monotonic() - logged_out < 1.0
        # The owner's other session still works there.
        owner.workload(enclave).GetIdentity(request, metadata=owner.bearer, timeout=10)
    finally:
        owner.delete_all()
        owner.close()
