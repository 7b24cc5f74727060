"""What a rate-limit table entry says: a rate, and whether it counts per address or per user.

The guard enforces a table of these; the frontend's table is ``licensing_server.api.limits``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from licensing_common.throttle import Rate

__all__ = ["CountedBy", "RateLimit"]


class CountedBy(enum.Enum):
    CLIENT_ADDRESS = "client_address"
    USER = "user"


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: Rate
    counted_by: CountedBy
