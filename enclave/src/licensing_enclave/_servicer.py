"""enclave.v1.WorkloadService: parse, call the store or the key, build replies.

Access is decided by the guard before any of this runs, and domain errors raised
here are turned into statuses by it too, so the methods stay straight-line.
"""

from __future__ import annotations

from typing import Any

import grpc
from enclave.v1 import workload_pb2, workload_pb2_grpc

from licensing_common.errors import InvalidArgument
from licensing_enclave._keys import EnclaveCertificate, EnclaveKey
from licensing_enclave._secrets import SecretStore

Context = grpc.aio.ServicerContext[Any, Any]

#: Sign takes at most this much data per call (the transport allows 4 MiB).
MAX_SIGN_BYTES = 1024 * 1024


class WorkloadServicer(workload_pb2_grpc.WorkloadServiceServicer):
    def __init__(
        self,
        *,
        enclave_id: str,
        owner: str,
        key: EnclaveKey,
        certificate: EnclaveCertificate,
        secrets: SecretStore,
    ):
        self._enclave_id = enclave_id
        self._owner = owner
        self._key = key
        self._certificate = certificate
        self._secrets = secrets

    async def GetIdentity(
        self, request: workload_pb2.GetIdentityRequest, context: Context
    ) -> workload_pb2.GetIdentityResponse:
        return workload_pb2.GetIdentityResponse(
            enclave_id=self._enclave_id,
            owner=self._owner,
            certificate_sha256=self._certificate.sha256,
            certificate_pem=self._certificate.pem,
        )

    async def PutSecret(
        self, request: workload_pb2.PutSecretRequest, context: Context
    ) -> workload_pb2.PutSecretResponse:
        self._secrets.put(request.name, request.value)
        return workload_pb2.PutSecretResponse()

    async def GetSecret(
        self, request: workload_pb2.GetSecretRequest, context: Context
    ) -> workload_pb2.GetSecretResponse:
        return workload_pb2.GetSecretResponse(value=self._secrets.get(request.name))

    async def ListSecrets(
        self, request: workload_pb2.ListSecretsRequest, context: Context
    ) -> workload_pb2.ListSecretsResponse:
        return workload_pb2.ListSecretsResponse(names=self._secrets.names())

    async def DeleteSecret(
        self, request: workload_pb2.DeleteSecretRequest, context: Context
    ) -> workload_pb2.DeleteSecretResponse:
        self._secrets.delete(request.name)
        return workload_pb2.DeleteSecretResponse()

    async def Sign(
        self, request: workload_pb2.SignRequest, context: Context
    ) -> workload_pb2.SignResponse:
        data = request.data
        if len(data) > MAX_SIGN_BYTES:
            raise InvalidArgument(
                "SIGN_DATA_TOO_LARGE",
                f"Sign takes at most {MAX_SIGN_BYTES} bytes",
                {"limit": str(MAX_SIGN_BYTES), "size": str(len(data))},
            )
        return workload_pb2.SignResponse(
            signature=self._key.sign(data), certificate_pem=self._certificate.pem
        )
