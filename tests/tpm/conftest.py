"""One swtpm for the session, manufactured in a temporary directory with its own CA."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from licensing_server.tpm import SwtpmSimulator, TpmDevice
from tests.support import free_port_pair


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
