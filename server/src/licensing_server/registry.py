"""A registry: the built-in backends of one capability, by the name operators configure.

Each capability (enclave runtime, certificate issuer, TPM transport, enclave launcher)
has one ``Registry`` in ``catalog``; adding a backend is one entry there. A name that
is not registered never falls back to a default: start-up stops and lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownBackend"]

_F = TypeVar("_F", covariant=True)


class UnknownBackend(LookupError):
    """The configured name is not a registered backend; the message lists the valid ones."""


@dataclass(frozen=True, slots=True)
class Registry(Generic[_F]):
    """Factories of one capability's backends, keyed by their configured name."""

    #: What the backends are, for messages ("enclave runtime").
    capability: str
    #: The setting that names one ("LICENSING_ENCLAVE_RUNTIME").
    setting: str
    entries: Mapping[str, _F]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.entries))

    def problem(self, name: str) -> str | None:
        """Why ``name`` cannot be used (for ``Settings.from_env``), or None if it can."""
        if name in self.entries:
            return None
        valid = ", ".join(repr(n) for n in self.names)
        return f"{self.setting}={name!r} is not a known {self.capability}; valid: {valid}"

    def resolve(self, name: str) -> _F:
        """The factory registered as ``name``; ``UnknownBackend`` otherwise."""
        problem = self.problem(name)
        if problem is not None:
            raise UnknownBackend(problem)
        return self.entries[name]
