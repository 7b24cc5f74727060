"""What the quote's qualifying data commits to: our nonce and the certificate we will pin.

``qualifyingData = SHA-256("licensing-attest-v1" || nonce || SHA-256(cert DER))``,
or, when one quote serves several requests, the root of a Merkle tree over
those values (leaves hashed with 0x00, nodes with 0x01, an odd last node
promoted), each response carrying its path.
"""

from __future__ import annotations

import hashlib

DOMAIN = b"licensing-attest-v1"
DERIVATION = 'sha256("licensing-attest-v1" || nonce || sha256(enclave_certificate_der))'


def qualifying_value(nonce: bytes, certificate_sha256: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + nonce + certificate_sha256).digest()


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root_and_proofs(values: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over ``values`` and, for each, its sibling path from the leaf up."""
    if not values:
        raise ValueError("no values")
    level = [_leaf(v) for v in values]
    positions = list(range(len(values)))
    proofs: list[list[bytes]] = [[] for _ in values]
    while len(level) > 1:
        for leaf, index in enumerate(positions):
            sibling = index ^ 1
            if sibling < len(level):
                proofs[leaf].append(level[sibling])
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        positions = [p // 2 for p in positions]
    return level[0], proofs


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
