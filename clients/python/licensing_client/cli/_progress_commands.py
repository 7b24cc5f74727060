"""enclave create | watch: provisioning events as they come, resumed when a stream drops."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client import (
    AttestationFailedError,
    Created,
    CreateEvent,
    EnclaveFailedError,
    FetchingAttestation,
    Progress,
    Reattested,
    Reconnecting,
)
from licensing_client._client import provisioning_failure
from licensing_client.cli._attest_commands import failure_document, show_created_verification
from licensing_client.cli._context import Context
from licensing_client.cli._enclave_commands import show_final
from licensing_client.cli._errors import CliError, UsageError, describe_transport, is_transient
from licensing_client.cli._output import EventView, Json, event_json, phase_name
from licensing_client.cli._session import Connection
from licensing_client.gen.licensing import v1

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE_BYTES = (16, 64)
#: Errors worth a retry with the same request id.
_RETRYABLE = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.INTERNAL, Status.UNKNOWN}


@dataclass
class Shown:
    """What a command has shown of a phase stream so far."""

    enclave_id: str = ""
    last: Progress | None = None
    enclave: v1.Enclave | None = None


async def show_events(
    events: AsyncIterator[CreateEvent],
    view: EventView,
    connection: Connection,
    shown: Shown,
    *,
    until: tuple[type, ...] = (),
) -> CreateEvent | None:
    """Show phase events and reconnects until the stream ends, or an event of a type in
    ``until`` comes, which is returned (unshown)."""
    async for event in events:
        if isinstance(event, Progress):
            shown.enclave_id = event.enclave_id or shown.enclave_id
            shown.last = event
            shown.enclave = event.enclave or shown.enclave
            view.show(event.event)
        elif isinstance(event, Reconnecting):
            exc = event.error
            why = (
                f"{exc.message or exc.status.name}"
                if isinstance(exc, GRPCError)
                else describe_transport(exc, connection.api_peer, "")
            )
            view.remark(
                f"stream interrupted ({why}); reconnecting from sequence "
                f"{event.from_sequence} in {event.delay:.1f}s "
                f"(attempt {event.attempt} of {event.attempts})"
            )
        if isinstance(event, until):
            return event
    return None


def _nonce(text: str | None) -> bytes:
    if text is None:
        return os.urandom(32)
    try:
        nonce = bytes.fromhex(text)
    except ValueError as exc:
        raise UsageError(f"--nonce-hex is not hexadecimal: {text!r}") from exc
    low, high = _NONCE_BYTES
    if not low <= len(nonce) <= high:
        raise UsageError(f"--nonce-hex must be {low} to {high} bytes, got {len(nonce)}")
    return nonce


def _with_retry_hint(exc: CliError, retry: str) -> CliError:
    """A failure the same request id may get past says how to retry it safely."""
    cause = exc.__cause__
    if (isinstance(cause, GRPCError) and cause.status in _RETRYABLE) or (
        cause is not None and not isinstance(cause, GRPCError) and is_transient(cause)
    ):
        hinted = CliError(f"{exc.sentence}; to retry safely: {retry}")
        hinted.__cause__ = cause
        return hinted
    return exc


async def create(ctx: Context, args: argparse.Namespace) -> int:
    request_id: str = args.request_id or str(uuid.uuid4())
    if not _REQUEST_ID.fullmatch(request_id):
        raise UsageError("--request-id must be 1 to 64 characters of [A-Za-z0-9._-]")
    nonce = _nonce(args.nonce_hex)
    retry = f"licensing enclave create --request-id {request_id}"
    async with ctx.session() as connection:
        notice = f"request id {request_id} (to retry without a second enclave: {retry})"
        if ctx.output.json:
            ctx.output.notice(notice)
        else:
            ctx.output.text(notice)
        events = connection.client.create_enclave(request_id, nonce, verify=args.verify)
        shown = Shown()
        try:
            with ctx.output.events("creating enclave") as view:
                try:
                    with connection.explain("creating the enclave"):
                        final = await show_events(
                            events, view, connection, shown, until=(FetchingAttestation, Created)
                        )
                except CliError as exc:
                    raise _with_retry_hint(exc, retry) from exc.__cause__
                except asyncio.CancelledError:  # Ctrl-C: provisioning goes on without us
                    follow = (
                        f"licensing enclave watch {shown.enclave_id}" if shown.enclave_id else retry
                    )
                    ctx.output.notice(f"interrupted; the enclave may still be created: {follow}")
                    raise
            if isinstance(final, FetchingAttestation):
                ctx.output.notice(f"attestation: {final.why}; fetching a fresh one over our nonce")
                with connection.explain(f"attesting enclave {final.enclave_id}"):
                    final = await anext(events)
        except EnclaveFailedError as exc:
            raise CliError(exc.message) from exc
        except AttestationFailedError as exc:
            ctx.output.document({"verification": failure_document(exc)})
            raise CliError(
                f"{exc.message}; do not trust it "
                f"(`licensing enclave delete {exc.enclave_id}` removes it)"
            ) from exc
        if not isinstance(final, Created):
            raise CliError("creating the enclave failed: the stream ended before the enclave")
        enclave = final.enclave
        if final.attestation is not None:
            show_created_verification(ctx, final.attestation, final.source)
        else:
            ctx.output.notice(
                f"attestation: NOT verified (--no-verify); nothing vouches for the certificate "
                f"of enclave {enclave.id} but the licensing API that reported it "
                f"(`licensing enclave attest {enclave.id}` verifies it)"
            )
    show_final(ctx, enclave, f"enclave {enclave.id} is {phase_name(enclave.phase)}")
    return 0


async def watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.from_sequence < 0:
        raise UsageError("--from-sequence must not be negative")
    if args.attestations:
        return await watch_attestations(ctx, args)
    if args.nonce_hex is not None or args.rounds:
        raise UsageError("--nonce-hex and --rounds need --attestations")
    shown = Shown(enclave_id=args.enclave_id)
    async with ctx.session() as connection:
        events = connection.client.watch_enclave(args.enclave_id, args.from_sequence)
        with (
            ctx.output.events(f"enclave {args.enclave_id}") as view,
            connection.explain(f"watching enclave {args.enclave_id}"),
        ):
            await show_events(events, view, connection, shown)
    failure = provisioning_failure(shown.last, shown.enclave, shown.enclave_id)
    if failure is not None:
        raise CliError(failure.message) from failure
    if shown.last is None:
        ctx.output.text(f"no events after sequence {args.from_sequence}")
        return 0
    if shown.last.phase == v1.Phase.DELETED:
        ctx.output.text(f"enclave {args.enclave_id} was deleted")
        return 0
    if shown.enclave is not None:
        show_final(
            ctx, shown.enclave, f"enclave {args.enclave_id} is {phase_name(shown.last.phase)}"
        )
    return 0


def _round_document(event: Reattested) -> Json:
    report = event.attestation.report
    return {
        "reattestation": {
            "enclave_id": event.progress.enclave_id,
            "sequence": event.progress.sequence,
            "round": event.round,
            "verified": True,
            "nonce_hex": event.attestation.nonce.hex(),
            "requested": event.requested,
            "log_epoch": event.attestation.attestation.log_epoch,
            "reset_count": report.reset_count,
            "certificate_sha256": report.enclave_certificate_sha256.hex(),
        }
    }


async def watch_attestations(ctx: Context, args: argparse.Namespace) -> int:
    """Each re-attestation, verified against the certificate pinned when the watch began."""
    if args.rounds < 0:
        raise UsageError("--rounds must not be negative")
    nonce = _nonce(args.nonce_hex) if args.nonce_hex is not None else None
    seen = 0
    async with ctx.session() as connection:
        events = connection.client.follow_attestations(
            args.enclave_id, nonce=nonce, from_sequence=args.from_sequence
        )
        try:
            with connection.explain(f"watching enclave {args.enclave_id}'s attestations"):
                async for event in events:
                    if isinstance(event, Reattested):
                        seen += 1
                        origin = "your nonce" if event.requested else "a fresh server nonce"
                        ctx.output.result(
                            f"{event.progress.sequence:>3}  round {event.round}: verified "
                            f"(TPM quote over {origin}, log epoch "
                            f"{event.attestation.attestation.log_epoch}, certificate "
                            f"{event.attestation.report.enclave_certificate_sha256.hex()[:16]}...)",
                            _round_document(event),
                        )
                        if args.rounds and seen >= args.rounds:
                            return 0
                    elif isinstance(event, Progress):
                        ctx.output.result(
                            f"{event.sequence:>3}  {phase_name(event.phase):<18} {event.message}",
                            {"event": event_json(event.event)},
                        )
                    elif isinstance(event, Reconnecting):
                        ctx.output.notice(
                            f"stream interrupted; reconnecting from sequence "
                            f"{event.from_sequence} in {event.delay:.1f}s"
                        )
        except EnclaveFailedError as exc:
            raise CliError(f"{exc.message}: its licence is revoked") from exc
        except AttestationFailedError as exc:
            ctx.output.document({"verification": failure_document(exc)})
            raise CliError(f"{exc.message}; do not trust the enclave any more") from exc
    return 0
