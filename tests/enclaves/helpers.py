"""Helpers for the enclave tests: an owner's view of EnclaveService and of their enclaves."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from enclave.v1 import workload_pb2_grpc
from licensing.v1 import attestation_pb2, enclave_pb2, enclave_pb2_grpc

from licensing_client.attestation import VerificationReport, verify_attestation
from tests.support import LoggedIn, Stack, error_reason

#: Long enough for a Python enclave to start on a loaded two-core machine.
CREATE_TIMEOUT = 90.0
CALL_TIMEOUT = 30.0

Phase = enclave_pb2.Phase
PROVISIONING_PHASES = [
    enclave_pb2.PHASE_ACCEPTED,
    enclave_pb2.PHASE_SCHEDULED,
    enclave_pb2.PHASE_RUNNING,
    enclave_pb2.PHASE_CERTIFICATE_ISSUED,
    enclave_pb2.PHASE_READY,
    enclave_pb2.PHASE_ATTESTING,
    enclave_pb2.PHASE_ATTESTED,
]
#: Which events carry the enclave (READY and the final one) and which the attestation.
CARRIES_ENCLAVE = [False, False, False, False, True, False, True]
CARRIES_ATTESTATION = [False, False, False, False, False, False, True]
PROVISIONING_PHASE_NAMES = [enclave_pb2.Phase.Name(p) for p in PROVISIONING_PHASES]


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def new_nonce() -> bytes:
    return os.urandom(32)


def phase_names(events: list[Any]) -> list[str]:
    return [enclave_pb2.Phase.Name(e.phase) for e in events]


@dataclass
class Owner:
    """A logged-in user with their own API channel; remembers nothing it did not create."""

    stack: Stack
    user: LoggedIn
    stub: enclave_pb2_grpc.EnclaveServiceStub
    _workload_channels: list[grpc.Channel] = field(default_factory=list)

    @classmethod
    def of(cls, stack: Stack, user: LoggedIn | None = None) -> Owner:
        user = user or stack.new_user()
        return cls(stack, user, enclave_pb2_grpc.EnclaveServiceStub(stack.user_channel(user)))

    @property
    def bearer(self) -> tuple[tuple[str, str]]:
        return self.user.bearer

    # EnclaveService -------------------------------------------------------------
    def create_stream(
        self, request_id: str | None = None, nonce: bytes | None = None
    ) -> grpc.CallIterator[enclave_pb2.CreateEnclaveResponse]:
        request = enclave_pb2.CreateEnclaveRequest(
            request_id=new_request_id() if request_id is None else request_id,
            nonce=new_nonce() if nonce is None else nonce,
        )
        return self.stub.CreateEnclave(request, metadata=self.bearer, timeout=CREATE_TIMEOUT)

    def create(
        self, request_id: str | None = None, nonce: bytes | None = None
    ) -> list[enclave_pb2.CreateEnclaveResponse]:
        """Every event of a CreateEnclave call (raises grpc.RpcError on refusal)."""
        return list(self.create_stream(request_id, nonce))

    def create_attested(self, request_id: str | None = None) -> enclave_pb2.Enclave:
        """A new enclave, provisioned to ATTESTED over a nonce of ours that its quote binds."""
        nonce = new_nonce()
        events = self.create(request_id, nonce)
        assert phase_names(events) == PROVISIONING_PHASE_NAMES, [e.message for e in events]
        self.verify(events[-1].enclave, events[-1].attestation, nonce)
        return events[-1].enclave

    def verify(
        self,
        enclave: enclave_pb2.Enclave,
        attestation: attestation_pb2.Attestation,
        nonce: bytes,
    ) -> VerificationReport:
        """Check the attestation as a client does (raises AttestationError if it fails)."""
        return verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=enclave.certificate_pem,
            trusted_ca_pem=[self.stack.ca_pem.decode()],
        )

    def get(self, enclave_id: str) -> enclave_pb2.Enclave:
        reply = self.stub.GetEnclave(
            enclave_pb2.GetEnclaveRequest(enclave_id=enclave_id),
            metadata=self.bearer,
            timeout=CALL_TIMEOUT,
        )
        return reply.enclave

    def list_page(
        self, page_size: int = 0, page_token: str = ""
    ) -> enclave_pb2.ListEnclavesResponse:
        reply: enclave_pb2.ListEnclavesResponse = self.stub.ListEnclaves(
            enclave_pb2.ListEnclavesRequest(page_size=page_size, page_token=page_token),
            metadata=self.bearer,
            timeout=CALL_TIMEOUT,
        )
        return reply

    def list_all(self) -> list[enclave_pb2.Enclave]:
        enclaves: list[enclave_pb2.Enclave] = []
        token = ""
        while True:
            page = self.list_page(100, token)
            enclaves.extend(page.enclaves)
            token = page.next_page_token
            if not token:
                return enclaves

    def watch(
        self, enclave_id: str, from_sequence: int = 0, timeout: float = CREATE_TIMEOUT
    ) -> grpc.CallIterator[enclave_pb2.WatchEnclaveResponse]:
        return self.stub.WatchEnclave(
            enclave_pb2.WatchEnclaveRequest(enclave_id=enclave_id, from_sequence=from_sequence),
            metadata=self.bearer,
            timeout=timeout,
        )

    def delete(self, enclave_id: str) -> None:
        self.stub.DeleteEnclave(
            enclave_pb2.DeleteEnclaveRequest(enclave_id=enclave_id),
            metadata=self.bearer,
            timeout=90,
        )

    def delete_all(self) -> list[str]:
        """Delete every enclave this owner has; returns their ids."""
        ids = [e.id for e in self.list_all()]
        for enclave_id in ids:
            with contextlib.suppress(grpc.RpcError):  # already gone (reaped, deleted)
                self.delete(enclave_id)
        return ids

    # The enclave itself ------------------------------------------------------------
    def workload(
        self, enclave: enclave_pb2.Enclave, as_user: LoggedIn | None = None
    ) -> workload_pb2_grpc.WorkloadServiceStub:
        """A stub for the enclave's WorkloadService, dialled with a user's certificate."""
        user = as_user or self.user
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.stack.ca_pem,
            private_key=user.key_pem,
            certificate_chain=user.cert_pem,
        )
        channel = grpc.secure_channel(
            enclave.endpoint,
            creds,
            options=[("grpc.ssl_target_name_override", enclave.tls_server_name)],
        )
        self._workload_channels.append(channel)
        return workload_pb2_grpc.WorkloadServiceStub(channel)

    def close(self) -> None:
        for channel in self._workload_channels:
            channel.close()


# Errors ------------------------------------------------------------------------------


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError ``call`` raises (streams: consume them inside ``call``)."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded but should have been refused")


def code_and_reason(error: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    return error.code(), error_reason(error)


# Processes, files, rows -----------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    """Pids (other than ours) whose command line contains ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def enclave_work_dir(stack: Stack, enclave_id: str) -> Path:
    return stack.data_dir / "backend" / "enclaves" / enclave_id


def assert_no_leftovers(stack: Stack, enclave_ids: list[str]) -> None:
    """No process, work directory or database row of these enclaves remains."""
    for enclave_id in enclave_ids:
        assert processes_mentioning(enclave_id) == [], f"enclave {enclave_id} still runs"
        assert not enclave_work_dir(stack, enclave_id).exists(), f"{enclave_id} left its dir"
    assert enclave_row_count(stack, ids=enclave_ids) == 0


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _engine(stack: Stack) -> sa.Engine:
    url = stack.database_url.replace("sqlite+aiosqlite://", "sqlite://")
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def enclave_row_count(
    stack: Stack, *, owner_id: str | None = None, ids: list[str] | None = None
) -> int:
    """Rows in ``enclaves`` (of one owner, or with these ids)."""
    query = "SELECT count(*) FROM enclaves WHERE 1=1"
    params: dict[str, Any] = {}
    if owner_id is not None:
        query += " AND owner_id = :owner"
        params["owner"] = owner_id
    statement = sa.text(query)
    if ids is not None:
        statement = sa.text(query + " AND id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)
        )
        params["ids"] = ids or [""]
    engine = _engine(stack)
    try:
        with engine.connect() as conn:
            return int(conn.execute(statement, params).scalar_one())
    finally:
        engine.dispose()


def all_enclave_rows(stack: Stack) -> tuple[int, int]:
    """(enclaves, enclave_events) rows in the whole database."""
    engine = _engine(stack)
    try:
        with engine.connect() as conn:
            enclaves = conn.execute(sa.text("SELECT count(*) FROM enclaves")).scalar_one()
            events = conn.execute(sa.text("SELECT count(*) FROM enclave_events")).scalar_one()
            return int(enclaves), int(events)
    finally:
        engine.dispose()


# grpcurl output -------------------------------------------------------------------------


def json_stream(text: str) -> list[Any]:
    """grpcurl prints one JSON document per streamed message."""
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return documents
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
