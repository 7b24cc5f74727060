"""A client of a released contract still works against today's server.

For each buf image under contracts/ (the contract as released, see README
"Compatibility"), Python stubs are generated from the image alone into a temporary
directory, and tests/api/contract_client.py, in a process of its own where ``licensing.*``
are those old stubs, calls every RPC of the image that the current contract still has
with the same request and response types and streaming: valid calls must succeed and
decode with the old classes, deliberately invalid ones must be refused with a reason,
never UNIMPLEMENTED.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from tests.support import REPO, Stack

CONTRACTS = sorted((REPO / "contracts").glob("v*.binpb"))
CLIENT = Path(__file__).with_name("contract_client.py")

#: RPCs of a released contract that this test does not call, and why.
NOT_CALLED = {
    # Served only by a backend running the Kubernetes runtime, to enclave pods (with a
    # projected ServiceAccount token); tests/runtimes/kubernetes drive it there.
    "/enclave.v1.EnrollmentService/Enroll": "served to enclave pods on the Kubernetes runtime",
}
#: Internal packages: the frontend and backend ship together (buf.yaml's breaking ignore).
INTERNAL_PACKAGES = ("licensing.control.",)

#: The current contract: every generated module of today's protos/.
CURRENT_MODULES = [
    "enclave.v1.enrollment_pb2",
    "enclave.v1.workload_pb2",
    "licensing.v1.attestation_pb2",
    "licensing.v1.auth_pb2",
    "licensing.v1.enclave_pb2",
    "licensing.v1.trust_pb2",
    "licensing.control.v1.control_pb2",
]


@dataclass(frozen=True)
class Rpc:
    path: str  # /package.Service/Method
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool


def image_files(image: Path) -> descriptor_pb2.FileDescriptorSet:
    """A buf image is a FileDescriptorSet on the wire (its extra fields are unknown here)."""
    return descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())


def released_rpcs(image: Path) -> list[Rpc]:
    rpcs = []
    for file in image_files(image).file:
        for service in file.service:
            for method in service.method:
                rpcs.append(
                    Rpc(
                        f"/{file.package}.{service.name}/{method.name}",
                        method.input_type.lstrip("."),
                        method.output_type.lstrip("."),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return rpcs


def still_served_unchanged(rpc: Rpc) -> bool:
    """Whether the current contract has ``rpc`` with the same types and streaming.

    Messages may have grown compatible fields (buf breaking allows those): calling the
    RPC with the old messages is exactly what shows they are compatible.
    """
    for module in CURRENT_MODULES:
        importlib.import_module(module)
    name = rpc.path.lstrip("/").replace("/", ".")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return False
    return (
        method.input_type.full_name == rpc.input_type
        and method.output_type.full_name == rpc.output_type
        and method.client_streaming == rpc.client_streaming
        and method.server_streaming == rpc.server_streaming
    )


def generate_stubs(image: Path, out: Path) -> Path:
    """grpcio stubs of ``image``'s own files (not its imports), from the image alone."""
    files = [f.name for f in image_files(image).file if not f.name.startswith("google/protobuf/")]
    out.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={image}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ],
        check=True,
        timeout=120,
    )
    # Regular packages, so nothing else on the path can be merged into them.
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if directory != out:
            (directory / "__init__.py").touch()
    return out


@pytest.fixture(scope="module", params=CONTRACTS, ids=lambda p: p.stem)
def contract(request: pytest.FixtureRequest) -> Path:
    image: Path = request.param
    return image


def test_a_released_contract_is_committed() -> None:
    assert [p.name for p in CONTRACTS][:1] == ["v0.1.0.binpb"]


def test_the_unchanged_rpcs_are_every_rpc_of_v0_1_0_today() -> None:
    """Nothing changed since v0.1.0: the walk below covers every released RPC."""
    image = REPO / "contracts" / "v0.1.0.binpb"
    rpcs = released_rpcs(image)
    assert len(rpcs) == 24
    assert all(still_served_unchanged(rpc) for rpc in rpcs)


def test_an_rpc_whose_types_or_streaming_changed_is_not_unchanged() -> None:
    rpc = next(
        r
        for r in released_rpcs(REPO / "contracts" / "v0.1.0.binpb")
        if r.path == "/licensing.v1.EnclaveService/GetEnclave"
    )
    assert still_served_unchanged(rpc)
    for changed in (
        dataclasses.replace(rpc, path="/licensing.v1.EnclaveService/GetEnclaveGone"),
        dataclasses.replace(rpc, output_type="licensing.v1.ListEnclavesResponse"),
        dataclasses.replace(rpc, server_streaming=True),
    ):
        assert not still_served_unchanged(changed), changed


def test_every_rpc_left_uncalled_is_in_the_contract_with_a_reason(contract: Path) -> None:
    paths = {rpc.path for rpc in released_rpcs(contract)}
    assert NOT_CALLED.keys() <= paths
    assert all(NOT_CALLED.values())


def test_a_client_of_the_released_contract_is_answered_by_todays_server(
    stack: Stack, contract: Path, tmp_path: Path
) -> None:
    rpcs = [
        rpc
        for rpc in released_rpcs(contract)
        if still_served_unchanged(rpc) and not rpc.path.lstrip("/").startswith(INTERNAL_PACKAGES)
    ]
    to_call = {rpc.path for rpc in rpcs} - NOT_CALLED.keys()
    assert to_call, "the contract has public RPCs"
    stubs = generate_stubs(contract, tmp_path / "stubs")
    config = {
        "enroll_addr": stack.enroll_addr,
        "api_addr": stack.api_addr,
        "ca_path": str(stack.ca_path),
    }
    # Not the repository root as cwd: nothing there may shadow the old stubs.
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(stubs), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcomes: dict[str, list[dict[str, Any]]] = json.loads(result.stdout)

    missing = sorted(to_call - outcomes.keys())
    assert not missing, f"the old client calls no {missing}: add a call to contract_client.py"
    for path in sorted(to_call):
        for outcome in outcomes[path]:
            assert outcome["code"] != "UNIMPLEMENTED", (path, outcome)
            if outcome["valid"]:
                assert outcome["code"] == "OK", (path, outcome)
                rpc = next(r for r in rpcs if r.path == path)
                assert outcome["response"] == rpc.output_type, (path, outcome)
            else:
                # Refused as bad input, with the reason our errors always carry.
                assert outcome["code"] != "OK", (path, outcome)
                assert outcome["reason"], (path, outcome)
    # The evidence and the enclave's answers mean what they meant.
    assert outcomes["/licensing.v1.AttestationService/GetAttestation"][-1]["verified"]
    assert outcomes["/enclave.v1.WorkloadService/GetSecret"][-1]["same_value"]
    assert outcomes["/enclave.v1.WorkloadService/Sign"][-1]["signature_verified"]
