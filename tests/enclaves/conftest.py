"""Per-test owners whose enclaves are all deleted afterwards (the stack is shared)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.enclaves.helpers import Owner
from tests.support import LoggedIn, Stack


@pytest.fixture
def new_owner(stack: Stack) -> Iterator[Callable[..., Owner]]:
    """Make fresh users; every enclave they hold is deleted when the test ends."""
    owners: list[Owner] = []

    def make(user: LoggedIn | None = None) -> Owner:
        owner = Owner.of(stack, user)
        owners.append(owner)
        return owner

    yield make
    for owner in owners:
        owner.delete_all()
        owner.close()
