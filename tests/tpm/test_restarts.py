"""Restarts of licensing-server never lock the TPM; a TPM in lockout is reported and cleared.

Every stop the process controls ends with TPM2_Shutdown (the supervisor stops the
backend before swtpm, even on Ctrl-C); a kill -9 of everything is survivable
because the attestation key is noDA. All on one data directory, as a user's is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from licensing.v1 import attestation_pb2, attestation_pb2_grpc
from tpm2_pytss.constants import TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from licensing_server.layout import DataLayout
from licensing_server.tpm import DEFAULT_AK_HANDLE, SwtpmSimulator
from tests.provisioning.streams import (
    RUNNING,
    Event,
    StreamWatch,
    assert_attested,
    wait_until,
)
from tests.support import LoggedIn, Stack, error_info, free_port, free_port_pair, pid_of
from tests.tpm.da import lockout_counter, old_attestation_key, provoke_lockout

CYCLES = 10
#: SIGTERM to the supervisor (systemd, docker stop), SIGINT to the whole process
#: group (what Ctrl-C of ``make run`` does), and SIGKILL of the whole group.
STOPS = ("sigterm", "sigint-group", "kill-9-group")


def _new_stack(tmp: Path) -> Stack:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return Stack(
        "sqlite",
        data_dir,
        f"sqlite+aiosqlite:///{data_dir / 'licensing.db'}",
        free_port(),
        free_port(),
        free_port(),
        new_session=True,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = _new_stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


def _tcti(stack: Stack) -> str:
    return f"swtpm:host=127.0.0.1,port={stack.swtpm_port}"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def _stop(stack: Stack, how: str) -> None:
    assert stack.proc is not None
    for channel in stack._channels:
        channel.close()
    stack._channels.clear()
    swtpm = pid_of(stack, "swtpm")
    if how == "sigterm":
        stack.proc.send_signal(signal.SIGTERM)
    elif how == "sigint-group":
        os.killpg(stack.proc.pid, signal.SIGINT)
    else:
        os.killpg(stack.proc.pid, signal.SIGKILL)
    stack.proc.wait(60)
    # swtpm runs in a group of its own: the supervisor stops it last, or it dies with it.
    wait_until("swtpm to end", lambda: _gone(swtpm), 30)


def _start(stack: Stack) -> None:
    """Start, then wait for the frontend to answer: an open port is not yet a started server."""
    stack.start()

    def answers() -> bool:
        channel = grpc.secure_channel(
            stack.enroll_addr, grpc.ssl_channel_credentials(root_certificates=stack.ca_pem)
        )
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
        finally:
            channel.close()
        return True

    wait_until("the frontend to answer", answers, 60, step=0.2)


def _create_attested(stack: Stack, user: LoggedIn) -> Event:
    create = StreamWatch.create(stack, user)
    events = create.wait_done(90)
    assert create.error is None, (events, create.error and error_info(create.error))
    return assert_attested(stack, events, create.nonce)


def _ak_public(event: Event) -> bytes:
    assert event.attestation is not None
    return bytes(event.attestation.ak_public)


def _no_da(ak_public: bytes) -> bool:
    public, _ = TPM2B_PUBLIC.unmarshal(ak_public)
    return bool(int(public.publicArea.objectAttributes) & int(TPMA_OBJECT.NODA))


def _lockout_counter_at_rest(stack: Stack) -> int:
    """Start the stack's TPM alone (a power-on: disorderly stops count now) and read it."""
    simulator = SwtpmSimulator(stack.data_dir / "tpm")
    simulator.start(free_port_pair())
    try:
        return lockout_counter(simulator.tcti)
    finally:
        simulator.stop()


def test_ten_restarts_of_every_kind_never_lock_the_tpm(stack: Stack) -> None:
    aks = set()
    for cycle in range(CYCLES):
        _start(stack)
        event = _create_attested(stack, stack.new_user())
        aks.add(_ak_public(event))
        _stop(stack, STOPS[cycle % len(STOPS)])
    assert len(aks) == 1, "the attestation key stays the same across restarts"
    assert _no_da(aks.pop())
    assert _lockout_counter_at_rest(stack) == 0
    # Every stop but kill -9 sent TPM2_Shutdown while swtpm still ran (Ctrl-C included).
    assert stack.log_path is not None
    log = stack.log_path.read_text()
    orderly = sum(STOPS[c % len(STOPS)] != "kill-9-group" for c in range(CYCLES))
    assert log.count("TPM shut down in order") == orderly
    assert "not shut down in order" not in log


def _backend_health(stack: Stack) -> int:
    layout = DataLayout(stack.data_dir)
    channel = stack.backend_channel(
        layout.frontend_client_key.read_bytes(), layout.frontend_client_cert.read_bytes()
    )
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    channel.close()
    return int(reply.status)


def _assert_locked_out(error: grpc.RpcError | None) -> None:
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    info = error_info(error)
    assert info is not None
    assert info.reason == "TPM_LOCKED_OUT", info
    # swtpm's defaults: 3 tries, one forgiven per 1000 s of uptime.
    assert info.metadata["recovery_seconds"] == "1000", info
    assert info.metadata["lockout_counter"] == "3", info


def _admin(stack: Stack, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "licensing_server.admin", "tpm", *args],
        env=stack.env(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_tpm_in_lockout_is_reported_and_the_operator_clears_it(stack: Stack) -> None:
    _start(stack)
    user = stack.new_user()
    attested = _create_attested(stack, user)
    assert _backend_health(stack) == health_pb2.HealthCheckResponse.SERVING

    provoke_lockout(_tcti(stack))  # real failed authorizations, against a DA-protected key
    assert _admin(stack, "status")["in_lockout"] is True
    wait_until(
        "the backend to report NOT_SERVING",
        lambda: _backend_health(stack) == health_pb2.HealthCheckResponse.NOT_SERVING,
        30,
    )
    create = StreamWatch.create(stack, user)
    create.wait_done(60)
    _assert_locked_out(create.error)
    stub = attestation_pb2_grpc.AttestationServiceStub(stack.user_channel(user))
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetAttestation(
            attestation_pb2.GetAttestationRequest(
                enclave_id=attested.enclave_id, nonce=os.urandom(32)
            ),
            metadata=user.bearer,
            timeout=30,
        )
    _assert_locked_out(raised.value)

    cleared = _admin(stack, "clear-lockout")
    assert cleared["in_lockout"] is False
    assert cleared["lockout_counter"] == 0
    wait_until(
        "the backend to report SERVING",
        lambda: _backend_health(stack) == health_pb2.HealthCheckResponse.SERVING,
        30,
    )
    _create_attested(stack, user)


def test_an_attestation_key_without_noda_is_replaced_and_recertified(stack: Stack) -> None:
    """A data directory from before AKs were noDA: the server replaces the key on start."""
    simulator = SwtpmSimulator.prepare(stack.data_dir / "tpm")
    simulator.start(stack.swtpm_port)
    try:
        old = old_attestation_key(simulator.tcti, DEFAULT_AK_HANDLE)
    finally:
        simulator.stop()
    assert not _no_da(old)

    _start(stack)
    event = _create_attested(stack, stack.new_user())  # verifies against the new certificate
    assert event.attestation is not None
    new = _ak_public(event)
    assert new != old
    assert _no_da(new)
    chain = DataLayout(stack.data_dir).ak_certificate.read_text()
    assert chain.strip() == event.attestation.ak_certificate_chain_pem[0].strip()


def test_a_create_right_after_start_waits_for_the_attestation_key(tmp_path: Path) -> None:
    """The TPM (an external swtpm here) answers only once the create is under way."""
    simulator = SwtpmSimulator.prepare(tmp_path / "external-tpm")
    ca_file = tmp_path / "manufacturer-ca.pem"
    ca_file.write_text(simulator.manufacturer_ca_pem())
    port = free_port_pair()
    stack = _new_stack(tmp_path)
    stack.extra_env.update(
        LICENSING_TPM_TCTI=f"swtpm:host=127.0.0.1,port={port}",
        LICENSING_TPM_MANUFACTURER_CA_FILE=str(ca_file),
        # Bounds the wait; generous, for a loaded machine (the AK is retried every 2 s).
        LICENSING_TPM_COMMAND_TIMEOUT_SECONDS="60",
    )
    try:
        _start(stack)
        create = StreamWatch.create(stack, stack.new_user())
        create.wait_for_phase(RUNNING, 60)  # the next step measures: it needs the AK
        simulator.start(port)
        events = create.wait_done(90)
        assert create.error is None, (events, create.error and error_info(create.error))
        assert_attested(stack, events, create.nonce)
    finally:
        stack.stop()
        simulator.stop()
