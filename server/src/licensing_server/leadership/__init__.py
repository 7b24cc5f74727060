"""Which of several backends against one database runs the cluster-wide reconciler passes.

``LeaderElection`` is the protocol; ``catalog.LEADER_ELECTIONS`` picks one from
``LICENSING_LEADER_ELECTION``: ``sole`` (embedded SQLite: the only backend there can be),
``advisory-lock`` (a PostgreSQL session-level advisory lock), ``kubernetes-lease``
(a ``coordination.k8s.io/v1`` Lease in the backend's namespace). ``while_leading`` runs
work only while its election leads and cancels it the moment that ends.
"""

from licensing_server.leadership._protocol import (
    LeaderElection,
    Leadership,
    candidate_identity,
    while_leading,
)
from licensing_server.leadership._single import SoleBackend

__all__ = [
    "LeaderElection",
    "Leadership",
    "SoleBackend",
    "candidate_identity",
    "while_leading",
]
