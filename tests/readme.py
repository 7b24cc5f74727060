"""The README's shell commands, read from its code blocks and run as printed.

Tests take the commands from README.md itself, so the README and the tests cannot
drift: only the addresses and the state directory of `make run` are swapped for those
of the test stack.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{2,6} (.+)$", re.MULTILINE)
_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def section(title: str, readme: Path = README) -> str:
    """The text under the heading `title`, up to the next heading of any level."""
    text = readme.read_text()
    headings = list(_HEADING.finditer(text))
    for index, heading in enumerate(headings):
        if heading.group(1).strip() == title:
            end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
            return text[heading.end() : end]
    raise KeyError(f"README.md has no heading {title!r}")


def commands(title: str, readme: Path = README) -> list[str]:
    """Every command of the section's ```sh blocks: comments dropped, `\\` lines kept whole."""
    found: list[str] = []
    for block in _FENCE.findall(section(title, readme)):
        current: list[str] = []
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current.append(line)
            if not line.endswith("\\"):
                found.append("\n".join(current))
                current = []
        assert not current, f"a command in {title!r} ends with a backslash"
    return found


def find(title: str, *needles: str) -> str:
    """The one command of the section that contains every needle."""
    matching = [c for c in commands(title) if all(n in c for n in needles)]
    assert len(matching) == 1, (title, needles, matching)
    return matching[0]


@dataclass(frozen=True)
class Ran:
    """One command's outcome."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def documents(self) -> list[Any]:
        """Every JSON document printed, in order (a stream prints one per message)."""
        return json_documents(self.stdout)


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    found: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return found
        document, index = decoder.raw_decode(text, index)
        found.append(document)


@dataclass
class Shell:
    """A reader's terminal: one working directory, variables kept from command to command.

    ``replacements`` turn the README's addresses and paths into the test stack's.
    """

    cwd: Path
    replacements: Mapping[str, str]
    env: Mapping[str, str]
    variables: str = ""  # `declare` lines that carry the variables the commands set
    names: set[str] = field(default_factory=set)
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def adapt(self, command: str) -> str:
        for printed, actual in self.replacements.items():
            command = command.replace(printed, actual)
        return command

    def path(self, printed: str) -> Path:
        """A file a command wrote, by the name the README gives it."""
        return self.cwd / self.adapt(printed)

    def script(self, command: str) -> str:
        """Bash that restores the variables, runs the command and records them again."""
        self.names |= set(_ASSIGNMENT.findall(command))
        names = " ".join(sorted(self.names))
        keep = f"declare -p {names} > {self.cwd / '.variables'} 2>/dev/null\n" if names else ""
        return f"{self.variables}\n{self.adapt(command)}\n__rc=$?\n{keep}exit $__rc\n"

    def run(self, command: str, timeout: float = 60) -> Ran:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", self.script(command)],
            cwd=self.cwd,
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.remember()
        return Ran(command, proc.returncode, proc.stdout, proc.stderr)

    def run_all(self, commands: list[str]) -> list[Ran]:
        """Each command in turn; stops at the first that fails (as a reader would)."""
        done: list[Ran] = []
        for command in commands:
            done.append(self.run(command))
            if done[-1].returncode != 0:
                break
        return done

    def start(self, command: str) -> subprocess.Popen[str]:
        """The command running in the background, its stdout readable as it is written."""
        proc = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c", self.script(command)],
            cwd=self.cwd,
            env=dict(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.started.append(proc)
        return proc

    def remember(self) -> None:
        """Take up the variables a command started with `start` left, once it has ended."""
        saved = self.cwd / ".variables"
        if saved.exists():
            self.variables = saved.read_text()

    def close(self) -> None:
        """Stop what `start` began and is still running (a test that failed midway)."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
