"""READY means observed: the enclave's own health check answers SERVING over mutual TLS."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from licensing_server.runtimes import RuntimeFailure


class HealthProbe:
    """Dials an enclave with the backend's client certificate, pinned to its CA and name."""

    def __init__(self, *, ca_pem: bytes, key_pem: bytes, cert_pem: bytes):
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )

    async def wait_serving(self, endpoint: str, server_name: str, deadline_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_seconds
        last_error = "no answer"
        async with grpc.aio.secure_channel(
            endpoint,
            self._credentials,
            options=[("grpc.ssl_target_name_override", server_name)],
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while loop.time() < deadline:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    last_error = f"health is {status}"
                except grpc.aio.AioRpcError as exc:
                    last_error = f"{exc.code().name}"
                await asyncio.sleep(0.1)
        raise RuntimeFailure(
            "ENCLAVE_NOT_READY", f"the enclave's health check did not answer SERVING ({last_error})"
        )
