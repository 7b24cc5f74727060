"""The API reference (docs/api.md) is current and names every reason the code can answer.

Reasons are found by reading the source (every DomainError raised or built, with the
status code its class maps to; every ErrorInfo made; every failure reason a runtime or
the provisioner records), so a new reason without a line in the .proto comments, or one
documented under the wrong code, fails here rather than in a user's bug report.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "server" / "src", ROOT / "enclave" / "src"]
API_MD = ROOT / "docs" / "api.md"
# Where the runtimes and the provisioner record an enclave's failure_reason.
FAILURE_PACKAGES = ("licensing_server/runtimes", "licensing_server/provisioning")
FAILURE_CALLS = {"RuntimeFailure", "logged_failure", "fail", "_fail_current", "_fail"}
REASON = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|INTERNAL")
# Reasons made where no constructor shows them: the frontend's name for a backend
# error that carried no ErrorInfo (with the backend's code). Each must still be a literal
# in that file.
UNSEEN_BY_THE_SCAN = {
    "BACKEND_ERROR": (
        "licensing_server/frontend/backend_client.py",
        {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"},
    )
}
#: Upper-case names in the reference that are not reasons: TPM 2.0 structures.
TPM_STRUCTURES = {"TPMS_ATTEST", "TPMT_SIGNATURE", "TPM2B_PUBLIC"}


@functools.cache
def _api_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "scripts" / "api_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["api_docs"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for root in SOURCES for p in sorted(root.rglob("*.py"))}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _domain_error_codes(trees: dict[Path, ast.Module]) -> dict[str, str]:
    """DomainError's subclasses in our code, each with the status code it maps to."""
    from licensing_common.rpc.errors import STATUS_CODES

    codes = {cls.__name__: code.name for cls, code in STATUS_CODES.items()}
    grew = True
    while grew:
        grew = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in codes:
                    inherited = [codes[b] for b in map(_name, node.bases) if b in codes]
                    if inherited:
                        codes[node.name] = inherited[0]
                        grew = True
    return codes


def _constants(trees: dict[Path, ast.Module]) -> dict[str, ast.expr]:
    """Module-level NAME = value assignments (reason constants, argument tuples)."""
    found: dict[str, ast.expr] = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = _name(node.targets[0]), node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = _name(node.target), node.value
            else:
                continue
            if target is not None:
                found[target] = value
    return found


def _literal(node: ast.expr | None, constants: dict[str, ast.expr]) -> str | None:
    """The string a reason argument stands for, through constants and starred tuples."""
    if isinstance(node, ast.Starred):
        node = node.value
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    if isinstance(node, ast.Tuple) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _class_of(tree: ast.Module, call: ast.Call) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(c is call for c in ast.walk(node)):
            return node.name
    return None


def error_info_reasons() -> dict[str, set[str]]:
    """Every ErrorInfo reason the servers and the enclave can send, with its status codes."""
    trees = _trees()
    codes = _domain_error_codes(trees)
    constants = _constants(trees)
    reasons: dict[str, set[str]] = {}
    for tree in trees.values():
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            called = _name(call.func)
            if called in codes:
                code, argument = codes[called], call.args[0] if call.args else None
            elif called == "ErrorInfo":
                code = "INTERNAL"  # the only one made by hand: to_status builds the others
                argument = next((k.value for k in call.keywords if k.arg == "reason"), None)
            elif (
                called == "__init__"
                and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Call)
                and _name(call.func.value.func) == "super"
                and (owner := _class_of(tree, call)) in codes
                and call.args
            ):
                code, argument = codes[owner], call.args[0]  # a subclass fixing its reason
            else:
                continue
            reason = _literal(argument, constants)
            if reason is not None and REASON.fullmatch(reason):
                reasons.setdefault(reason, set()).add(code)
    for reason, (where, passed_codes) in UNSEEN_BY_THE_SCAN.items():
        file = next(root / where for root in SOURCES if (root / where).exists())
        assert f'"{reason}"' in file.read_text(), f"{reason} is no longer made in {where}"
        reasons.setdefault(reason, set()).update(passed_codes)
    return reasons


def documented_codes(text: str) -> dict[str, set[str]]:
    """The status codes the reference gives each reason: `CODE REASON` and `CODE (REASON`.

    A reason belongs to the codes last named before it on its line (one bullet, table row
    or paragraph); codes joined only by commas, "or" or "and" are named together.
    """
    status = {code.name for code in grpc.StatusCode}
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        current: set[str] = set()
        previous: tuple[str, int] | None = None  # ("code" or "reason", where it ended)
        for token in re.finditer(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b", line):
            word = token.group()
            after_code = previous is not None and previous[0] == "code"
            if word in status and not (word == "INTERNAL" and after_code):
                joined = after_code and re.fullmatch(
                    r"[\s,]*(?:or|and)?[\s,]*",
                    line[previous[1] : token.start()] if previous else "",
                )
                current = current | {word} if joined else {word}
                previous = ("code", token.end())
            elif current and REASON.fullmatch(word):
                found.setdefault(word, set()).update(current)
                previous = ("reason", token.end())
    return found


def failure_reasons() -> dict[str, str]:
    """Every Enclave.failure_reason a runtime or the provisioner records itself."""
    reasons: dict[str, str] = {}
    for path, tree in _trees().items():
        if not any(package in path.as_posix() for package in FAILURE_PACKAGES):
            continue
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            if _name(call.func) not in FAILURE_CALLS:
                continue
            for argument in call.args:
                value = _literal(argument, {})
                if value is not None and REASON.fullmatch(value):
                    reasons.setdefault(value, str(path.relative_to(ROOT)))
    return reasons


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Z][A-Z0-9_]+", text))


def test_the_scan_sees_reasons_however_they_are_raised() -> None:
    reasons = error_info_reasons()
    # A literal, a reason a subclass fixes, a constant, a starred tuple, an ErrorInfo.
    assert reasons["NONCE_INVALID"] == {"INVALID_ARGUMENT"}
    assert reasons["TPM_LOCKED_OUT"] == {"UNAVAILABLE"}
    assert reasons["TPM_UNAVAILABLE"] == {"UNAVAILABLE"}
    assert reasons["INVALID_CREDENTIALS"] == {"UNAUTHENTICATED"}
    assert reasons["INTERNAL"] == {"INTERNAL"}
    assert reasons["ENCLAVE_FAILED"] == {"FAILED_PRECONDITION", "UNAVAILABLE"}
    assert "SECRET_NOT_FOUND" in reasons  # the enclave's own
    assert len(reasons) > 90
    assert {"ENCLAVE_START_FAILED", "WORKLOAD_LOST", "PROVISIONING_ABANDONED"} <= set(
        failure_reasons()
    )


def test_every_error_info_reason_is_documented() -> None:
    documented = _words(API_MD.read_text())
    missing = {r: where for r, where in error_info_reasons().items() if r not in documented}
    assert not missing, f"add these reasons to the .proto comments, then make generate: {missing}"


def test_every_reason_the_reference_names_is_one_the_code_answers() -> None:
    """A reason removed from the code must leave the docs too."""
    from licensing.v1 import enclave_pb2

    named = set(re.findall(r"\b(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|INTERNAL)\b", API_MD.read_text()))
    known = set(error_info_reasons()) | set(failure_reasons())
    known |= {code.name for code in grpc.StatusCode} | set(enclave_pb2.Phase.keys())
    known |= TPM_STRUCTURES
    assert named - known == set()


def test_every_reason_is_documented_with_the_codes_it_comes_with() -> None:
    raised = error_info_reasons()
    documented = documented_codes(API_MD.read_text())
    undocumented = sorted(set(raised) - set(documented))
    assert not undocumented, f"name these reasons after their status code: {undocumented}"
    wrong = {
        r: (codes, raised[r]) for r, codes in documented.items() if codes - raised.get(r, codes)
    }
    assert not wrong, f"documented code, actual codes: {wrong}"


def test_every_failure_reason_is_documented_on_the_enclave() -> None:
    enclave_proto = (ROOT / "protos" / "licensing" / "v1" / "enclave.proto").read_text()
    field_doc = enclave_proto.split("message Enclave {", 1)[1].split("failure_reason = 10;")[0]
    missing = {r: where for r, where in failure_reasons().items() if r not in _words(field_doc)}
    assert not missing, f"document these in Enclave.failure_reason: {missing}"


@pytest.fixture(scope="module")
def buf_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess

    image = tmp_path_factory.mktemp("buf") / "image.binpb"
    buf = Path(sys.executable).parent / "buf"
    subprocess.run(
        [str(buf), "build", "--exclude-imports", "-o", str(image)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": f"{buf.parent}:{os.environ.get('PATH', '')}"},
    )
    return image


def test_the_committed_reference_is_what_the_protos_make(buf_image: Path) -> None:
    docs = _api_docs()
    rendered = docs.Renderer(docs.load_image(buf_image)).render()
    assert API_MD.read_text() == rendered, "docs/api.md is stale: run make generate"


def test_the_reference_has_a_section_for_every_service_message_and_enum(buf_image: Path) -> None:
    docs = _api_docs()
    text = API_MD.read_text()
    for file in docs.load_image(buf_image):
        for service in file.service:
            assert f'<a id="{file.package}.{service.name}"></a>' in text
            for method in service.method:
                assert f"| `{method.name}` |" in text
        for message in file.message_type:
            assert f'<a id="{file.package}.{message.name}"></a>' in text
            for field in message.field:
                assert f"| `{field.name}` | {field.number} |" in text
        for enum in file.enum_type:
            for value in enum.value:
                assert f"| `{value.name}` | {value.number} |" in text
