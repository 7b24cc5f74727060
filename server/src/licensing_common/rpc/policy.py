"""The kinds of caller a policy table names; each server keeps its own table (deny by default)."""

from __future__ import annotations

import enum

__all__ = ["Access"]


class Access(enum.Enum):
    #: No client certificate needed (served on the TLS enrollment listener too).
    PUBLIC = "public"
    #: Any client certificate issued by the licensing CA.
    PEER = "peer"
    #: A user's client certificate and an access token bound to it.
    USER = "user"
    #: Only the frontend's internal client certificate.
    FRONTEND = "frontend"
