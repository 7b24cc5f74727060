"""The owner's secrets, in memory only: they die with the enclave, by design.

Limits keep one owner from growing the process without bound; every refusal says
which limit was hit (``ErrorInfo.metadata["limit"]``) so a client can adapt.
"""

from __future__ import annotations

import re

from licensing_common.errors import InvalidArgument, NotFound, ResourceExhausted

MAX_NAME_LENGTH = 128
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS = 100
#: Total of all values (names are bounded by the count and length limits).
MAX_TOTAL_BYTES = 1024 * 1024
_NAME = re.compile(rf"[A-Za-z0-9._/-]{{1,{MAX_NAME_LENGTH}}}")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            "SECRET_NAME_INVALID",
            f"a secret name is 1..{MAX_NAME_LENGTH} characters of [A-Za-z0-9._/-]",
            {"max_length": str(MAX_NAME_LENGTH), "pattern": "[A-Za-z0-9._/-]"},
        )


class SecretStore:
    """Name -> value. Methods never await, so each call is atomic on the event loop."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        self._total = 0

    def put(self, name: str, value: bytes) -> None:
        """Create or replace; a replaced value's size no longer counts against the limits."""
        _check_name(name)
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                "SECRET_VALUE_TOO_LARGE",
                f"a secret value is at most {MAX_VALUE_BYTES} bytes",
                {"limit": str(MAX_VALUE_BYTES), "size": str(len(value))},
            )
        previous = self._values.get(name)
        if previous is None and len(self._values) >= MAX_SECRETS:
            raise ResourceExhausted(
                "SECRET_COUNT_LIMIT",
                f"an enclave holds at most {MAX_SECRETS} secrets",
                {"limit": str(MAX_SECRETS)},
            )
        total = self._total - len(previous or b"") + len(value)
        if total > MAX_TOTAL_BYTES:
            raise ResourceExhausted(
                "SECRET_STORAGE_LIMIT",
                f"an enclave holds at most {MAX_TOTAL_BYTES} bytes of secret values",
                {"limit": str(MAX_TOTAL_BYTES), "used": str(self._total)},
            )
        self._values[name] = bytes(value)
        self._total = total

    def get(self, name: str) -> bytes:
        _check_name(name)
        value = self._values.get(name)
        if value is None:
            raise _missing(name)
        return value

    def names(self) -> list[str]:
        return sorted(self._values)

    def delete(self, name: str) -> None:
        _check_name(name)
        value = self._values.pop(name, None)
        if value is None:
            raise _missing(name)
        self._total -= len(value)


def _missing(name: str) -> NotFound:
    return NotFound("SECRET_NOT_FOUND", "no secret has this name", {"name": name})
