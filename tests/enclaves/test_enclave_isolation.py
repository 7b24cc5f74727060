"""A user's enclaves are theirs alone; malformed input is refused before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from enclave.v1 import workload_pb2
from licensing.v1 import enclave_pb2

from tests.enclaves.helpers import (
    PROVISIONING_PHASE_NAMES,
    Owner,
    all_enclave_rows,
    code_and_reason,
    enclave_row_count,
    enclave_work_dir,
    phase_names,
    processes_mentioning,
    refusal,
)
from tests.support import Stack, error_info

NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "ENCLAVE_NOT_FOUND")


def _not_found_everywhere(owner: Owner, enclave_id: str) -> list[tuple[object, ...]]:
    """(code, reason, message) of Get, Watch and Delete of ``enclave_id`` by ``owner``."""
    answers: list[tuple[object, ...]] = []
    for call in (
        lambda: owner.get(enclave_id),
        lambda: list(owner.watch(enclave_id, timeout=10)),
        lambda: owner.delete(enclave_id),
    ):
        error = refusal(call)
        answers.append((*code_and_reason(error), error.details()))
    return answers


def test_another_user_cannot_see_or_touch_an_enclave(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    alice, mallory = new_owner(), new_owner()
    enclave = alice.create_attested()
    workload = alice.workload(enclave)
    workload.PutSecret(
        workload_pb2.PutSecretRequest(name="recipe", value=b"secret sauce"), metadata=alice.bearer
    )

    # Someone else's enclave answers exactly as one that does not exist.
    nobody = str(uuid.uuid4())
    assert _not_found_everywhere(mallory, enclave.id) == _not_found_everywhere(mallory, nobody)
    assert [answer[:2] for answer in _not_found_everywhere(mallory, enclave.id)] == [NOT_FOUND] * 3
    assert mallory.list_all() == []
    assert mallory.list_page(1).next_page_token == ""

    # Mallory's own enclave is all she sees.
    own = mallory.create_attested()
    assert [e.id for e in mallory.list_all()] == [own.id]
    assert [e.id for e in alice.list_all()] == [enclave.id]
    assert code_and_reason(refusal(lambda: alice.get(own.id))) == NOT_FOUND

    # Her certificate and token are valid, but she is not the owner of Alice's enclave.
    as_mallory = alice.workload(enclave, as_user=mallory.user)
    calls: list[Callable[[], object]] = [
        lambda: as_mallory.GetIdentity(workload_pb2.GetIdentityRequest(), metadata=mallory.bearer),
        lambda: as_mallory.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=mallory.bearer),
        lambda: as_mallory.GetSecret(
            workload_pb2.GetSecretRequest(name="recipe"), metadata=mallory.bearer
        ),
        lambda: as_mallory.PutSecret(
            workload_pb2.PutSecretRequest(name="recipe", value=b"ketchup"),
            metadata=mallory.bearer,
        ),
        lambda: as_mallory.DeleteSecret(
            workload_pb2.DeleteSecretRequest(name="recipe"), metadata=mallory.bearer
        ),
        lambda: as_mallory.Sign(workload_pb2.SignRequest(data=b"x"), metadata=mallory.bearer),
    ]
    for call in calls:
        assert code_and_reason(refusal(call)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_ENCLAVE_OWNER",
        )
    # Nor does Alice's token help her: it is bound to Alice's certificate.
    error = refusal(
        lambda: as_mallory.ListSecrets(workload_pb2.ListSecretsRequest(), metadata=alice.bearer)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # Alice's enclave is untouched by all of it.
    assert alice.get(enclave.id).phase == enclave_pb2.PHASE_ATTESTED
    assert processes_mentioning(enclave.id)
    assert enclave_work_dir(stack, enclave.id).is_dir()
    assert (
        workload.GetSecret(
            workload_pb2.GetSecretRequest(name="recipe"), metadata=alice.bearer
        ).value
        == b"secret sauce"
    )


MALFORMED_IDS = [
    "",
    "not-a-uuid",
    "1234",
    "../../../etc/passwd",
    "' OR '1'='1",
    f"{uuid.uuid4()}x",
    str(uuid.uuid4())[:-1],
    "g" * 32,
    "\u0430" * 36,
]


@pytest.mark.parametrize("enclave_id", MALFORMED_IDS)
def test_malformed_enclave_ids_are_invalid_arguments(
    new_owner: Callable[..., Owner], enclave_id: str
) -> None:
    owner = new_owner()
    for call in (
        lambda: owner.get(enclave_id),
        lambda: list(owner.watch(enclave_id, timeout=10)),
        lambda: owner.delete(enclave_id),
    ):
        assert code_and_reason(refusal(call)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "ENCLAVE_ID_INVALID",
        )


BAD_REQUEST_IDS = ["", "a" * 65, "has space", "slash/ed", "semi;colon", "new\nline", "\u00fcber"]


def test_bad_request_ids_and_nonces_are_refused_and_nothing_is_written(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    before = all_enclave_rows(stack)
    for request_id in BAD_REQUEST_IDS:
        error = refusal(lambda rid=request_id: owner.create(rid, b"n" * 32))  # type: ignore[misc]
        assert code_and_reason(error) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_INVALID")
    for size in (1, 15, 65, 1024):
        error = refusal(lambda n=size: owner.create("nonce-test", b"n" * n))  # type: ignore[misc]
        assert code_and_reason(error) == (grpc.StatusCode.INVALID_ARGUMENT, "NONCE_INVALID")
        info = error_info(error)
        assert info is not None
        assert dict(info.metadata) == {"min_bytes": "16", "max_bytes": "64"}
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 0
    assert all_enclave_rows(stack) == before
    assert owner.list_all() == []

    # The boundaries themselves are accepted, and each quote binds the nonce as sent.
    for request_id, nonce in (("a" * 64, b"n" * 16), ("Z", b"n" * 64), ("a.b_c-9", b"n" * 40)):
        events = owner.create(request_id, nonce)
        assert phase_names(events)[-1] == "PHASE_ATTESTED"
        assert events[-1].enclave.request_id == request_id
        owner.verify(events[-1].enclave, events[-1].attestation, nonce)
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 3


def test_without_a_nonce_the_server_chooses_one_for_the_quote(
    new_owner: Callable[..., Owner],
) -> None:
    owner = new_owner()
    events = owner.create(nonce=b"")
    assert phase_names(events) == PROVISIONING_PHASE_NAMES
    attestation = events[-1].attestation
    assert 16 <= len(attestation.nonce) <= 64
    assert "server-chosen nonce" in events[-1].message
    owner.verify(events[-1].enclave, attestation, attestation.nonce)
