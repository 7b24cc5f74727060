"""grpcurl and buf curl, with the README's own command lines, against a running stack.

Every command is read from README.md's code blocks (tests/readme.py) and run in bash as
printed; only the addresses, `.licensing/` and the user's name are swapped for the test's.
A held enclave (tests/provisioning/streams.HeldEnclaves) stops provisioning at SCHEDULED,
so the tests can see that events arrive while a stream is still open.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2

from tests.api.test_reflection_health import BACKEND_SERVICES, FRONTEND_SERVICES
from tests.enclaves.helpers import PROVISIONING_PHASE_NAMES
from tests.provisioning.streams import HeldEnclaves
from tests.readme import Ran, Shell, commands, find, json_documents, section
from tests.support import Stack, start_stack

ROOT = Path(__file__).resolve().parents[2]
GRPCURL_SECTION = "Using it with grpcurl and openssl"
ENCLAVES_SECTION = "Enclaves"
BUF_SECTION = "The same with buf curl"
#: Long enough for an event that is coming to arrive; the hold keeps the next one away.
QUIET_SECONDS = 1.0


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> HeldEnclaves:
    return HeldEnclaves.write(tmp_path_factory.mktemp("held"), sys.executable, linger=0.5)


@pytest.fixture(scope="module")
def readme_stack(tmp_path_factory: pytest.TempPathFactory, held: HeldEnclaves) -> Iterator[Stack]:
    """A stack of its own (SQLite: the tools see the same API on either database)."""
    tmp = tmp_path_factory.mktemp("readme-stack")
    yield from start_stack("sqlite", tmp, None, LICENSING_ENCLAVE_COMMAND=str(held.command))


@pytest.fixture
def shell(readme_stack: Stack, grpcurl: str, tmp_path: Path) -> Iterator[Shell]:
    """A reader's terminal in a fresh directory, as a user of their own."""
    stack = readme_stack
    tools = f"{Path(grpcurl).parent}:{ROOT / '.venv' / 'bin'}"
    terminal = Shell(
        cwd=tmp_path,
        replacements={
            "127.0.0.1:8443": stack.enroll_addr,
            "127.0.0.1:9443": stack.api_addr,
            "127.0.0.1:8444": stack.backend_addr,
            ".licensing/": f"{stack.data_dir}/",
            ".venv/bin/": f"{ROOT / '.venv' / 'bin'}/",
            "alice": f"alice-{uuid.uuid4().hex[:8]}",
        },
        env={**os.environ, "PATH": f"{tools}:{os.environ.get('PATH', '')}"},
    )
    yield terminal
    terminal.close()


def _ok(ran: Ran) -> Ran:
    assert ran.returncode == 0, f"{ran.command}\n{ran.stdout}\n{ran.stderr}"
    return ran


def _all_succeed(ran: list[Ran], expected: int) -> None:
    for done in ran:
        assert done.returncode == 0, f"{done.command}\n{done.stdout}\n{done.stderr}"
    assert len(ran) == expected


def _by(ran: list[Ran], *needles: str) -> Ran:
    matching = [r for r in ran if all(n in r.command for n in needles)]
    assert len(matching) == 1, (needles, [r.command for r in matching])
    return matching[0]


def _log_in(shell: Shell) -> list[Ran]:
    """The grpcurl section, as a reader runs it first."""
    printed = commands(GRPCURL_SECTION)
    ran = shell.run_all(printed)
    _all_succeed(ran, len(printed))
    return ran


def _error_info(ran: Ran) -> error_details_pb2.ErrorInfo:
    """buf curl prints error details as a type and base64 bytes: decode the ErrorInfo."""
    details = json.loads(ran.stderr)["details"]  # errors go to stderr
    (detail,) = [d for d in details if d["type"] == "google.rpc.ErrorInfo"]
    raw = detail["value"].replace("-", "+").replace("_", "/")
    return error_details_pb2.ErrorInfo.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))


class LiveStream:
    """A streaming command's stdout, one JSON document at a time, as the tool prints it."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.documents: list[Any] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _take(self, timeout: float) -> bool:
        """One more line (False at the end of the output or after `timeout`)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return False
        if line is None:
            self._lines.put(None)
            return False
        self._text += line
        if line.rstrip("\n") == "}":  # both tools close a top-level document at column 0
            self.documents.extend(json_documents(self._text))
            self._text = ""
        return True

    def until_phase(self, phase: str, timeout: float = 30) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not any(d["phase"] == phase for d in self.documents):
            left = deadline - time.monotonic()
            assert left > 0, ("no event of this phase in time", phase, self.documents)
            assert self._take(left), (
                "the stream ended, or went quiet",
                phase,
                self.documents,
                self._text,
            )
        return self.documents

    def quiet_for(self, seconds: float) -> bool:
        """Nothing printed for `seconds` (the process still running)."""
        return not self._take(seconds) and self.proc.poll() is None

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self._take(max(0.0, deadline - time.monotonic())):
            pass
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert not self._text.strip(), self._text
        return code


def _wait_for_documents(path: Path, count: int, timeout: float = 10) -> None:
    """Until the file holds `count` whole JSON documents."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(json_documents(path.read_text())) >= count:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert time.monotonic() < deadline, f"{path} has fewer than {count} documents"
        time.sleep(0.05)


def _phases(documents: list[Any]) -> list[str]:
    return [d["phase"] for d in documents]


def _sequences(documents: list[Any]) -> list[int]:
    return [int(d["sequence"]) for d in documents]


# grpcurl ---------------------------------------------------------------------------------


def test_the_grpcurl_section_runs_as_printed(shell: Shell) -> None:
    ran = _log_in(shell)
    assert set(_by(ran, "8443", " list").stdout.split()) == FRONTEND_SERVICES
    described = _by(ran, "describe licensing.v1.EnclaveService").stdout
    assert "licensing.v1.EnclaveService is a service" in described
    assert "rpc CreateEnclave ( .licensing.v1.CreateEnclaveRequest )" in described
    assert _by(ran, "Health/Check").json() == {"status": "SERVING"}
    user = _by(ran, "AuthService/SignUp").json()
    login = json_documents((shell.cwd / "login.json").read_text())[0]
    assert login["user_id"] == user["user_id"]
    assert shell.path("alice.pem").read_text().strip() == login["client_certificate_pem"].strip()
    assert _by(ran, "GetCurrentUser").json()["user"]["id"] == user["user_id"]
    assert _by(ran, "RefreshToken").json()["access_token"]
    assert set(_by(ran, "internal-client.pem", " list").stdout.split()) == BACKEND_SERVICES


def test_grpcurl_prints_each_create_event_while_the_stream_is_open(
    shell: Shell, held: HeldEnclaves
) -> None:
    _log_in(shell)
    _ok(shell.run(find(ENCLAVES_SECTION, "TOKEN=")))
    with held.holding():
        stream = LiveStream(shell.start(find(ENCLAVES_SECTION, "CreateEnclave")))
        # The enclave is held at SCHEDULED: what came so far came live.
        seen = stream.until_phase("PHASE_SCHEDULED")
        assert _phases(seen) == ["PHASE_ACCEPTED", "PHASE_SCHEDULED"]
        assert stream.quiet_for(QUIET_SECONDS), "the stream ended, or went on, while held"
    assert stream.finish() == 0
    assert _phases(stream.documents) == PROVISIONING_PHASE_NAMES
    assert _sequences(stream.documents) == [1, 2, 3, 4, 5, 6, 7]
    # tee kept the same events for the commands that follow it in the README.
    assert json_documents((shell.cwd / "create.json").read_text()) == stream.documents


def test_the_enclave_section_runs_as_printed(shell: Shell) -> None:
    _log_in(shell)
    printed = commands(ENCLAVES_SECTION)
    ran = shell.run_all(printed)
    _all_succeed(ran, len(printed))

    created = _by(ran, "CreateEnclave").documents()
    assert _phases(created) == PROVISIONING_PHASE_NAMES
    enclave_id = created[0]["enclave_id"]
    # Resumed after sequence 5: only the later events, then the stream ends.
    watched = _by(ran, "WatchEnclave").documents()
    assert _phases(watched) == ["PHASE_ATTESTING", "PHASE_ATTESTED"]
    assert _sequences(watched) == [6, 7]
    assert {d["enclave_id"] for d in watched} == {enclave_id}

    assert _by(ran, "PutSecret").json() == {}
    signed = _by(ran, "WorkloadService/Sign").json()
    assert signed["signature"]
    assert signed["certificate_pem"] == created[-1]["enclave"]["certificate_pem"]
    assert _by(ran, "DeleteEnclave").json() == {}
    assert _by(ran, "AuthService/Logout").json() == {}

    # Logged out: the README's GetCurrentUser now fails, with grpcurl printing the reason.
    again = shell.run(find(GRPCURL_SECTION, "GetCurrentUser"))
    assert again.returncode != 0
    assert "Code: Unauthenticated" in again.stderr
    assert "SESSION_REVOKED" in again.stderr


# buf curl --------------------------------------------------------------------------------


def test_the_buf_curl_section_runs_as_printed_with_live_streams(
    shell: Shell, held: HeldEnclaves
) -> None:
    _log_in(shell)
    printed = commands(BUF_SECTION)
    create = find(BUF_SECTION, "CreateEnclave")
    watch = find(BUF_SECTION, "WatchEnclave")
    first = printed.index(create)
    before = shell.run_all(printed[:first])
    _all_succeed(before, first)
    assert set(_by(before, "--list-services").stdout.split()) == FRONTEND_SERVICES
    methods = _by(before, "--list-methods").stdout.split()
    assert "licensing.v1.EnclaveService/CreateEnclave" in methods  # through v1alpha
    health = _by(before, "Health/Check")
    assert health.json() == {"status": "SERVING"}
    # Without --protocol grpc, buf curl speaks Connect, which grpcio does not serve.
    connect = shell.run(health.command.replace(" --protocol grpc", ""))
    assert connect.returncode != 0, connect.stdout
    login = json_documents((shell.cwd / "login-buf.json").read_text())[0]
    assert login["accessToken"]  # lowerCamelCase, as the README says
    me = _by(before, "GetCurrentUser").json()["user"]
    assert me["id"] == login["userId"]

    with held.holding():
        created = LiveStream(shell.start(create))
        assert _phases(created.until_phase("PHASE_SCHEDULED")) == [
            "PHASE_ACCEPTED",
            "PHASE_SCHEDULED",
        ]
        created.proc.poll()
        assert created.proc.returncode is None
        # `ID=` reads what tee wrote so far (tee writes the terminal first, the file next);
        # the watcher resumes after sequence 5.
        _wait_for_documents(shell.path("create-buf.json"), 2)
        _ok(shell.run(find(BUF_SECTION, "ID=")))
        watched = LiveStream(shell.start(watch))
        assert watched.quiet_for(QUIET_SECONDS), "a watcher from 5 got an event before READY"
    assert created.finish() == 0
    assert watched.finish() == 0
    shell.remember()
    assert _phases(created.documents) == PROVISIONING_PHASE_NAMES
    assert _phases(watched.documents) == ["PHASE_ATTESTING", "PHASE_ATTESTED"]
    assert _sequences(watched.documents) == [6, 7]
    assert {d["enclaveId"] for d in watched.documents} == {created.documents[0]["enclaveId"]}

    after = shell.run_all(printed[printed.index(watch) + 1 :])
    _all_succeed(after, len(printed) - printed.index(watch) - 1)
    signed = _by(after, "WorkloadService/Sign").json()
    assert signed["certificatePem"] == created.documents[-1]["enclave"]["certificatePem"]
    assert _by(after, "DeleteEnclave").json() == {}
    assert _by(after, "AuthService/Logout").json() == {}

    # An error: JSON with the ErrorInfo undecoded, and the exit status is the code times 8.
    refused = shell.run(find(BUF_SECTION, "GetCurrentUser"))
    assert refused.returncode == 16 * 8, refused.stderr  # UNAUTHENTICATED
    assert json.loads(refused.stderr)["code"] == "unauthenticated"
    info = _error_info(refused)
    assert (info.domain, info.reason) == ("licensing", "SESSION_REVOKED")


def test_buf_curl_checks_the_enclave_certificate_against_servername(shell: Shell) -> None:
    _log_in(shell)
    printed = commands(BUF_SECTION)
    through_name = printed.index(find(BUF_SECTION, "NAME="))
    _all_succeed(shell.run_all(printed[: through_name + 1]), through_name + 1)
    sign = find(BUF_SECTION, "WorkloadService/Sign")
    wrong = shell.run(sign.replace("--servername $NAME", "--servername someone-else.example"))
    # Reflection is the first call, so the refusal reads as a missing service...
    assert wrong.returncode == 1
    assert 'failed to find service named "enclave.v1.WorkloadService"' in wrong.stderr
    # ... and -v says why.
    verbose = shell.run(sign.replace("--servername $NAME", "-v --servername someone-else.example"))
    assert "x509: certificate is valid for" in verbose.stderr, verbose.stderr
    assert "not someone-else.example" in verbose.stderr
    _ok(shell.run(sign))
    _ok(shell.run(find(BUF_SECTION, "DeleteEnclave")))


# The flow diagram --------------------------------------------------------------------------

_DIAGRAM_LINE = re.compile(
    r"sequenceDiagram|autonumber|(actor|participant) [A-Z] as [^;#]+"
    r"|[A-Z]--?>>[A-Z]: [^;#]+|Note over [A-Z](,[A-Z])?: [^;#]+"
)


def test_the_flow_diagram_uses_only_what_mermaid_sequence_diagrams_parse() -> None:
    """No renderer here: hold each line to the few sequenceDiagram forms GitHub renders.

    `;` ends a Mermaid statement and `#` starts an entity code, so neither may appear in text.
    """
    (diagram,) = re.findall(r"^```mermaid\n(.*?)^```$", section("The whole flow"), re.S | re.M)
    lines = [line.strip() for line in diagram.splitlines() if line.strip()]
    assert lines[0] == "sequenceDiagram"
    odd = [line for line in lines if not _DIAGRAM_LINE.fullmatch(line)]
    assert not odd, odd
    declared = set(re.findall(r"^\s*(?:actor|participant) ([A-Z]) as", diagram, re.M))
    used = set(re.findall(r"^\s*([A-Z])--?>>([A-Z]):", diagram, re.M))
    assert {p for pair in used for p in pair} <= declared
    # The story the README tells: every step of it is in the diagram.
    for step in (
        "SignUp",
        "Login",
        "CreateEnclave",
        "PHASE_ATTESTED",
        "GetAttestation",
        "verify_attestation",
        "PutSecret",
        "Sign",
    ):
        assert step in diagram
