"""Licences: idempotent creates, paging, limits (also under concurrency), overrides, expiry,
and watching an enclave's events."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from licensing.v1 import enclave_pb2

from tests.enclaves.helpers import (
    CARRIES_ATTESTATION,
    CARRIES_ENCLAVE,
    CREATE_TIMEOUT,
    PROVISIONING_PHASE_NAMES,
    Owner,
    assert_no_leftovers,
    code_and_reason,
    enclave_row_count,
    enclave_work_dir,
    new_nonce,
    new_request_id,
    phase_names,
    processes_mentioning,
    refusal,
    wait_until,
)
from tests.support import Stack, error_info

#: LICENSING_MAX_ENCLAVES is not set for the test stack.
DEFAULT_LIMIT = 3
LIMIT_REACHED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ENCLAVE_LIMIT_REACHED")


def _limit_of(error: grpc.RpcError) -> str:
    """The ``limit`` of an ENCLAVE_LIMIT_REACHED refusal (at least that many are held)."""
    info = error_info(error)
    assert info is not None
    assert info.domain == "licensing"
    assert int(info.metadata["held"]) >= int(info.metadata["limit"])
    return str(info.metadata["limit"])


def _admin(stack: Stack, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "licensing_server.admin", "entitlement", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


# Idempotency ------------------------------------------------------------------------------


def test_repeated_request_id_returns_the_same_enclave_even_while_provisioning(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    request_id, nonce = new_request_id(), new_nonce()
    first = iter(owner.create_stream(request_id, nonce))
    accepted = next(first)
    assert accepted.phase == enclave_pb2.PHASE_ACCEPTED
    enclave_id = accepted.enclave_id

    # Ask again before the first is attested: the same enclave, followed from its start.
    second = iter(owner.create_stream(request_id))
    replayed = next(second)
    assert owner.get(enclave_id).phase != enclave_pb2.PHASE_ATTESTED, "too late to prove anything"
    assert (replayed.enclave_id, replayed.sequence) == (enclave_id, 1)
    second_events = [replayed, *second]
    first_events = [accepted, *first]
    for events in (first_events, second_events):
        assert phase_names(events) == PROVISIONING_PHASE_NAMES
        assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
        assert {e.enclave_id for e in events} == {enclave_id}
    assert second_events[-1].enclave == first_events[-1].enclave
    assert second_events[-1].attestation == first_events[-1].attestation
    owner.verify(first_events[-1].enclave, first_events[-1].attestation, nonce)
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 1

    # And again once it is attested; a different nonce does not make it a new request,
    # nor a new quote: the replayed attestation is over the first request's nonce.
    third = owner.create(request_id, b"another nonce, 32 bytes long...")
    assert [e.sequence for e in third] == [1, 2, 3, 4, 5, 6, 7]
    assert third[-1].enclave.id == enclave_id
    assert third[-1].attestation == first_events[-1].attestation
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 1
    assert [e.id for e in owner.list_all()] == [enclave_id]

    # Request ids are per user: someone else's same request id is their own enclave.
    other = new_owner()
    theirs = other.create_attested(request_id)
    assert theirs.id != enclave_id
    assert theirs.owner == other.user.user_id


def test_concurrent_creates_with_one_request_id_make_one_enclave(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    request_id = new_request_id()
    start = threading.Barrier(6)

    nonces = [new_nonce() for _ in range(6)]

    def create(nonce: bytes) -> list[enclave_pb2.CreateEnclaveResponse]:
        start.wait(30)
        return owner.create(request_id, nonce)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = [f.result(CREATE_TIMEOUT) for f in [pool.submit(create, n) for n in nonces]]
    assert {e.enclave_id for events in results for e in events} == {results[0][0].enclave_id}
    for events in results:
        assert phase_names(events) == PROVISIONING_PHASE_NAMES
        assert events[-1].attestation == results[0][-1].attestation
    # One quote, over the nonce of whichever request won.
    final = results[0][-1]
    assert final.attestation.nonce in nonces
    owner.verify(final.enclave, final.attestation, final.attestation.nonce)
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 1


def test_a_create_abandoned_after_accepted_finishes_when_its_request_is_repeated(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    """The caller went away before the backend took the enclave; retrying must not hang."""
    owner = new_owner()
    request_id, nonce = new_request_id(), new_nonce()
    call = owner.create_stream(request_id, nonce)
    accepted = next(iter(call))
    call.cancel()  # type: ignore[no-untyped-call]
    assert accepted.phase == enclave_pb2.PHASE_ACCEPTED

    events = owner.create(request_id)
    assert phase_names(events) == PROVISIONING_PHASE_NAMES
    assert {e.enclave_id for e in events} == {accepted.enclave_id}
    # The quote binds the nonce of the request that reserved the enclave.
    owner.verify(events[-1].enclave, events[-1].attestation, nonce)
    assert owner.get(accepted.enclave_id).phase == enclave_pb2.PHASE_ATTESTED
    assert processes_mentioning(accepted.enclave_id)
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 1


# Listing ----------------------------------------------------------------------------------


def _page_token(created: str, enclave_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, enclave_id]).encode()).decode()


BAD_PAGE_TOKENS = [
    "garbage!",
    "////",
    base64.urlsafe_b64encode(b"null").decode(),
    base64.urlsafe_b64encode(b"[1, 2]").decode(),
    base64.urlsafe_b64encode(b'{"a": 1, "b": 2}').decode(),
    _page_token("yesterday", "00000000-0000-0000-0000-000000000000"),
    _page_token("2024-01-01T00:00:00+00:00", "not-a-uuid"),
    _page_token("2024-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000")[:-2],
]


def test_list_enclaves_pages_through_all_of_them(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    created = [owner.create_attested().id for _ in range(3)]

    first = owner.list_page(page_size=2)
    assert [e.id for e in first.enclaves] == created[:2]
    assert first.next_page_token
    second = owner.list_page(page_size=2, page_token=first.next_page_token)
    assert [e.id for e in second.enclaves] == created[2:]
    assert second.next_page_token == ""
    assert all(e.phase == enclave_pb2.PHASE_ATTESTED for e in [*first.enclaves, *second.enclaves])

    everything = owner.list_page()
    assert [e.id for e in everything.enclaves] == created
    assert everything.next_page_token == ""
    exact = owner.list_page(page_size=3)
    assert ([e.id for e in exact.enclaves], exact.next_page_token) == (created, "")
    ones = [owner.list_page(page_size=1)]
    while ones[-1].next_page_token:
        ones.append(owner.list_page(page_size=1, page_token=ones[-1].next_page_token))
    assert [e.id for page in ones for e in page.enclaves] == created

    # A page token is only a position: it shows nobody else's enclaves.
    stranger = new_owner()
    assert list(stranger.list_page(1, first.next_page_token).enclaves) == []

    for token in BAD_PAGE_TOKENS:
        error = refusal(lambda t=token: owner.list_page(2, t))  # type: ignore[misc]
        assert code_and_reason(error) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "PAGE_TOKEN_INVALID",
        ), token
    assert code_and_reason(refusal(lambda: owner.list_page(-1))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PAGE_SIZE_INVALID",
    )


# Limits -----------------------------------------------------------------------------------


def test_over_the_limit_is_resource_exhausted_and_deleting_frees_a_licence(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    held = [owner.create_attested().id for _ in range(DEFAULT_LIMIT)]
    error = refusal(lambda: owner.create())
    assert code_and_reason(error) == LIMIT_REACHED
    assert _limit_of(error) == str(DEFAULT_LIMIT)
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == DEFAULT_LIMIT
    # Repeating a request that holds a licence is not a new request.
    held_request = owner.get(held[1]).request_id
    assert owner.create(held_request)[-1].enclave.id == held[1]

    owner.delete(held[0])
    again = owner.create_attested()
    assert sorted(e.id for e in owner.list_all()) == sorted([*held[1:], again.id])
    assert code_and_reason(refusal(lambda: owner.create())) == LIMIT_REACHED


@dataclass
class _Outcome:
    user: int
    enclave_id: str = ""
    phases: tuple[str, ...] = ()
    code: grpc.StatusCode | None = None
    reason: str | None = None
    limit: str = ""


def test_concurrent_creates_end_exactly_at_each_users_limit_and_leak_nothing(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    users, per_user = 5, 6
    owners = [new_owner() for _ in range(users)]
    # Enclave processes of this stack (their command line names its work directories).
    ours = str(enclave_work_dir(stack, ""))
    enclave_processes_before = len(processes_mentioning(ours))
    start = threading.Barrier(users * per_user)

    def create(index: int) -> _Outcome:
        owner = owners[index % users]
        outcome = _Outcome(index % users)
        start.wait(30)
        try:
            events = owner.create(new_request_id())
        except grpc.RpcError as exc:
            outcome.code, outcome.reason = code_and_reason(exc)
            if outcome.reason == "ENCLAVE_LIMIT_REACHED":
                outcome.limit = _limit_of(exc)
            return outcome
        outcome.enclave_id = events[-1].enclave_id
        outcome.phases = tuple(phase_names(events))
        return outcome

    with concurrent.futures.ThreadPoolExecutor(users * per_user) as pool:
        outcomes = list(pool.map(create, range(users * per_user), timeout=CREATE_TIMEOUT * 2))

    attested = [o for o in outcomes if o.phases == tuple(PROVISIONING_PHASE_NAMES)]
    refused = [o for o in outcomes if (o.code, o.reason) == LIMIT_REACHED]
    assert len(attested) + len(refused) == len(outcomes), [
        o for o in outcomes if o not in attested and o not in refused
    ]
    assert Counter(o.user for o in attested) == dict.fromkeys(range(users), DEFAULT_LIMIT)
    assert Counter(o.user for o in refused) == dict.fromkeys(range(users), per_user - DEFAULT_LIMIT)
    assert {o.limit for o in refused} == {str(DEFAULT_LIMIT)}
    ids = [o.enclave_id for o in attested]
    assert len(set(ids)) == len(ids)
    for index, owner in enumerate(owners):
        listed = owner.list_all()
        mine = sorted(o.enclave_id for o in attested if o.user == index)
        assert sorted(e.id for e in listed) == mine
        assert {e.phase for e in listed} == {enclave_pb2.PHASE_ATTESTED}
        assert enclave_row_count(stack, owner_id=owner.user.user_id) == DEFAULT_LIMIT
    for enclave_id in ids:
        assert processes_mentioning(enclave_id), f"{enclave_id} is ATTESTED but does not run"

    with concurrent.futures.ThreadPoolExecutor(users) as pool:
        deleted = [i for batch in pool.map(lambda o: o.delete_all(), owners) for i in batch]
    assert sorted(deleted) == sorted(ids)
    assert_no_leftovers(stack, ids)
    assert len(processes_mentioning(ours)) == enclave_processes_before
    for owner in owners:
        assert owner.list_all() == []


# Per-user overrides -----------------------------------------------------------------------


def test_admin_max_enclaves_override_applies_and_deleting_frees_the_licence(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    shown = _admin(stack, "set", owner.user.username, "--max-enclaves", "1")
    assert shown["max_enclaves"] == 1
    assert shown["user_id"] == owner.user.user_id

    first = owner.create_attested()
    error = refusal(lambda: owner.create())
    assert code_and_reason(error) == LIMIT_REACHED
    assert _limit_of(error) == "1"
    assert enclave_row_count(stack, owner_id=owner.user.user_id) == 1

    owner.delete(first.id)
    second = owner.create_attested()
    assert second.id != first.id
    assert code_and_reason(refusal(lambda: owner.create())) == LIMIT_REACHED

    # Zero means no enclaves at all; reset gives the default back.
    _admin(stack, "set", owner.user.username, "--max-enclaves", "0")
    assert _limit_of(refusal(lambda: owner.create())) == "0"
    assert _admin(stack, "reset", owner.user.username)["max_enclaves"] == DEFAULT_LIMIT
    owner.create_attested()
    assert len(owner.list_all()) == 2

    # Another user's licence is unaffected.
    other = new_owner()
    assert _admin(stack, "show", other.user.username)["max_enclaves"] == DEFAULT_LIMIT


def test_admin_enclave_ttl_override_reaps_the_enclave_after_expiry(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    shown = _admin(stack, "set", owner.user.username, "--enclave-ttl-seconds", "10")
    assert shown["enclave_ttl_seconds"] == 10

    enclave = owner.create_attested()
    lifetime = enclave.expire_time.ToDatetime() - enclave.create_time.ToDatetime()
    assert lifetime.total_seconds() == pytest.approx(10, abs=0.01)
    assert processes_mentioning(enclave.id)

    # A watcher waiting for what comes after ATTESTED sees the deletion.
    watcher = owner.watch(enclave.id, from_sequence=7, timeout=60)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watched = pool.submit(list, watcher)

        answers: list[tuple[grpc.StatusCode, str | None]] = []

        def reaped() -> bool:
            try:
                owner.get(enclave.id)
            except grpc.RpcError as exc:
                answers.append(code_and_reason(exc))
                return True
            return False

        began = time.monotonic()
        assert wait_until(reaped, 30, interval=0.5), "the expired enclave was not reaped"
        assert time.monotonic() - began < 30
        assert answers == [(grpc.StatusCode.NOT_FOUND, "ENCLAVE_NOT_FOUND")]
        events = watched.result(30)
    assert phase_names(events) == ["PHASE_DELETED"]
    # Right after ATTESTED (7), unless a re-attestation round wrote its event (8, which
    # this plain watch skips) before the reaper came.
    assert events[0].sequence in (8, 9)
    assert wait_until(lambda: not processes_mentioning(enclave.id), 10)
    assert not enclave_work_dir(stack, enclave.id).exists()
    assert_no_leftovers(stack, [enclave.id])
    # The licence came back with it.
    assert owner.list_all() == []


# Watching ---------------------------------------------------------------------------------


def test_watch_from_sequence_replays_only_later_events(new_owner: Callable[..., Owner]) -> None:
    owner = new_owner()
    enclave = owner.create_attested()
    everything = list(owner.watch(enclave.id, 0))
    assert phase_names(everything) == PROVISIONING_PHASE_NAMES
    assert [e.sequence for e in everything] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.HasField("enclave") for e in everything] == CARRIES_ENCLAVE
    assert [e.HasField("attestation") for e in everything] == CARRIES_ATTESTATION
    assert everything[-1].enclave == owner.get(enclave.id)
    for after in range(7):
        events = list(owner.watch(enclave.id, after))
        assert [e.sequence for e in events] == list(range(after + 1, 8))
        assert phase_names(events) == PROVISIONING_PHASE_NAMES[after:]
        assert [e.message for e in events] == [e.message for e in everything[after:]]
        assert events[-1].attestation == everything[-1].attestation


def test_two_watchers_of_one_enclave_both_get_every_event(
    new_owner: Callable[..., Owner],
) -> None:
    owner = new_owner()
    creating = iter(owner.create_stream())
    accepted = next(creating)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        watchers = [pool.submit(list, owner.watch(accepted.enclave_id, 0)) for _ in range(2)]
        created = [accepted, *creating]
        watched = [w.result(CREATE_TIMEOUT) for w in watchers]
    for events in watched:
        assert phase_names(events) == PROVISIONING_PHASE_NAMES
        assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
        assert [e.time for e in events] == [e.time for e in created]
        assert events[-1].enclave == created[-1].enclave
        assert events[-1].attestation == created[-1].attestation


def test_a_watcher_of_a_deleted_enclave_sees_deleted_and_the_stream_ends(
    stack: Stack, new_owner: Callable[..., Owner]
) -> None:
    owner = new_owner()
    creating = iter(owner.create_stream())
    accepted = next(creating)
    enclave_id = accepted.enclave_id
    received: list[enclave_pb2.WatchEnclaveResponse] = []
    first_event = threading.Event()

    def follow() -> None:
        for event in owner.watch(enclave_id, 0, timeout=60):
            received.append(event)
            first_event.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watching = pool.submit(follow)
        # The watcher is following once it has the first event; delete while it provisions.
        assert first_event.wait(30)
        owner.delete(enclave_id)
        watching.result(30)  # the stream ended by itself
        creation = [accepted, *creating]

    # The delete races provisioning's last write. A stream ends at ATTESTED if it read
    # that event before the delete removed the enclave's events (provisioning won, or
    # its final write committed while the delete was stopping it), else at DELETED.
    # The two streams read at their own moments, so they may end differently: the
    # creator can be told ATTESTED while the watcher, reading after the removal, is
    # told DELETED. Each must tell, in order, a history the enclave really had.
    for stream in (received, creation):
        names = phase_names(stream)
        assert names[-1] in ("PHASE_ATTESTED", "PHASE_DELETED"), names
        history = names if names[-1] == "PHASE_ATTESTED" else names[:-1]
        assert history == PROVISIONING_PHASE_NAMES[: len(history)], names
        assert [e.sequence for e in stream] == list(range(1, len(stream) + 1)), names
    # The work directory goes with the cancelled provisioning's own clean-up, which may
    # finish just after the stream told of the deletion (a notification is that quick).
    assert wait_until(lambda: not enclave_work_dir(stack, enclave_id).exists(), 10)
    assert_no_leftovers(stack, [enclave_id])
