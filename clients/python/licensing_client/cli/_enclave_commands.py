"""enclave create | watch | list | get | delete | attest | call.

Trust in an enclave comes from its TPM attestation: ``create`` verifies the ATTESTED
event's attestation against the nonce it sent, ``attest`` verifies a fresh one, and
``call`` connects only through ``connect_attested_enclave`` (verify, then pin).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client import (
    EnclaveAttestation,
    EnclaveNotReady,
    attest_enclave,
    trust_anchors,
)
from licensing_client.attestation import AttestationError, VerificationReport, verify_attestation
from licensing_client.cli._context import Context
from licensing_client.cli._errors import (
    CliError,
    UsageError,
    describe_transport,
    explain,
    is_transient,
)
from licensing_client._keys import fingerprint, verify_signature
from licensing_client.cli._output import (
    Event,
    EventView,
    Json,
    enclave_json,
    enclave_table,
    enclave_text,
    has_attestation,
    has_enclave,
    phase_name,
    verification_failure_json,
    verification_json,
    verification_text,
)
from licensing_client.cli._session import CALL_TIMEOUT, Metadata, Session
from licensing_client.gen.enclave import v1 as workload
from licensing_client.gen.licensing import v1

T = TypeVar("T")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE_BYTES = (16, 64)
#: Reconnects of a stream in a row without a new event before giving up.
STREAM_RETRIES = 5
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 8.0
#: Errors worth a retry with the same request id.
_RETRYABLE = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.INTERNAL, Status.UNKNOWN}


# Following provisioning events -------------------------------------------------------


@dataclass
class Follower:
    """Consumes a stream of phase events, reconnecting where it left off.

    A dropped stream (UNAVAILABLE, a lost connection) is reopened by ``reopen``
    from the last sequence seen, at most ``STREAM_RETRIES`` times in a row with
    exponential backoff; an event seen twice (a replay) is shown once.
    """

    session: Session
    view: EventView
    last_sequence: int = 0
    enclave_id: str = ""
    last: Event | None = None
    enclave: v1.Enclave | None = None
    #: The attestation the ATTESTED event carried, if one did.
    attestation: v1.Attestation | None = None
    attempts: int = field(default=0)

    def _see(self, event: Event) -> bool:
        if event.sequence and event.sequence <= self.last_sequence:
            return False
        self.last_sequence = max(self.last_sequence, event.sequence)
        self.enclave_id = event.enclave_id or self.enclave_id
        self.last = event
        if has_enclave(event):
            self.enclave = event.enclave
        if has_attestation(event):
            self.attestation = event.attestation
        self.attempts = 0
        self.view.show(event)
        return True

    async def run(self, reopen: Callable[[Follower], AsyncIterator[Event]]) -> None:
        while True:
            try:
                async for event in reopen(self):
                    self._see(event)
                return
            except Exception as exc:
                if not is_transient(exc) or self.attempts >= STREAM_RETRIES:
                    raise
                self.attempts += 1
                delay = min(_BACKOFF_FIRST * 2 ** (self.attempts - 1), _BACKOFF_MAX)
                delay *= random.uniform(0.8, 1.2)
                why = (
                    f"{exc.message or exc.status.name}"
                    if isinstance(exc, GRPCError)
                    else describe_transport(exc, self.session.api_peer, "")
                )
                self.view.remark(
                    f"stream interrupted ({why}); reconnecting from sequence "
                    f"{self.last_sequence} in {delay:.1f}s "
                    f"(attempt {self.attempts} of {STREAM_RETRIES})"
                )
                self.session.reset_channels()
                await asyncio.sleep(delay)


def _watch(follower: Follower) -> AsyncIterator[Event]:
    request = v1.WatchEnclaveRequest(
        enclave_id=follower.enclave_id, from_sequence=follower.last_sequence
    )

    def open_stream(channel: Channel, metadata: Metadata) -> AsyncIterator[Event]:
        return v1.EnclaveServiceStub(channel).watch_enclave(request, metadata=metadata)

    return follower.session.stream(open_stream)


def _failure(follower: Follower) -> CliError | None:
    """A sentence for an enclave that failed or vanished, else None."""
    last = follower.last
    if last is None:
        return None
    enclave_id = last.enclave_id or follower.enclave_id
    if last.phase == v1.Phase.FAILED:
        reason = (
            (follower.enclave.failure_reason if follower.enclave is not None else "")
            or last.message
            or "no reason was given"
        )
        return CliError(f"enclave {enclave_id} failed: {reason.rstrip('.')} (FAILED)")
    return None


async def _get(session: Session, enclave_id: str) -> v1.Enclave:
    async def call(channel: Channel, metadata: Metadata) -> v1.GetEnclaveResponse:
        return await v1.EnclaveServiceStub(channel).get_enclave(
            v1.GetEnclaveRequest(enclave_id=enclave_id), metadata=metadata, timeout=CALL_TIMEOUT
        )

    return (await session.call(call)).enclave


def _show_final(ctx: Context, enclave: v1.Enclave, headline: str) -> None:
    ctx.output.document({"enclave": enclave_json(enclave)})
    ctx.output.text(f"{headline}\n{enclave_text(enclave)}")


# attestation -------------------------------------------------------------------------


def _anchors(session: Session) -> list[str]:
    """The pinned licensing CA: it must have certified the TPM's attestation key."""
    return trust_anchors(session.connections.ca_path.read_bytes())


def _attestation_failed(enclave_id: str, error: AttestationError) -> str:
    return f"enclave {enclave_id} failed attestation check '{error.check.value}': {error.detail}"


async def _get_attestation(session: Session, enclave_id: str, nonce: bytes) -> v1.Attestation:
    async def call(channel: Channel, metadata: Metadata) -> v1.GetAttestationResponse:
        return await v1.AttestationServiceStub(channel).get_attestation(
            v1.GetAttestationRequest(enclave_id=enclave_id, nonce=nonce),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )

    return (await session.call(call)).attestation


async def _verify_created(
    ctx: Context, session: Session, follower: Follower, enclave: v1.Enclave, nonce: bytes
) -> VerificationReport:
    """Verify the ATTESTED event's attestation against our nonce and the enclave's certificate.

    A create repeated with the same request id replays the first request's events, whose
    attestation is over that request's nonce; then (or if no attestation arrived) a fresh
    one over our nonce is fetched instead, and verified the same way.
    """
    attestation = follower.attestation
    source = "ATTESTED event"
    if attestation is None or bytes(attestation.nonce) != nonce:
        why = (
            "no attestation arrived with the events"
            if attestation is None
            else "the ATTESTED event is a replay, over the nonce of the first create "
            "with this request id"
        )
        ctx.output.notice(f"attestation: {why}; fetching a fresh one over our nonce")
        with explain(
            f"attesting enclave {enclave.id}",
            peer=session.api_peer,
            trust=session.connections.trust_hint,
        ):
            attestation = await _get_attestation(session, enclave.id, nonce)
        source = "GetAttestation"
    try:
        report = verify_attestation(
            attestation,
            nonce=nonce,
            expected_certificate_pem=enclave.certificate_pem,
            trusted_ca_pem=_anchors(session),
        )
    except AttestationError as exc:
        failure = verification_failure_json(exc, enclave_id=enclave.id, nonce=nonce, source=source)
        ctx.output.document({"verification": failure})
        raise CliError(
            f"{_attestation_failed(enclave.id, exc)}; do not trust it "
            f"(`licensing enclave delete {enclave.id}` removes it)"
        ) from exc
    ctx.output.document(
        {
            "verification": verification_json(
                report, enclave_id=enclave.id, nonce=nonce, source=source
            )
        }
    )
    ctx.output.text(
        verification_text(
            report,
            headline=f"attestation verified ({source}): a TPM quote binds our nonce "
            f"to the certificate of enclave {enclave.id}",
            nonce=nonce,
        )
    )
    return report


async def attest(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:

        async def call(channel: Channel, metadata: Metadata) -> EnclaveAttestation:
            return await attest_enclave(
                channel,
                args.enclave_id,
                access_token=session.record.access_token,  # what ``metadata`` carries
                trusted_ca_pem=_anchors(session),
                rpc_timeout=CALL_TIMEOUT,
            )

        try:
            with explain(
                f"attesting enclave {args.enclave_id}",
                peer=session.api_peer,
                trust=session.connections.trust_hint,
            ):
                verified = await session.call(call)
        except EnclaveNotReady as exc:
            raise CliError(
                f"enclave {exc.enclave.id or args.enclave_id} cannot be attested: it is {exc.phase}"
            ) from exc
        except AttestationError as exc:
            ctx.output.document(
                verification_failure_json(
                    exc, enclave_id=args.enclave_id, nonce=None, source="GetAttestation"
                )
            )
            raise CliError(f"{_attestation_failed(args.enclave_id, exc)}; do not trust it") from exc
    enclave = verified.enclave
    ctx.output.result(
        verification_text(
            verified.report,
            headline=f"attestation of enclave {enclave.id} verified: a fresh TPM quote binds "
            "our nonce to its certificate",
            nonce=verified.nonce,
        ),
        verification_json(
            verified.report, enclave_id=enclave.id, nonce=verified.nonce, source="GetAttestation"
        ),
    )
    return 0


# create / watch ----------------------------------------------------------------------


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


async def create(ctx: Context, args: argparse.Namespace) -> int:
    request_id: str = args.request_id or str(uuid.uuid4())
    if not _REQUEST_ID.fullmatch(request_id):
        raise UsageError("--request-id must be 1 to 64 characters of [A-Za-z0-9._-]")
    nonce = _nonce(args.nonce_hex)
    retry = f"licensing enclave create --request-id {request_id}"
    async with ctx.session() as session:
        notice = f"request id {request_id} (to retry without a second enclave: {retry})"
        if ctx.output.json:
            ctx.output.notice(notice)
        else:
            ctx.output.text(notice)
        create_request = v1.CreateEnclaveRequest(request_id=request_id, nonce=nonce)

        def open_create(channel: Channel, metadata: Metadata) -> AsyncIterator[Event]:
            return v1.EnclaveServiceStub(channel).create_enclave(create_request, metadata=metadata)

        def reopen(follower: Follower) -> AsyncIterator[Event]:
            # Until the enclave has an id, CreateEnclave again (idempotent by request id);
            # after that, resume its events with WatchEnclave.
            if follower.enclave_id:
                return _watch(follower)
            return session.stream(open_create)

        with ctx.output.events("creating enclave") as view:
            follower = Follower(session, view)
            try:
                with explain(
                    "creating the enclave",
                    peer=session.api_peer,
                    trust=session.connections.trust_hint,
                ):
                    await follower.run(reopen)
            except CliError as exc:
                cause = exc.__cause__
                if (isinstance(cause, GRPCError) and cause.status in _RETRYABLE) or (
                    cause is not None and not isinstance(cause, GRPCError) and is_transient(cause)
                ):
                    raise CliError(f"{exc.sentence}; to retry safely: {retry}") from cause
                raise
            except asyncio.CancelledError:  # Ctrl-C: provisioning goes on without us
                follow = (
                    f"licensing enclave watch {follower.enclave_id}"
                    if follower.enclave_id
                    else retry
                )
                ctx.output.notice(f"interrupted; the enclave may still be created: {follow}")
                raise
        failure = _failure(follower)
        if failure is not None:
            raise failure
        last = follower.last
        if last is None:
            raise CliError("creating the enclave failed: the server sent no event")
        if last.phase == v1.Phase.DELETED:
            raise CliError(f"enclave {follower.enclave_id} was deleted before it was ready")
        enclave = follower.enclave
        if enclave is None:
            with explain("getting the enclave", peer=session.api_peer):
                enclave = await _get(session, follower.enclave_id)
        if args.verify:
            await _verify_created(ctx, session, follower, enclave, nonce)
        else:
            ctx.output.notice(
                f"attestation: NOT verified (--no-verify); nothing vouches for the certificate "
                f"of enclave {enclave.id} but the licensing API that reported it "
                f"(`licensing enclave attest {enclave.id}` verifies it)"
            )
    _show_final(ctx, enclave, f"enclave {enclave.id} is {phase_name(enclave.phase)}")
    return 0


async def watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.from_sequence < 0:
        raise UsageError("--from-sequence must not be negative")
    async with ctx.session() as session:
        with ctx.output.events(f"enclave {args.enclave_id}") as view:
            follower = Follower(
                session, view, last_sequence=args.from_sequence, enclave_id=args.enclave_id
            )
            with explain(
                f"watching enclave {args.enclave_id}",
                peer=session.api_peer,
                trust=session.connections.trust_hint,
            ):
                await follower.run(_watch)
    failure = _failure(follower)
    if failure is not None:
        raise failure
    if follower.last is None:
        ctx.output.text(f"no events after sequence {args.from_sequence}")
        return 0
    if follower.last.phase == v1.Phase.DELETED:
        ctx.output.text(f"enclave {args.enclave_id} was deleted")
        return 0
    if follower.enclave is not None:
        _show_final(
            ctx, follower.enclave, f"enclave {args.enclave_id} is {phase_name(follower.last.phase)}"
        )
    return 0


# list / get / delete -----------------------------------------------------------------


async def list_(ctx: Context, args: argparse.Namespace) -> int:
    page_size: int = args.page_size or 0
    if not 0 <= page_size <= 100:
        raise UsageError("--page-size must be 1 to 100")
    enclaves: list[v1.Enclave] = []
    async with ctx.session() as session:

        async def page(token: str) -> v1.ListEnclavesResponse:
            request = v1.ListEnclavesRequest(page_size=page_size, page_token=token)

            async def call(channel: Channel, metadata: Metadata) -> v1.ListEnclavesResponse:
                return await v1.EnclaveServiceStub(channel).list_enclaves(
                    request, metadata=metadata, timeout=CALL_TIMEOUT
                )

            return await session.call(call)

        token = ""
        seen: set[str] = set()
        with explain(
            "listing enclaves", peer=session.api_peer, trust=session.connections.trust_hint
        ):
            while True:
                reply = await page(token)
                enclaves.extend(reply.enclaves)
                token = reply.next_page_token
                if not token:
                    break
                if token in seen:
                    raise CliError("listing enclaves failed: the server repeated a page token")
                seen.add(token)
    data: Json = {"enclaves": [enclave_json(e) for e in enclaves]}
    ctx.output.result(enclave_table(enclaves), data)
    return 0


async def get(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:
        with explain(
            f"getting enclave {args.enclave_id}",
            peer=session.api_peer,
            trust=session.connections.trust_hint,
        ):
            enclave = await _get(session, args.enclave_id)
    ctx.output.result(enclave_text(enclave), enclave_json(enclave))
    return 0


async def delete(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:

        async def call(channel: Channel, metadata: Metadata) -> v1.DeleteEnclaveResponse:
            return await v1.EnclaveServiceStub(channel).delete_enclave(
                v1.DeleteEnclaveRequest(enclave_id=args.enclave_id),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )

        with explain(
            f"deleting enclave {args.enclave_id}",
            peer=session.api_peer,
            trust=session.connections.trust_hint,
        ):
            await session.call(call)
    ctx.output.result(
        f"deleted enclave {args.enclave_id}", {"enclave_id": args.enclave_id, "deleted": True}
    )
    return 0


# call --------------------------------------------------------------------------------


def _bytes_argument(ctx: Context, value: str) -> bytes:
    """The argument as UTF-8, or stdin's bytes for ``-``."""
    if value == "-":
        return ctx.stdin.buffer.read()
    return value.encode()


def _sha256_of(certificate_pem: str) -> bytes:
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


async def _workload(
    session: Session,
    enclave: v1.Enclave,
    fn: Callable[[workload.WorkloadServiceStub, Metadata], Awaitable[T]],
) -> T:
    """``fn`` on the enclave's WorkloadService, pinned to its attested certificate, with a
    fresh token (``session.connect_enclave`` must have attested it)."""

    async def run(channel: Channel, metadata: Metadata) -> T:
        return await fn(workload.WorkloadServiceStub(channel, timeout=CALL_TIMEOUT), metadata)

    return await session.call(run, enclave=enclave)


Operation = Callable[[Context, argparse.Namespace, Session, v1.Enclave], Awaitable[int]]


async def _identity(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    reply = await _workload(
        session,
        enclave,
        lambda stub, md: stub.get_identity(workload.GetIdentityRequest(), metadata=md),
    )
    matches = reply.certificate_sha256 == _sha256_of(enclave.certificate_pem)
    ctx.output.result(
        "\n".join(
            [
                f"enclave             {reply.enclave_id}",
                f"owner               {reply.owner}",
                f"certificate sha256  {reply.certificate_sha256.hex()}",
                "pinned certificate  " + ("matches" if matches else "DIFFERS"),
            ]
        ),
        {
            "enclave_id": reply.enclave_id,
            "owner": reply.owner,
            "certificate_sha256": reply.certificate_sha256.hex(),
            "certificate_pem": reply.certificate_pem,
            "matches_pinned_certificate": matches,
        },
    )
    return 0


async def _put_secret(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    request = workload.PutSecretRequest(name=args.name, value=_bytes_argument(ctx, args.value))
    await _workload(session, enclave, lambda stub, md: stub.put_secret(request, metadata=md))
    ctx.output.result(
        f"stored secret {args.name} in enclave {enclave.id}",
        {"enclave_id": enclave.id, "name": args.name, "stored": True},
    )
    return 0


async def _get_secret(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    request = workload.GetSecretRequest(name=args.name)
    reply = await _workload(
        session, enclave, lambda stub, md: stub.get_secret(request, metadata=md)
    )
    if ctx.output.json:
        try:
            text: str | None = reply.value.decode()
        except UnicodeDecodeError:
            text = None
        ctx.output.document(
            {
                "enclave_id": enclave.id,
                "name": args.name,
                "value": text,
                "value_base64": base64.b64encode(reply.value).decode(),
            }
        )
    else:
        ctx.output.write_bytes(reply.value)
    return 0


async def _list_secrets(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    reply = await _workload(
        session,
        enclave,
        lambda stub, md: stub.list_secrets(workload.ListSecretsRequest(), metadata=md),
    )
    ctx.output.result(
        "\n".join(reply.names) if reply.names else "no secrets",
        {"enclave_id": enclave.id, "names": list(reply.names)},
    )
    return 0


async def _delete_secret(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    request = workload.DeleteSecretRequest(name=args.name)
    await _workload(session, enclave, lambda stub, md: stub.delete_secret(request, metadata=md))
    ctx.output.result(
        f"deleted secret {args.name} from enclave {enclave.id}",
        {"enclave_id": enclave.id, "name": args.name, "deleted": True},
    )
    return 0


async def _sign(
    ctx: Context, args: argparse.Namespace, session: Session, enclave: v1.Enclave
) -> int:
    data = _bytes_argument(ctx, args.data)
    request = workload.SignRequest(data=data)
    reply = await _workload(session, enclave, lambda stub, md: stub.sign(request, metadata=md))
    # Verified against the certificate we pinned, not the one the reply names.
    if not verify_signature(enclave.certificate_pem, data, reply.signature):
        raise CliError(
            f"the signature from enclave {enclave.id} does not verify against its certificate"
        )
    pinned = x509.load_pem_x509_certificate(enclave.certificate_pem.encode())
    signature_b64 = base64.b64encode(reply.signature).decode()
    ctx.output.result(
        "\n".join(
            [
                f"signature (base64)  {signature_b64}",
                f"signature (hex)     {reply.signature.hex()}",
                f"verified            ECDSA P-256/SHA-256 by the attested, pinned certificate "
                f"of enclave {enclave.id} (SHA-256 fingerprint {fingerprint(pinned)})",
            ]
        ),
        {
            "enclave_id": enclave.id,
            "signature_base64": signature_b64,
            "signature_hex": reply.signature.hex(),
            "verified": True,
            "certificate_sha256": _sha256_of(enclave.certificate_pem).hex(),
        },
    )
    return 0


OPERATIONS: dict[str, Operation] = {
    "identity": _identity,
    "put-secret": _put_secret,
    "get-secret": _get_secret,
    "list-secrets": _list_secrets,
    "delete-secret": _delete_secret,
    "sign": _sign,
}


async def call(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:
        # Verify a fresh attestation, then pin exactly the attested certificate.
        try:
            with explain(
                f"attesting enclave {args.enclave_id}",
                peer=session.api_peer,
                trust=session.connections.trust_hint,
            ):
                attested = await session.connect_enclave(args.enclave_id)
        except EnclaveNotReady as exc:
            raise CliError(
                f"enclave {exc.enclave.id or args.enclave_id} cannot be called: it is {exc.phase}"
            ) from exc
        except AttestationError as exc:
            raise CliError(
                f"{_attestation_failed(args.enclave_id, exc)}; not connecting to it"
            ) from exc
        enclave = attested.enclave
        pinned = x509.load_pem_x509_certificate(enclave.certificate_pem.encode())
        ctx.output.notice(
            f"attestation: enclave {enclave.id} verified ({len(attested.report.checks)} checks "
            f"over a fresh nonce); calling it pinned to the attested certificate "
            f"(SHA-256 fingerprint {fingerprint(pinned)})"
        )
        with explain(
            f"{args.operation} on enclave {enclave.id}",
            peer=f"enclave {enclave.id} at {enclave.endpoint}",
            trust=(
                "it is not the attested certificate of this enclave, "
                "so the connection was dropped before anything was sent"
            ),
        ):
            return await OPERATIONS[args.operation](ctx, args, session, enclave)
