"""``LocalProcessRuntime`` with a port range: concurrent places never share a port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from licensing_server.runtimes import (
    ExecLauncher,
    LocalProcessRuntime,
    RuntimeFailure,
    WorkloadSpec,
)
from tests.provisioning.test_enclave_ports import _free_port_range

#: Stands in for the enclave: runs until stopped, whatever arguments it gets.
IDLE = ("/bin/sh", "-c", "exec sleep 60")


def _spec(n: int) -> WorkloadSpec:
    return WorkloadSpec(f"enclave-{n}", "owner", "{}", "ca", "issuer", "audience")


def _port(runtime: LocalProcessRuntime, enclave_id: str) -> int:
    return runtime._port_of[enclave_id]


def test_concurrent_places_reserve_distinct_ports(tmp_path: Path) -> None:
    low, high = _free_port_range(5)

    async def main() -> None:
        runtime = LocalProcessRuntime(tmp_path, launcher=ExecLauncher(IDLE), ports=(low, high))
        try:
            results = await asyncio.gather(
                *(runtime.place(_spec(n)) for n in range(8)), return_exceptions=True
            )
            placed = [f"enclave-{n}" for n, r in enumerate(results) if not isinstance(r, Exception)]
            refused = [r for r in results if isinstance(r, Exception)]
            assert sorted(_port(runtime, e) for e in placed) == list(range(low, high + 1))
            assert len(refused) == 3, refused
            for failure in refused:
                assert isinstance(failure, RuntimeFailure)
                assert failure.reason == "ENCLAVE_PORTS_EXHAUSTED"

            # Stopping one gives its port to the next place; a refused one held none.
            freed = _port(runtime, placed[0])
            await runtime.stop(placed[0], "")
            await runtime.place(_spec(99))
            assert _port(runtime, "enclave-99") == freed
        finally:
            await runtime.close()

    asyncio.run(main())


def test_a_failed_place_gives_its_port_back(tmp_path: Path) -> None:
    low, _ = _free_port_range(1)

    async def main() -> None:
        runtime = LocalProcessRuntime(
            tmp_path, launcher=ExecLauncher(("/nonexistent",)), ports=(low, low)
        )
        with pytest.raises(RuntimeFailure) as failed:
            await runtime.place(_spec(1))
        assert failed.value.reason == "ENCLAVE_START_FAILED"
        assert runtime._port_of == {}

    asyncio.run(main())
