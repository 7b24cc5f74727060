"""What the quote's qualifying data commits to: our nonce and the certificate we will pin.

``qualifyingData = SHA-256("licensing-attest-v1" || nonce || SHA-256(cert DER))``,
or, when one quote serves several requests, the root of a Merkle tree over
those values (leaves hashed with 0x00, nodes with 0x01, an odd last node
promoted), each response carrying its path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: URI SAN the licensing CA puts in the attestation key's certificate, and only there.
AK_CERTIFICATE_IDENTITY = "spiffe://licensing.internal/tpm/attestation-key"
MEASUREMENT_PCR = 23
#: ``MeasurementEvent.kind`` of the one PCR 23 event: the root over the live certificates.
MEASURED_SET_KIND = "enclave-certificate-set"
DOMAIN = b"licensing-attest-v1"
DERIVATION = 'sha256("licensing-attest-v1" || nonce || sha256(enclave_certificate_der))'


def qualifying_value(nonce: bytes, certificate_sha256: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + nonce + certificate_sha256).digest()


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """A Merkle tree kept level by level: built once in O(n), then any leaf's path in O(log n).

    The backend keeps one over the live enclave certificates (its root is what PCR 23
    holds) and builds one per shared quote over the requests' qualifying values.
    """

    __slots__ = ("_levels",)

    def __init__(self, values: Sequence[bytes]):
        if not values:
            raise ValueError("no values")
        levels = [[_leaf(v) for v in values]]
        while len(levels[-1]) > 1:
            level = levels[-1]
            upper = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                upper.append(level[-1])
            levels.append(upper)
        self._levels = levels

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """Leaf ``index``'s sibling path from the leaf up, for ``merkle_root_from_proof``."""
        if not 0 <= index < len(self):
            raise ValueError("leaf index out of range")
        path = []
        for level in self._levels[:-1]:
            if index ^ 1 < len(level):
                path.append(level[index ^ 1])
            index //= 2
        return path


def merkle_root_and_proofs(values: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``values`` and, for each, its sibling path from the leaf up."""
    tree = MerkleTree(values)
    return tree.root, [tree.proof(i) for i in range(len(values))]


def merkle_root_from_proof(
    value: bytes, leaf_index: int, leaf_count: int, siblings: list[bytes]
) -> bytes:
    if not 0 <= leaf_index < leaf_count:
        raise ValueError("leaf index out of range")
    node, index, count = _leaf(value), leaf_index, leaf_count
    path = iter(siblings)
    while count > 1:
        if index % 2 == 1:
            node = _node(next(path), node)
        elif index + 1 < count:
            node = _node(node, next(path))
        index, count = index // 2, (count + 1) // 2
    if next(path, None) is not None:
        raise ValueError("proof has extra siblings")
    return node
