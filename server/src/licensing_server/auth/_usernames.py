"""Usernames: one canonical ASCII spelling per account, so look-alikes cannot coexist."""

from __future__ import annotations

import re

from licensing_common.errors import InvalidArgument

MIN_LENGTH, MAX_LENGTH = 3, 32
_CANONICAL = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


def normalise_username(raw: str) -> str:
    """Fold ASCII letters to lower case and accept only ``[a-z0-9._-]``.

    Anything outside ASCII is rejected rather than normalised: NFKC would map
    some confusables (fullwidth letters) but not others (Cyrillic a), and a
    rule users cannot predict is worse than a strict one.
    """
    if not raw:
        raise InvalidArgument("USERNAME_REQUIRED", "username is required")
    if len(raw) > MAX_LENGTH:
        raise InvalidArgument(
            "USERNAME_TOO_LONG",
            f"username must be at most {MAX_LENGTH} characters",
            {"max_length": str(MAX_LENGTH)},
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise InvalidArgument(
            "USERNAME_INVALID_CHARACTERS", "username must not contain control characters"
        )
    if not raw.isascii():
        raise InvalidArgument(
            "USERNAME_INVALID_CHARACTERS",
            "username must be ASCII letters, digits, '.', '_' or '-'",
        )
    name = raw.lower()
    if len(name) < MIN_LENGTH:
        raise InvalidArgument(
            "USERNAME_TOO_SHORT",
            f"username must be at least {MIN_LENGTH} characters",
            {"min_length": str(MIN_LENGTH)},
        )
    if not _CANONICAL.fullmatch(name):
        raise InvalidArgument(
            "USERNAME_INVALID_CHARACTERS",
            "username must be letters, digits, '.', '_' or '-', starting and ending with a"
            " letter or digit",
        )
    return name
