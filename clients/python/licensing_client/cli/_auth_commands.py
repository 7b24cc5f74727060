"""signup, login, logout, whoami."""

from __future__ import annotations

import argparse
import getpass

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from licensing_client._keys import load_certificates
from licensing_client.cli._context import Context
from licensing_client.cli._errors import CliError, SessionEnded, UsageError
from licensing_client.cli._output import user_json
from licensing_client.cli._store import format_time


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
    async with ctx.connect() as connection:
        with connection.explain("sign-up", enrollment=True):
            account = await connection.client.sign_up(args.username, password)
    ctx.output.result(
        f"signed up as {account.username} (user id {account.user_id}); "
        f"next: licensing login {account.username}",
        {"user_id": account.user_id, "username": account.username},
    )
    return 0


async def login(ctx: Context, args: argparse.Namespace) -> int:
    password = read_password(ctx, args, confirm=False)
    store = ctx.store
    previous = store.load_session()
    async with ctx.connect() as connection:
        with connection.explain("login", enrollment=True):
            session = await connection.client.log_in(args.username, password)
        bundle = connection.client.login_ca_bundle
    if bundle and store.pinned_ca() != bundle:
        load_certificates(bundle)  # came over the verified connection; refuse junk all the same
        store.pin_ca(bundle)
    username = session.username
    if previous is not None and previous.username != username:
        ctx.output.notice(f"replaced the stored session of {previous.username}")
    ctx.output.result(
        f"logged in as {username} (user id {session.user_id}); "
        f"certificate valid until {format_time(session.client_certificate_expire_time)}, "
        f"session stored in {store.root}",
        {
            "user_id": session.user_id,
            "username": username,
            "access_token_expire_time": format_time(session.access_token_expire_time),
            "refresh_token_expire_time": format_time(session.refresh_token_expire_time),
            "client_certificate_expire_time": format_time(session.client_certificate_expire_time),
            "config_dir": str(store.root),
        },
    )
    return 0


async def logout(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        username = connection.client.session.username
        try:
            with connection.explain("logout"):
                await connection.client.log_out()
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


async def whoami(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.session() as connection:
        with connection.explain("whoami"):
            user = await connection.client.current_user()
    created = user_json(user)["create_time"]
    ctx.output.result(
        f"{user.username} (user id {user.id}" + (f", signed up {created})" if created else ")"),
        user_json(user),
    )
    return 0
