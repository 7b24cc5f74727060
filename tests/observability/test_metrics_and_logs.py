"""An operator scrapes both processes and reads their JSON logs while a user goes about it.

One stack with JSON logs: a user signs up, logs in, makes a call without a token and
creates an enclave; the frontend's and backend's ``/metrics`` show each call under its
method and status code, the bcrypt pool, the provisioning phases, the TPM and the quote
batches; the log lines those calls caused are JSON carrying the correlation id the
client sent, which also came back in the trailing metadata. A stack with the metrics
addresses off serves no ``/metrics`` at all.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from licensing.v1 import auth_pb2, auth_pb2_grpc, enclave_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.enclaves.helpers import Owner, new_nonce, new_request_id
from tests.support import PASSWORD, Stack, start_stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

AUTH = "licensing.v1.AuthService"
ENCLAVES = "licensing.v1.EnclaveService"
PROVISIONING = "licensing.control.v1.ProvisioningService"


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("observed")
    yield from start_stack("sqlite", tmp, None, LICENSING_LOG_FORMAT="json")


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def correlation_header(call: grpc.Call) -> str | None:
    found = dict(call.trailing_metadata()).get("x-correlation-id")
    return found if isinstance(found, str) else None


def log_entries(stack: Stack) -> list[dict[str, str]]:
    """The JSON objects among the stack's output lines (swtpm and enclaves write text)."""
    assert stack.log_path is not None
    entries = []
    for line in stack.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))  # a line that looks like JSON must be JSON
    return entries


def test_an_operator_sees_every_call_and_provisioning_in_metrics_and_logs(
    json_stack: Stack,
) -> None:
    stack = json_stack
    front_before = scrape(stack.frontend_metrics_port)
    back_before = scrape(stack.backend_metrics_port)

    # Sign up under a correlation id of the client's: it is answered back.
    sign_up_id = f"signup-{uuid.uuid4().hex}"
    username = f"user-{uuid.uuid4().hex[:12]}"
    auth = auth_pb2_grpc.AuthServiceStub(stack.enroll_channel())
    _, call = auth.SignUp.with_call(
        auth_pb2.SignUpRequest(username=username, password=PASSWORD),
        metadata=(("x-correlation-id", sign_up_id),),
    )
    assert correlation_header(call) == sign_up_id
    user = stack.log_in(username)

    # A call without its token is refused, and still counted, with its code.
    me = auth_pb2_grpc.AuthServiceStub(stack.user_channel(user))
    with pytest.raises(grpc.RpcError) as refused:
        me.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A call without an id of the client's gets one made up for it.
    assert correlation_header(refused.value)  # type: ignore[arg-type]

    # An enclave is created under another id, which the frontend passes to the backend.
    create_id = f"create-{uuid.uuid4().hex}"
    owner = Owner.of(stack, user)
    try:
        events = list(
            owner.stub.CreateEnclave(
                enclave_pb2.CreateEnclaveRequest(request_id=new_request_id(), nonce=new_nonce()),
                metadata=(*owner.bearer, ("x-request-id", create_id)),
                timeout=90,
            )
        )
        assert events[-1].enclave.id
        owner.delete_all()
    finally:
        owner.close()

    front = scrape(stack.frontend_metrics_port)
    back = scrape(stack.backend_metrics_port)
    requests = "licensing_rpc_requests_total"
    assert moved(front_before, front, requests, service=AUTH, method="SignUp", code="OK") == 1
    assert moved(front_before, front, requests, service=AUTH, method="Login", code="OK") == 1
    assert (
        moved(
            front_before,
            front,
            requests,
            service=AUTH,
            method="GetCurrentUser",
            code="UNAUTHENTICATED",
        )
        == 1
    )
    assert (
        moved(front_before, front, requests, service=ENCLAVES, method="CreateEnclave", code="OK")
        == 1
    )
    latency = "licensing_rpc_duration_seconds_count"
    assert moved(front_before, front, latency, service=AUTH, method="Login") == 1
    assert moved(front_before, front, latency, service=ENCLAVES, method="CreateEnclave") == 1
    # The whole stream is timed: at least as long as the backend took to provision.
    create_seconds = moved(
        front_before,
        front,
        "licensing_rpc_duration_seconds_sum",
        service=ENCLAVES,
        method="CreateEnclave",
    )
    # Sign-up and log-in each waited for a bcrypt thread once; none is in flight now.
    assert moved(front_before, front, "licensing_bcrypt_wait_seconds_count") == 2
    assert value(front, "licensing_bcrypt_queue_depth") == 0
    assert ("licensing_database_errors_total", frozenset()) in front
    assert value(front, "process_resident_memory_bytes") > 0

    # The backend: the provisioning stream, each phase once, the outcome, the TPM.
    assert (
        moved(back_before, back, requests, service=PROVISIONING, method="Provision", code="OK") == 1
    )
    for phase in ("SCHEDULED", "RUNNING", "CERTIFICATE_ISSUED", "READY", "ATTESTING", "ATTESTED"):
        assert (
            moved(back_before, back, "licensing_provisioning_phase_seconds_count", phase=phase) == 1
        ), phase
    phases_seconds = sum(
        moved(back_before, back, "licensing_provisioning_phase_seconds_sum", phase=phase)
        for phase in (
            "SCHEDULED",
            "RUNNING",
            "CERTIFICATE_ISSUED",
            "READY",
            "ATTESTING",
            "ATTESTED",
        )
    )
    assert 0 < phases_seconds <= create_seconds
    assert (
        moved(
            back_before,
            back,
            "licensing_provisioning_outcomes_total",
            outcome="ATTESTED",
            reason="",
        )
        == 1
    )
    assert (
        moved(
            back_before, back, "licensing_provisioning_outcomes_total", outcome="DELETED", reason=""
        )
        == 0
    )
    assert moved(back_before, back, "licensing_tpm_command_seconds_count", command="quote") >= 1
    assert (
        moved(back_before, back, "licensing_tpm_command_seconds_count", command="extend_pcr") >= 1
    )
    assert moved(back_before, back, "licensing_quote_batch_size_count") >= 1
    assert ("licensing_database_errors_total", frozenset()) in back
    # No label holds a user's or an enclave's identity.
    for name, labels in (*front, *back):
        for _, label_value in labels:
            assert user.user_id not in label_value, name
            assert username not in label_value, name
            assert events[-1].enclave.id not in label_value, name

    # The logs: JSON lines, the sign-up's on the frontend and the provisioning's on
    # the backend under the ids the client chose.
    entries = log_entries(stack)
    assert {e["process"] for e in entries} >= {"frontend", "backend"}
    for entry in entries:
        assert set(entry) >= {"time", "level", "logger", "message", "process"}, entry
    signed_up = [e for e in entries if e.get("correlation_id") == sign_up_id]
    assert ("frontend", f"user signed up: {user.user_id}") in [
        (e["process"], e["message"]) for e in signed_up
    ]
    created = [e for e in entries if e.get("correlation_id") == create_id]
    assert any(
        e["process"] == "backend" and "ready on" in e["message"] and "attested" in e["message"]
        for e in created
    ), created


def test_metrics_switched_off_are_not_served(tmp_path: Path) -> None:
    with contextlib.contextmanager(start_stack)(
        "sqlite",
        tmp_path,
        None,
        LICENSING_FRONTEND_METRICS_ADDR="off",
        LICENSING_BACKEND_METRICS_ADDR="off",
    ) as stack:
        stack.sign_up()  # the stack serves
        for port in (stack.frontend_metrics_port, stack.backend_metrics_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, port
