"""One swtpm for the session, manufactured in a temporary directory with its own CA."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from licensing_server.tpm import SwtpmSimulator, TpmDevice


def free_port_pair() -> int:
    """A port P with P + 1 also free: swtpm takes commands on P and control on P + 1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwtpmSimulator]:
    """Tests that stop or kill it start it again on the same port before they end."""
    simulator = SwtpmSimulator.prepare(tmp_path_factory.mktemp("swtpm"))
    simulator.start(free_port_pair())
    yield simulator
    simulator.stop()


@pytest.fixture
async def device(swtpm: SwtpmSimulator) -> AsyncIterator[TpmDevice]:
    async with TpmDevice(swtpm.tcti, command_timeout=5.0) as tpm:
        yield tpm
