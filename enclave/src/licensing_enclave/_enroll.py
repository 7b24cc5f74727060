"""Network enrolment (a Kubernetes pod): the CSR to enclave.v1.EnrollmentService over TLS.

There is no parent on stdio, so the enclave proves which pod it is with its projected
ServiceAccount token and calls the backend itself. The backend may not be reachable
yet when the pod starts: UNAVAILABLE is retried with capped, jittered exponential
backoff until the handshake timeout; every other status is a verdict and final.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
from enclave.v1 import enrollment_pb2, enrollment_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from licensing_enclave._bootstrap import HANDSHAKE_TIMEOUT, StartupError, accept_issued
from licensing_enclave._config import NetworkEnrollment
from licensing_enclave._keys import EnclaveCertificate, EnclaveKey

_log = logging.getLogger(__name__)

#: The first pause after UNAVAILABLE; each further one doubles, up to ``MAX_BACKOFF``.
INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 5.0
_STATUS_DETAILS = "grpc-status-details-bin"
#: Longest piece of the service's own error text copied into our log.
_MAX_LOGGED_DETAILS = 200


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ``google.rpc.ErrorInfo`` reason of a failed call, or ``"-"`` if it has none."""
    # grpc.aio gives an aio.Metadata (pairs when iterated); the stubs type it as grpc's tuples.
    trailing: Any = error.trailing_metadata()
    for key, value in trailing or ():
        if key != _STATUS_DETAILS or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except ValueError:  # protobuf's DecodeError
            return "-"
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason or "-"
    return "-"


class NetworkEnrolment:
    """Gets the certificate from the enrolment service; the enclave then lives until a signal."""

    def __init__(
        self,
        enrollment: NetworkEnrollment,
        ca_pem: bytes,
        *,
        within: float = HANDSHAKE_TIMEOUT,
    ):
        self._enrollment = enrollment
        self._ca_pem = ca_pem
        self._within = within
        self._jitter = random.Random()
        self._enclave_id = ""

    def _bearer(self) -> tuple[tuple[str, str]]:
        """Read now, not at start: the kubelet replaces the token before it expires."""
        path = self._enrollment.token_file
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read the token file {path}: {exc}") from exc
        if not token:
            raise StartupError(f"the token file {path} is empty")
        return (("authorization", f"Bearer {token}"),)

    async def _call(
        self, request: enrollment_pb2.EnrollRequest, seconds_left: float
    ) -> enrollment_pb2.EnrollResponse:
        """One attempt on a fresh channel, so each retry really connects again.

        ``seconds_left`` goes as the call's gRPC deadline, so the service sees it too.
        """
        metadata = self._bearer()
        credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
        # The target's host is the name the service's certificate is checked against.
        async with grpc.aio.secure_channel(self._enrollment.target, credentials) as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            response: enrollment_pb2.EnrollResponse = await stub.Enroll(
                request, timeout=seconds_left, metadata=metadata
            )
            return response

    async def obtain(self, key: EnclaveKey, enclave_id: str) -> EnclaveCertificate:
        target = self._enrollment.target
        self._enclave_id = enclave_id
        request = enrollment_pb2.EnrollRequest(
            enclave_id=enclave_id,
            csr_pem=key.csr_pem(
                enclave_id, dns_names=self._enrollment.dns_names, uris=self._enrollment.uris
            ),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._within
        backoff = INITIAL_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._call(request, max(deadline - loop.time(), 0.001))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise StartupError(
                        f"no certificate from {target} within {self._within:g}s"
                    ) from exc
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise StartupError(
                        f"enrolment with {target} refused: {code.name} {error_reason(exc)}"
                    ) from exc
                pause = backoff / 2 + self._jitter.uniform(0, backoff / 2)
                if loop.time() + pause >= deadline:
                    raise StartupError(
                        f"no certificate from {target} within {self._within:g}s "
                        f"({attempt} attempts, the last UNAVAILABLE)"
                    ) from exc
                details = (exc.details() or "")[:_MAX_LOGGED_DETAILS]
                _log.warning(
                    "enrolment with %s unavailable (attempt %d: %r); retrying in %.2fs",
                    target,
                    attempt,
                    details,
                    pause,
                )
                await asyncio.sleep(pause)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            certificate = accept_issued(
                key, response.certificate_pem, list(response.ca_certificates_pem)
            )
            _log.info("enclave %s enrolled with %s (attempt %d)", enclave_id, target, attempt)
            return certificate

    def serving(self, address: str, certificate: EnclaveCertificate) -> None:
        """Nobody reads stdout here: the readiness probe and the log say the enclave serves."""

    async def revoked_sessions(self) -> AsyncIterator[list[str]]:
        """Revoked sessions from the backend's WatchRevocations stream, kept open for good.

        A stream that breaks (the backend restarts, the network drops) is opened again
        with the same capped backoff as enrolment, forever: until it is back, logouts
        do not reach this enclave and their tokens work here until they expire.
        """
        request = enrollment_pb2.WatchRevocationsRequest(enclave_id=self._enclave_id)
        credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
        backoff = INITIAL_BACKOFF
        while True:
            try:
                metadata = self._bearer()
                async with grpc.aio.secure_channel(self._enrollment.target, credentials) as channel:
                    stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
                    stream = stub.WatchRevocations(request, metadata=metadata)
                    async for response in stream:
                        backoff = INITIAL_BACKOFF  # it answered: the next break starts over
                        yield list(response.session_ids)
                why = "the stream ended"
            except grpc.aio.AioRpcError as exc:
                why = f"{exc.code().name} {error_reason(exc)}"
            except StartupError as exc:  # the token file went away
                why = str(exc)
            pause = backoff / 2 + self._jitter.uniform(0, backoff / 2)
            _log.warning(
                "revocation stream from %s lost (%s); logouts wait until it is back, "
                "reconnecting in %.2fs",
                self._enrollment.target,
                why,
                pause,
            )
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def ended(self) -> str:
        """Never: without a parent to lose, only a signal (the kubelet's SIGTERM) stops it."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
