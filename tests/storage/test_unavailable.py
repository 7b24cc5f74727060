"""An unreachable database is ``DatabaseUnavailable`` (UNAVAILABLE), never a driver error."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from licensing_common.errors import Unavailable
from licensing_server.storage import (
    Database,
    DatabaseUnavailable,
    EnclaveStore,
    Limits,
    MeasurementStore,
    UserRecord,
    UserStore,
)
from tests.storage.conftest import NOW
from tests.support import free_port

_Call = Callable[[Database], Awaitable[object]]
_CALLS: dict[str, _Call] = {
    "find_user": lambda db: UserStore(db).find_user_by_name("someone"),
    "create_user": lambda db: UserStore(db).create_user("someone", "hash", NOW),
    "create_session": lambda db: UserStore(db).create_session(
        UserRecord("u", "someone", "hash", NOW), b"c" * 32, b"r" * 32, NOW, NOW
    ),
    "reserve": lambda db: EnclaveStore(db).reserve(
        owner_id="x", request_id="r", nonce=b"", limits=Limits(1, dt.timedelta(hours=1)), now=NOW
    ),
    "events_after": lambda db: EnclaveStore(db).events_after("x", 0),
    "start_epoch": lambda db: MeasurementStore(db).start_epoch(0, NOW, []),
}


def _unreachable_url(kind: str, tmp_path: Path) -> str:
    if kind == "postgresql":
        # Nothing listens on a port that was free a moment ago.
        return f"postgresql+psycopg://licensing_test:x@127.0.0.1:{free_port()}/licensing"
    return f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'licensing.db'}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("call", sorted(_CALLS))
async def test_an_unreachable_database_is_database_unavailable(
    kind: str, call: str, tmp_path: Path
) -> None:
    database = Database.connect(_unreachable_url(kind, tmp_path))
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            await _CALLS[call](database)
    finally:
        await database.close()
    assert isinstance(caught.value, Unavailable)
    assert (caught.value.reason, caught.value.message) == (
        "DATABASE_UNAVAILABLE",
        "the database is unavailable",
    )
    # The driver's error stays behind as the cause, for the log, not the caller.
    assert caught.value.__cause__ is not None
