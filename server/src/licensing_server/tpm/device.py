"""The TPM as the rest of the server sees it: async methods, bytes in and out.

The transport is the TCTI string given to the constructor
(``"swtpm:host=127.0.0.1,port=2321"`` in tests, ``"device:/dev/tpmrm0"`` in
production), so the same code attests against swtpm and a hardware TPM.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from licensing_server.observability import TpmMetrics
from licensing_server.tpm._connection import TpmConnection
from licensing_server.tpm._errors import TPM_UNAVAILABLE, TpmCommandFailed, TpmUnavailable
from licensing_server.tpm._keys import DEFAULT_AK_HANDLE, check_ak_handle, check_pcrs
from licensing_server.tpm._results import AttestationKeyInfo, LockoutState, QuoteResult
from licensing_server.tpm._worker import TpmThread

__all__ = ["DEFAULT_AK_HANDLE", "TpmDevice"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: TCTIs of simulators, which lose power when their process stops (see ``close``).
_SIMULATOR_TCTIS = ("swtpm", "mssim")

MAX_QUALIFYING_DATA = 64  # TPM2B_DATA holds a TPMT_HA (66 bytes); a hash is what belongs here


class TpmDevice:
    """One TPM, reached through ``tcti``, with every command on one dedicated thread.

    Each call fails with ``TpmUnavailable`` when the TPM does not answer within
    ``command_timeout`` seconds (``key_creation_timeout`` for calls that create a
    primary key: an RSA EK takes seconds on some hardware TPMs) or the transport
    breaks; the next call reconnects. ``TpmCommandFailed`` means the TPM answered
    and refused; ``TpmLockedOut`` (a ``TpmUnavailable``) that it is in
    dictionary-attack lockout. Calls are served in order; waiting for a turn is
    not timed, so a caller bounds that with its own deadline (cancelling is safe).

    ``metrics`` times every command (``licensing_tpm_command_seconds``).

    ``shutdown_on_close`` (default: for simulator TCTIs) sends TPM2_Shutdown when
    the device closes: a simulator stops with its process, and without it every
    stop is a disorderly shutdown. A hardware TPM is shut down by the kernel.
    """

    def __init__(
        self,
        tcti: str,
        *,
        command_timeout: float = 10.0,
        key_creation_timeout: float = 120.0,
        shutdown_on_close: bool | None = None,
        metrics: TpmMetrics | None = None,
    ) -> None:
        if command_timeout <= 0 or key_creation_timeout <= 0:
            raise ValueError("TPM timeouts must be positive")
        self._tcti = tcti
        self._metrics = metrics or TpmMetrics()
        self._command_timeout = command_timeout
        self._key_creation_timeout = key_creation_timeout
        self._turn = asyncio.Lock()
        self._thread: TpmThread | None = None
        self._in_flight: asyncio.Future[Any] | None = None
        self._generation = itertools.count(1)
        self._closed = False
        if shutdown_on_close is None:
            shutdown_on_close = tcti.startswith(_SIMULATOR_TCTIS)
        self._shutdown_on_close = shutdown_on_close

    @property
    def tcti(self) -> str:
        return self._tcti

    async def __aenter__(self) -> TpmDevice:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Shut the TPM down if asked to, then release the connection and the thread.

        A hung command is not waited for longer than the command timeout (5 s at most).
        """
        if self._closed:
            return
        if self._shutdown_on_close and self._thread is not None:
            try:
                await self._run(
                    "shutdown",
                    "shut down the TPM",
                    lambda c: c.shutdown(),
                    limit=min(self._command_timeout, 5.0),
                )
            except (TpmUnavailable, TpmCommandFailed) as exc:
                _log.warning("the TPM was not shut down in order: %s", exc)
            else:
                _log.info("TPM shut down in order")
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.retire()
            await asyncio.to_thread(thread.join, min(self._command_timeout, 5.0))

    # -- endorsement and attestation keys -------------------------------------

    async def ek_certificate_der(self) -> bytes:
        """The EK certificate from NV (RSA 0x01c00002, else ECC P-256 0x01c0000a)."""
        return await self._run(
            "ek_certificate", "read the EK certificate", lambda c: c.ek_certificate_der()
        )

    async def ek_public(self) -> bytes:
        """The marshalled TPM2B_PUBLIC of the EK that certificate certifies."""
        return await self._run(
            "ek_public", "create the EK", lambda c: c.ek_public(), limit=self._key_creation_timeout
        )

    async def attestation_key(
        self, persistent_handle: int = DEFAULT_AK_HANDLE
    ) -> AttestationKeyInfo:
        """The AK persisted at ``persistent_handle``, created there on first use.

        It survives restarts of the process and of the TPM; if the handle holds
        something that is not a restricted P-256 signing key, this raises
        ``TpmCommandFailed`` (reason ``TPM_AK_HANDLE_CONFLICT``) instead of using it.
        """
        check_ak_handle(persistent_handle)
        return await self._run(
            "attestation_key",
            "load the attestation key",
            lambda c: c.attestation_key(persistent_handle),
            limit=self._key_creation_timeout,
        )

    async def activate_credential(
        self,
        credential_blob: bytes,
        encrypted_secret: bytes,
        *,
        ak_handle: int = DEFAULT_AK_HANDLE,
    ) -> bytes:
        """Recover the secret of a MakeCredential(EK public, secret, AK name).

        The inputs are the marshalled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
        Success proves the AK lives in the TPM holding the EK; a credential made for
        another key raises ``TpmCommandFailed`` (reason ``TPM_CREDENTIAL_REJECTED``).
        """
        check_ak_handle(ak_handle)
        return await self._run(
            "activate_credential",
            "activate a credential",
            lambda c: c.activate_credential(credential_blob, encrypted_secret, ak_handle),
            limit=self._key_creation_timeout,
        )

    # -- PCRs and quotes -------------------------------------------------------

    async def extend_pcr(self, pcr: int, sha256_digest: bytes) -> None:
        """PCR[pcr] := SHA-256(PCR[pcr] || digest) in the sha256 bank."""
        (pcr,) = check_pcrs([pcr])
        if len(sha256_digest) != 32:
            raise ValueError("a sha256 PCR extend takes a 32-byte digest")
        await self._run(
            "extend_pcr", f"extend PCR {pcr}", lambda c: c.extend_pcr(pcr, sha256_digest)
        )

    async def reset_pcr(self, pcr: int) -> None:
        """Zero a resettable PCR (16 and 23 at locality 0 on a PC-client TPM)."""
        (pcr,) = check_pcrs([pcr])
        await self._run("reset_pcr", f"reset PCR {pcr}", lambda c: c.reset_pcr(pcr))

    async def read_pcrs(self, pcrs: list[int]) -> dict[int, bytes]:
        """Current sha256-bank values of ``pcrs``."""
        ordered = check_pcrs(pcrs)
        return await self._run("read_pcrs", "read PCRs", lambda c: c.read_pcrs(ordered))

    async def quote(
        self, qualifying_data: bytes, pcrs: list[int], *, ak_handle: int = DEFAULT_AK_HANDLE
    ) -> QuoteResult:
        """An AK-signed quote over ``pcrs`` binding ``qualifying_data`` (a hash, <= 64 bytes).

        The PCR values are read right after the quote on the TPM thread and checked
        against the quote's pcrDigest, so they are exactly the values quoted.
        """
        if len(qualifying_data) > MAX_QUALIFYING_DATA:
            raise ValueError(f"qualifying data holds at most {MAX_QUALIFYING_DATA} bytes")
        ordered = check_pcrs(pcrs)
        check_ak_handle(ak_handle)
        return await self._run(
            "quote", "quote", lambda c: c.quote(qualifying_data, ordered, ak_handle)
        )

    async def clock_info(self) -> tuple[int, int]:
        """(resetCount, restartCount): a reset zeroes PCRs, so quotes are compared per reset."""
        return await self._run("clock_info", "read the clock", lambda c: c.clock_info())

    async def loaded_handle_count(self) -> int:
        """Transient objects and sessions loaded: stays 0 between calls unless something leaks."""
        return await self._run(
            "loaded_handle_count", "list handles", lambda c: c.loaded_handle_count()
        )

    # -- dictionary-attack lockout ---------------------------------------------

    async def lockout_state(self) -> LockoutState:
        """Whether the TPM is in DA lockout, its counter, limit and recovery interval."""
        return await self._run(
            "lockout_state", "read the lockout state", lambda c: c.lockout_state()
        )

    async def clear_lockout(self) -> None:
        """TPM2_DictionaryAttackLockReset with an empty lockout authorization (swtpm's)."""
        await self._run("clear_lockout", "clear the lockout", lambda c: c.clear_lockout())

    # -- the TPM thread ---------------------------------------------------------

    async def _run(
        self,
        command: str,
        action: str,
        operation: Callable[[TpmConnection], _T],
        *,
        limit: float | None = None,
    ) -> _T:
        """``operation`` on the TPM thread; ``command`` labels its latency metric
        (one of a fixed set: this class's method names), ``action`` names it in errors."""
        if self._closed:
            raise RuntimeError("the TpmDevice is closed")
        if limit is None:
            limit = self._command_timeout
        async with self._turn:
            # A caller that was cancelled left its command running: let it finish
            # first, so this command's time limit covers this command only.
            if self._in_flight is not None and not await self._finishes(self._in_flight, limit):
                raise self._abandon(action, limit)
            thread = self._current_thread()
            future: Future[_T] = thread.submit(operation, action, command)
            waiter = asyncio.wrap_future(future)
            waiter.add_done_callback(_consume)
            self._in_flight = waiter
            if not await self._finishes(waiter, limit):
                raise self._abandon(action, limit)
            self._in_flight = None
            return waiter.result()

    @staticmethod
    async def _finishes(waiter: asyncio.Future[_T], limit: float) -> bool:
        # asyncio.wait neither cancels ``waiter`` on timeout nor when our caller is
        # cancelled: the command runs to its end on the TPM thread either way.
        done, _ = await asyncio.wait({waiter}, timeout=limit)
        return bool(done)

    def _current_thread(self) -> TpmThread:
        if self._thread is None:
            tcti = self._tcti
            self._thread = TpmThread(
                lambda: TpmConnection(tcti),
                name=f"tpm-{next(self._generation)}",
                metrics=self._metrics,
            )
        return self._thread

    def _abandon(self, action: str, limit: float) -> TpmUnavailable:
        """Give up on a hung thread; the next call gets a new thread and connection."""
        thread, self._thread = self._thread, None
        self._in_flight = None
        if thread is not None:
            thread.retire()
        return TpmUnavailable(
            TPM_UNAVAILABLE, f"the TPM did not answer ({action}) within {limit:g} s"
        )


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of abandoned calls so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()
