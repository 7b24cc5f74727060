"""What the user sees: text for people, JSON for programs, a live bar for provisioning.

Results go to stdout; notices (trust decisions, reconnects) and errors to stderr,
so ``--output json`` keeps stdout machine-readable (one JSON document per line).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, TextIO

import betterproto
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from licensing_client.attestation import AttestationError, Check, VerificationReport
from licensing_client.cli._store import format_time
from licensing_client.gen.licensing import v1

Json = None | bool | int | float | str | Sequence["Json"] | Mapping[str, "Json"]
Mode = Literal["text", "json"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Provisioning, in order: one step of the progress bar each, attestation last.
PROGRESS_PHASES = (
    v1.Phase.ACCEPTED,
    v1.Phase.SCHEDULED,
    v1.Phase.RUNNING,
    v1.Phase.CERTIFICATE_ISSUED,
    v1.Phase.READY,
    v1.Phase.ATTESTING,
    v1.Phase.ATTESTED,
)


class Event(Protocol):
    """CreateEnclaveResponse and WatchEnclaveResponse have the same shape."""

    enclave_id: str
    phase: v1.Phase
    message: str
    sequence: int
    time: dt.datetime
    enclave: v1.Enclave
    attestation: v1.Attestation


def phase_name(phase: v1.Phase | int) -> str:
    try:
        return v1.Phase(phase).name or str(int(phase))
    except ValueError:
        return f"PHASE_{int(phase)}"


def _time(moment: dt.datetime | None) -> str | None:
    if moment is None or moment == _EPOCH:
        return None
    return format_time(moment)


def user_json(user: v1.User) -> dict[str, Json]:
    return {"id": user.id, "username": user.username, "create_time": _time(user.create_time)}


def enclave_json(enclave: v1.Enclave) -> dict[str, Json]:
    return {
        "id": enclave.id,
        "owner": enclave.owner,
        "phase": phase_name(enclave.phase),
        "endpoint": enclave.endpoint,
        "tls_server_name": enclave.tls_server_name,
        "certificate_pem": enclave.certificate_pem,
        "create_time": _time(enclave.create_time),
        "expire_time": _time(enclave.expire_time),
        "request_id": enclave.request_id,
        "failure_reason": enclave.failure_reason or None,
    }


def has_enclave(event: Event) -> bool:
    return bool(event.enclave.id)


def has_attestation(event: Event) -> bool:
    """Only the ATTESTED event carries one (betterproto gives an empty message otherwise)."""
    return bool(event.attestation.quote)


def attestation_json(attestation: v1.Attestation) -> dict[str, Json]:
    """The attestation as protobuf JSON (bytes in base64), field names as in the proto."""
    snake: Any = betterproto.Casing.SNAKE  # an enum of functions, typed as neither
    data: dict[str, Json] = attestation.to_dict(casing=snake)
    return data


def event_json(event: Event) -> dict[str, Json]:
    return {
        "enclave_id": event.enclave_id,
        "phase": phase_name(event.phase),
        "message": event.message,
        "sequence": event.sequence,
        "time": _time(event.time),
        "enclave": enclave_json(event.enclave) if has_enclave(event) else None,
        "attestation": attestation_json(event.attestation) if has_attestation(event) else None,
    }


def enclave_text(enclave: v1.Enclave) -> str:
    rows = [
        ("enclave", enclave.id),
        ("phase", phase_name(enclave.phase)),
        ("endpoint", enclave.endpoint or "-"),
        ("tls server name", enclave.tls_server_name or "-"),
        ("created", _time(enclave.create_time) or "-"),
        ("expires", _time(enclave.expire_time) or "-"),
        ("request id", enclave.request_id or "-"),
    ]
    if enclave.failure_reason:
        rows.append(("failure", enclave.failure_reason))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def enclave_table(enclaves: Sequence[v1.Enclave]) -> str:
    if not enclaves:
        return "no enclaves"
    header = ("ID", "PHASE", "ENDPOINT", "CREATED")
    rows = [header] + [
        (e.id, phase_name(e.phase), e.endpoint or "-", _time(e.create_time) or "-")
        for e in enclaves
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def verification_json(
    report: VerificationReport, *, enclave_id: str, nonce: bytes, source: str
) -> dict[str, Json]:
    """A verified attestation: every check with its result, what was bound, where it came from."""
    return {
        "enclave_id": enclave_id,
        "verified": True,
        "nonce_hex": nonce.hex(),
        "certificate_sha256": report.enclave_certificate_sha256.hex(),
        "reset_count": report.reset_count,
        "pcr_values": {str(pcr): value.hex() for pcr, value in sorted(report.pcr_values.items())},
        "checks": [
            {"check": result.check.value, "result": "ok", "detail": result.detail}
            for result in report.checks
        ],
        "source": source,
    }


def verification_failure_json(
    error: AttestationError, *, enclave_id: str, nonce: bytes | None, source: str
) -> dict[str, Json]:
    return {
        "enclave_id": enclave_id,
        "verified": False,
        "nonce_hex": nonce.hex() if nonce is not None else None,
        "failed_check": error.check.value,
        "detail": error.detail,
        "source": source,
    }


def verification_text(report: VerificationReport, *, headline: str, nonce: bytes) -> str:
    """The headline, what the quote bound, then one line per check with its result."""
    width = max(len(check.value) for check in Check)
    lines = [
        headline,
        f"  nonce                {nonce.hex()}",
        f"  certificate SHA-256  {report.enclave_certificate_sha256.hex()}",
        f"  TPM reset count      {report.reset_count}",
        "  checks",
    ]
    lines += [f"    {result.check.value:<{width}}  ok  {result.detail}" for result in report.checks]
    return "\n".join(lines)


class Output:
    """Where and how results are written."""

    def __init__(self, mode: Mode, *, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.mode: Mode = mode
        self._stdout = stdout
        self._stderr = stderr

    # Looked up at each use: while the live bar runs, rich redirects sys.stdout/stderr
    # so that what is printed appears above the bar instead of tearing it.
    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    @property
    def json(self) -> bool:
        return self.mode == "json"

    def notice(self, text: str) -> None:
        """A remark for the person at the terminal, never part of the result."""
        print(text, file=self.stderr, flush=True)

    def text(self, text: str) -> None:
        """A line of the text result (text mode only)."""
        if not self.json:
            print(text, file=self.stdout, flush=True)

    def document(self, data: Json) -> None:
        """One JSON document on one line (JSON mode only)."""
        if self.json:
            print(json.dumps(data, sort_keys=False), file=self.stdout, flush=True)

    def result(self, text: str, data: Json) -> None:
        if self.json:
            self.document(data)
        else:
            self.text(text)

    def write_bytes(self, data: bytes) -> None:
        """Raw bytes (a secret's value) exactly as stored; a newline only for a terminal."""
        self.stdout.flush()
        self.stdout.buffer.write(data)
        if self.stdout.isatty() and not data.endswith(b"\n"):
            self.stdout.buffer.write(b"\n")
        self.stdout.buffer.flush()

    def events(self, title: str) -> EventView:
        return EventView(self, title)


class EventView:
    """Provisioning events as they arrive: a live bar in text mode, JSON lines otherwise.

    One step per phase from ACCEPTED to ATTESTED (READY, then ATTESTING and ATTESTED
    last); a FAILED or DELETED event leaves the bar where it was. Each event's message
    is printed above the bar, so the log stays when the bar goes (and is all there is
    when stdout is no terminal).
    """

    def __init__(self, output: Output, title: str) -> None:
        self._output = output
        self._title = title
        self._console = Console(file=output.stdout, highlight=False, soft_wrap=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> EventView:
        if not self._output.json:
            self._progress = Progress(
                SpinnerColumn(finished_text="*"),
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                f"{self._title}: waiting", total=len(PROGRESS_PHASES)
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, event: Event) -> None:
        if self._output.json:
            self._output.document({"event": event_json(event)})
            return
        assert self._progress is not None
        assert self._task is not None
        name = phase_name(event.phase)
        self._console.print(f"{event.sequence:>3}  {name:<18} {event.message}", markup=False)
        done = PROGRESS_PHASES.index(event.phase) + 1 if event.phase in PROGRESS_PHASES else None
        self._progress.update(self._task, description=f"{self._title}: {name}", completed=done)

    @property
    def progress(self) -> tuple[float, float] | None:
        """(steps completed, steps in all) of the live bar; None without one (JSON)."""
        if self._progress is None or self._task is None:
            return None
        task = self._progress.tasks[0]
        return task.completed, task.total or 0.0

    def remark(self, text: str) -> None:
        """A notice (reconnecting...) on stderr, above the live bar."""
        self._output.notice(text)
