"""A small Dockerfile reader and the checks our images promise (no engine runs here).

``parse`` splits a Dockerfile into stages of instructions (comments dropped, ``\\``
continuations joined, JSON-form arguments decoded); ``problems`` lists every broken promise:
multi-stage, each base pinned to an exact version tag or a digest, a numeric non-root
``USER`` in the final stage, no build secrets (secret-looking ``ARG``/``ENV``,
``--mount=type=secret``, key files copied in).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

__all__ = ["Instruction", "Stage", "parse", "problems"]

_SECRETISH = re.compile(r"SECRET|PASSW|TOKEN|PRIVATE|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
_KEY_FILES = re.compile(r"\.pem$|\.key$|id_rsa|\.licensing|age-key|\.env$", re.IGNORECASE)
#: ``name:tag`` with a full version in the tag (``3.11.7-slim-bookworm``, ``1.26.8``): a
#: ``3.11`` or ``slim`` tag moves under you.
_EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+([-_][\w.-]+)?$")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the raw argument text, continuations joined
    line: int

    @property
    def words(self) -> list[str]:
        """The arguments as a list: the JSON form decoded, else shell-split."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                pass
            else:
                if isinstance(decoded, list):
                    return [str(w) for w in decoded]
        return shlex.split(text, comments=False, posix=True)

    @property
    def flags(self) -> dict[str, str]:
        """Leading ``--name=value`` options (``COPY --from=build``, ``RUN --mount=...``)."""
        found: dict[str, str] = {}
        for word in self.args.split():
            if not word.startswith("--"):
                break
            name, _, value = word[2:].partition("=")
            found[name] = value
        return found


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """The instructions before the first FROM (global ARGs) and the stages."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, instruction.line))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


def problems(text: str) -> list[str]:
    """Every promise the Dockerfile breaks (empty: it keeps them all)."""
    preamble, stages = parse(text)
    found: list[str] = []
    if len(stages) < 2:
        found.append(f"not multi-stage: {len(stages)} FROM")
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue  # FROM an earlier stage
        if not (_EXACT_TAG.match(stage.base) or _DIGEST.search(stage.base)):
            found.append(f"line {stage.line}: base {stage.base!r} is not pinned")
    for instruction in preamble + [i for s in stages for i in s.instructions]:
        where = f"line {instruction.line}: {instruction.keyword}"
        if instruction.keyword in ("ARG", "ENV"):
            for word in instruction.words:
                name = word.partition("=")[0]
                if _SECRETISH.search(name):
                    found.append(f"{where} {name} looks like a secret")
        if "type=secret" in instruction.flags.get("mount", ""):
            found.append(f"{where} mounts a build secret")
        if instruction.keyword in ("COPY", "ADD"):
            sources = [w for w in instruction.words if not w.startswith("--")][:-1]
            for source in sources:
                if _KEY_FILES.search(source):
                    found.append(f"{where} copies {source!r}, which looks like a key")
                if source in (".", "./") and "from" not in instruction.flags:
                    found.append(f"{where} copies the whole build context")
    if stages:
        users = stages[-1].all("USER")
        if not users:
            found.append("the final stage sets no USER (it would run as root)")
        else:
            user = users[-1].args.strip()
            uid, _, gid = user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                found.append(f"final USER {user!r} is not numeric (runAsNonRoot needs a uid)")
            elif int(uid) == 0 or (gid and int(gid) == 0):
                found.append(f"final USER {user!r} is root")
    return found
