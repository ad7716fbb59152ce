"""Read the commands out of README.md and the targets out of the Makefile, the way a shell and make would."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    language: str
    """The info string after the opening fence (`bash`, `python`, ...; empty when none)."""
    body: str
    """The text between the fences."""
    heading: str
    """The nearest markdown heading above the block ('' before the first heading)."""


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced code block of `markdown`, in order, with the heading it sits under."""
    headings = [(m.start(), m.group(1)) for m in _HEADING.finditer(markdown)]
    blocks = []
    for match in _FENCE.finditer(markdown):
        above = [title for pos, title in headings if pos < match.start()]
        blocks.append(Block(match.group(1), match.group(2), above[-1] if above else ""))
    return blocks


def shell_commands(script: str) -> list[list[str]]:
    """The argv of every command of a shell snippet: backslash-newline continuations joined, comments dropped,
    quotes resolved as bash would (no variables or globs expanded: the commands quote their globs)."""
    joined = re.sub(r"\\\n", " ", script)
    commands = []
    for line in joined.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


@dataclass(frozen=True)
class MakeTarget:
    """A Makefile rule: its prerequisites and recipe lines."""

    prerequisites: tuple[str, ...]
    recipe: tuple[str, ...]


def make_variables(makefile: str) -> dict[str, str]:
    """`NAME = value`, `NAME ?= value` and `NAME := value` definitions of a simple Makefile (unexpanded)."""
    found = re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[?:]?=\s*(.*)$", makefile, re.MULTILINE)
    return {name: value.strip() for name, value in found}


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand `$(NAME)` references (recursively; unknown names become empty, as in make)."""
    for _ in range(10):  # nesting depth of any sane Makefile
        new = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), text)
        if new == text:
            return text
        text = new
    raise ValueError(f"make variables nest too deep in {text!r}")


def make_targets(makefile: str) -> dict[str, MakeTarget]:
    """Rules of a simple Makefile (`target: deps` followed by tab-indented recipe lines), recipes expanded with
    the Makefile's own variable defaults (so `$(PYTHON) -m pytest` reads `python3 -m pytest`)."""
    variables = make_variables(makefile)
    targets: dict[str, MakeTarget] = {}
    name = None
    for line in makefile.splitlines():
        if line.startswith("\t") and name is not None:
            rule = targets[name]
            targets[name] = MakeTarget(rule.prerequisites, (*rule.recipe, expand(line.strip(), variables)))
            continue
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)\s*(.*)$", line)
        name = None
        if match and not match.group(1).startswith("."):
            name = match.group(1)
            targets[name] = MakeTarget(tuple(match.group(2).split()), ())
    return targets


def read(path: Path) -> str:
    """The file's text (UTF-8)."""
    return path.read_text(encoding="utf-8")
