"""The frontend's quote client batches: requests that arrive while its calls are out go
together in one ``QuoteBatch``, each caller gets its own answer or error, and a backend
without ``QuoteBatch`` (an older one, mid-upgrade) gets unary ``Quote`` calls.

The backends here are stand-ins in this process (real grpc.aio servers on loopback whose
servicers echo the nonce): they let a test hold a call out and count calls, which the
real backend cannot. The real backend's ``QuoteBatch`` is tested in
tests/attestation/test_attestation.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from licensing.control.v1 import control_pb2, control_pb2_grpc
from licensing.v1 import attestation_pb2

from licensing_common.errors import NotFound
from licensing_server.frontend.backend_client import QUOTE_HOLD_SECONDS, BackendQuoteClient

UNKNOWN = "00000000-0000-0000-0000-000000000000"


class _StandIn(control_pb2_grpc.QuoteServiceServicer):
    """What a stand-in does not serve answers UNIMPLEMENTED, as grpc does."""

    async def Quote(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    async def QuoteBatch(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    async def RequestReattestation(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


class _BatchingBackend(_StandIn):
    """Answers each request with its nonce as the 'attestation', after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[int] = []

    async def QuoteBatch(self, request: Any, context: Any) -> Any:
        self.batches.append(len(request.requests))
        await asyncio.sleep(self.delay)
        results = []
        for one in request.requests:
            if one.enclave_id == UNKNOWN:
                error = control_pb2.QuoteError(
                    code=grpc.StatusCode.NOT_FOUND.value[0],
                    reason="ENCLAVE_NOT_FOUND",
                    message="no such enclave",
                )
                results.append(control_pb2.QuoteResult(error=error))
            else:
                results.append(control_pb2.QuoteResult(attestation=one.nonce))
        return control_pb2.QuoteBatchResponse(results=results)


class _OlderBackend(_StandIn):
    """A backend from before QuoteBatch: grpc answers UNIMPLEMENTED for it."""

    def __init__(self) -> None:
        self.quotes = 0

    async def Quote(self, request: Any, context: Any) -> Any:
        self.quotes += 1
        return control_pb2.QuoteResponse(
            attestation=attestation_pb2.Attestation(quote=request.nonce)
        )


async def _serve(servicer: control_pb2_grpc.QuoteServiceServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    control_pb2_grpc.add_QuoteServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def batching() -> AsyncIterator[tuple[_BatchingBackend, BackendQuoteClient]]:
    backend = _BatchingBackend(delay=0.05)
    server, address = await _serve(backend)
    async with grpc.aio.insecure_channel(address) as channel:
        yield backend, BackendQuoteClient(channel)
    await server.stop(None)


async def test_a_burst_of_quotes_goes_out_in_a_few_calls_each_caller_its_own_answer(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    backend, client = batching
    nonces = [os.urandom(32) for _ in range(200)]
    answers = await asyncio.gather(*(client.quote(str(i), n) for i, n in enumerate(nonces)))
    assert answers == nonces
    assert sum(backend.batches) == 200
    assert len(backend.batches) <= 2, backend.batches  # one turn of the loop: one call


async def test_one_request_s_error_reaches_only_its_caller(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    backend, client = batching
    good = os.urandom(32)
    results = await asyncio.gather(
        client.quote("1", good), client.quote(UNKNOWN, good), return_exceptions=True
    )
    assert results[0] == good
    assert isinstance(results[1], NotFound)
    assert results[1].reason == "ENCLAVE_NOT_FOUND"
    assert backend.batches == [2]


async def test_a_lone_quote_is_sent_at_once_in_a_call_of_its_own(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    backend, client = batching
    for _ in range(3):
        nonce = os.urandom(32)
        assert await client.quote("1", nonce) == nonce
    assert backend.batches == [1, 1, 1]


async def test_requests_made_while_a_young_call_is_out_go_together(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    backend, client = batching
    backend.delay = 1.0  # a slow TPM: the first call stays out
    first = asyncio.ensure_future(client.quote("1", os.urandom(32)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    held = []
    for _ in range(10):  # within the hold of the call just sent
        held.append(asyncio.ensure_future(client.quote("1", os.urandom(32))))
        await asyncio.sleep(0)
    await asyncio.sleep(QUOTE_HOLD_SECONDS + 0.1)
    # Sent together once the hold ran out, long before the first call returned.
    assert backend.batches == [1, 10]
    await asyncio.gather(first, *held)


async def test_a_call_out_longer_than_the_hold_holds_nobody(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    """Behind a slow TPM a call is out for a whole quote: a request held that long would
    miss the next quote, so past the hold each request goes at once."""
    backend, client = batching
    backend.delay = 1.0
    calls = []
    for _ in range(3):
        calls.append(asyncio.ensure_future(client.quote("1", os.urandom(32))))
        await asyncio.sleep(QUOTE_HOLD_SECONDS * 4)
    assert backend.batches == [1, 1, 1]
    await asyncio.gather(*calls)


async def test_a_caller_that_gave_up_is_not_asked_for(
    batching: tuple[_BatchingBackend, BackendQuoteClient],
) -> None:
    backend, client = batching
    backend.delay = 1.0
    first = asyncio.ensure_future(client.quote("1", os.urandom(32)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    kept = [asyncio.ensure_future(client.quote("1", os.urandom(32))) for _ in range(4)]
    gave_up = asyncio.ensure_future(client.quote("1", os.urandom(32)))
    await asyncio.sleep(0)
    gave_up.cancel()  # while held
    await asyncio.gather(first, *kept)
    assert backend.batches == [1, 4]


async def test_an_older_backend_gets_unary_quotes() -> None:
    backend = _OlderBackend()
    server, address = await _serve(backend)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            client = BackendQuoteClient(channel)
            nonces = [os.urandom(32) for _ in range(5)]
            answers = await asyncio.gather(*(client.quote("1", n) for n in nonces))
            assert [attestation_pb2.Attestation.FromString(a).quote for a in answers] == nonces
            assert await client.quote("1", nonces[0])
            assert backend.quotes == 6
    finally:
        await server.stop(None)
