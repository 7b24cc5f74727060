"""A TPM that dies or hangs gives TpmUnavailable in bounded time; the device then recovers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import pytest

from licensing_server.tpm import SwtpmSimulator, TpmDevice, TpmUnavailable

PCR = 23
TIMEOUT = 1.5


async def test_killed_tpm_is_unavailable_then_recovers_after_restart(
    swtpm: SwtpmSimulator,
) -> None:
    async with TpmDevice(swtpm.tcti, command_timeout=TIMEOUT) as device:
        ak = await device.attestation_key()
        reset_before, restart_before = await device.clock_info()
        await device.extend_pcr(PCR, hashlib.sha256(b"before the crash").digest())
        assert await device.read_pcrs([PCR]) != {PCR: bytes(32)}

        swtpm.kill()
        try:
            for call in (
                device.quote(bytes(32), [PCR]),
                device.read_pcrs([PCR]),
                device.clock_info(),
            ):
                started = time.monotonic()
                with pytest.raises(TpmUnavailable) as caught:
                    await call
                assert time.monotonic() - started < TIMEOUT + 1.0
                assert caught.value.reason == "TPM_UNAVAILABLE"
        finally:
            swtpm.start(swtpm.port)

        # Same device object: it reconnects by itself.
        quote = await device.quote(bytes(32), [PCR])
        reset_after, restart_after = await device.clock_info()
        print(
            f"\nafter kill + restart: resetCount {reset_before} -> {reset_after}, "
            f"restartCount {restart_before} -> {restart_after}, PCR 23 zero: "
            f"{quote.pcr_values[PCR] == bytes(32)}"
        )
        # startup-clear after a crash is a TPM reset: PCRs zeroed, resetCount up.
        assert reset_after > reset_before
        assert quote.reset_count == reset_after
        assert quote.pcr_values[PCR] == bytes(32)
        assert await device.attestation_key() == ak


async def test_hung_tpm_times_out_and_a_fresh_thread_takes_over(swtpm: SwtpmSimulator) -> None:
    """SIGSTOP: the connection is accepted but never answered, so ESAPI blocks in read."""
    async with TpmDevice(swtpm.tcti, command_timeout=TIMEOUT) as device:
        await device.clock_info()
        pid = swtpm.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(TpmUnavailable, match="did not answer"):
                await device.quote(bytes(32), [PCR])
            elapsed = time.monotonic() - started
            assert TIMEOUT <= elapsed < TIMEOUT + 1.0
        finally:
            os.kill(pid, signal.SIGCONT)
        # The abandoned thread finishes its command and closes; a new one serves.
        quote = await device.quote(bytes(32), [PCR])
        assert len(quote.pcr_values[PCR]) == 32
        assert await device.loaded_handle_count() == 0


async def test_unreachable_tpm_is_unavailable() -> None:
    async with TpmDevice("swtpm:host=127.0.0.1,port=1", command_timeout=TIMEOUT) as device:
        with pytest.raises(TpmUnavailable):
            await device.clock_info()


async def test_cancelled_caller_does_not_eat_the_next_callers_time(swtpm: SwtpmSimulator) -> None:
    """A caller cancelled mid-command leaves it running; the next call waits for it first."""
    async with TpmDevice(swtpm.tcti, command_timeout=TIMEOUT) as device:
        await device.attestation_key()
        task = asyncio.ensure_future(device.quote(bytes(32), [PCR]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await device.clock_info())[0] >= 0
