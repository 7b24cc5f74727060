"""An enclave's phases and the sets of them every process reasons about."""

from __future__ import annotations

import enum

__all__ = ["ATTESTABLE", "TERMINAL", "Phase"]


class Phase(enum.StrEnum):
    """Mirrors ``licensing.v1.Phase`` without its prefix."""

    ACCEPTED = "ACCEPTED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    CERTIFICATE_ISSUED = "CERTIFICATE_ISSUED"
    READY = "READY"
    ATTESTING = "ATTESTING"
    ATTESTED = "ATTESTED"
    FAILED = "FAILED"
    DELETED = "DELETED"


#: Where provisioning ends: a watch stops at the first of these.
TERMINAL = frozenset({Phase.ATTESTED, Phase.FAILED, Phase.DELETED})
#: Phases in which an enclave's certificate can be quoted.
ATTESTABLE = frozenset({Phase.READY, Phase.ATTESTING, Phase.ATTESTED})
