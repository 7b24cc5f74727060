"""signup, login, logout, whoami."""

from __future__ import annotations

import argparse
import getpass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client.cli._context import Context
from licensing_client.cli._errors import CliError, SessionEnded, UsageError, explain
from licensing_client._keys import load_certificates, new_key_and_csr
from licensing_client.cli._output import user_json
from licensing_client.cli._session import CALL_TIMEOUT, Metadata
from licensing_client.cli._store import SessionRecord, format_time
from licensing_client.gen.licensing import v1


def read_password(ctx: Context, args: argparse.Namespace, *, confirm: bool) -> str:
    """--password-stdin (one line), else $LICENSING_PASSWORD, else a prompt."""
    if args.password_stdin:
        line = ctx.stdin.readline()
        if not line:
            raise UsageError("--password-stdin was given but stdin is empty")
        return line.rstrip("\r\n")
    if "LICENSING_PASSWORD" in ctx.environ:
        return ctx.environ["LICENSING_PASSWORD"]
    if not ctx.stdin.isatty():
        raise UsageError(
            "no password: pass --password-stdin, set LICENSING_PASSWORD, or run in a terminal"
        )
    try:
        password = getpass.getpass(f"password for {args.username}: ")
        if confirm and getpass.getpass("again: ") != password:
            raise UsageError("the passwords do not match")
    except EOFError as exc:
        raise UsageError("no password was entered") from exc
    return password


async def signup(ctx: Context, args: argparse.Namespace) -> int:
    password = read_password(ctx, args, confirm=True)
    async with ctx.connections() as connections:
        with explain(
            "sign-up",
            peer=f"the licensing server at {connections.server}",
            trust=connections.trust_hint,
        ):
            reply = await v1.AuthServiceStub(connections.enrollment()).sign_up(
                v1.SignUpRequest(username=args.username, password=password),
                timeout=CALL_TIMEOUT,
            )
    ctx.output.result(
        f"signed up as {reply.username} (user id {reply.user_id}); "
        f"next: licensing login {reply.username}",
        {"user_id": reply.user_id, "username": reply.username},
    )
    return 0


def _same_key(cert_pem: bytes, key_pem: bytes) -> bool:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _username_in(cert_pem: bytes, fallback: str) -> str:
    """The server puts the normalised username in the certificate's subject."""
    names = x509.load_pem_x509_certificate(cert_pem).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME
    )
    return str(names[0].value) if names else fallback


async def login(ctx: Context, args: argparse.Namespace) -> int:
    password = read_password(ctx, args, confirm=False)
    fresh = new_key_and_csr(args.username)  # the private key stays here; only the CSR is sent
    async with ctx.connections() as connections:
        with explain(
            "login",
            peer=f"the licensing server at {connections.server}",
            trust=connections.trust_hint,
        ):
            reply = await v1.AuthServiceStub(connections.enrollment()).login(
                v1.LoginRequest(username=args.username, password=password, csr_pem=fresh.csr_pem),
                timeout=CALL_TIMEOUT,
            )
        server = connections.server
    cert_pem = reply.client_certificate_pem.encode()
    try:
        matches = _same_key(cert_pem, fresh.key_pem)
    except ValueError as exc:
        raise CliError("login failed: the server sent an unreadable client certificate") from exc
    if not matches:
        raise CliError("login failed: the certificate the server issued is not for our key")

    store = ctx.store
    previous = store.load_session()
    store.save_credentials(fresh.key_pem, cert_pem)
    bundle = "".join(
        pem if pem.endswith("\n") else pem + "\n" for pem in reply.ca_certificates_pem
    ).encode()
    if bundle and store.pinned_ca() != bundle:
        load_certificates(bundle)  # came over the verified connection; refuse junk all the same
        store.pin_ca(bundle)
    username = _username_in(cert_pem, args.username)
    record = SessionRecord(
        username=username,
        user_id=reply.user_id,
        server=server,
        api=ctx.api(),
        access_token=reply.access_token,
        access_token_expire_time=reply.access_token_expire_time,
        refresh_token=reply.refresh_token,
        refresh_token_expire_time=reply.refresh_token_expire_time,
        client_certificate_expire_time=reply.client_certificate_expire_time,
    )
    store.save_session(record)
    if previous is not None and previous.username != username:
        ctx.output.notice(f"replaced the stored session of {previous.username}")
    ctx.output.result(
        f"logged in as {username} (user id {reply.user_id}); "
        f"certificate valid until {format_time(record.client_certificate_expire_time)}, "
        f"session stored in {store.root}",
        {
            "user_id": reply.user_id,
            "username": username,
            "access_token_expire_time": format_time(record.access_token_expire_time),
            "refresh_token_expire_time": format_time(record.refresh_token_expire_time),
            "client_certificate_expire_time": format_time(record.client_certificate_expire_time),
            "config_dir": str(store.root),
        },
    )
    return 0


async def _logout(channel: Channel, metadata: Metadata) -> v1.LogoutResponse:
    return await v1.AuthServiceStub(channel).logout(
        v1.LogoutRequest(), metadata=metadata, timeout=CALL_TIMEOUT
    )


async def logout(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:
        username = session.record.username
        try:
            with explain("logout", peer=session.api_peer, trust=session.connections.trust_hint):
                await session.call(_logout)
        except SessionEnded:
            already = True
        except CliError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, GRPCError) and cause.status is Status.UNAUTHENTICATED):
                raise  # keep the session so the logout can be retried
            already = True
        else:
            already = False
    ctx.store.delete_session()
    text = (
        f"the server had already ended the session of {username}; removed it here too"
        if already
        else f"logged out {username}; the session, key and certificate were removed"
    )
    ctx.output.result(text, {"username": username, "logged_out": True})
    return 0


async def _current_user(channel: Channel, metadata: Metadata) -> v1.GetCurrentUserResponse:
    return await v1.AuthServiceStub(channel).get_current_user(
        v1.GetCurrentUserRequest(), metadata=metadata, timeout=CALL_TIMEOUT
    )


async def whoami(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as session:
        with explain("whoami", peer=session.api_peer, trust=session.connections.trust_hint):
            reply = await session.call(_current_user)
    user = reply.user
    created = user_json(user)["create_time"]
    ctx.output.result(
        f"{user.username} (user id {user.id}" + (f", signed up {created})" if created else ")"),
        user_json(user),
    )
    return 0
