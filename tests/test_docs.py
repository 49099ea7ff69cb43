"""The README and docs/ stay true to the code: every ``alignscope ...`` command they show exists with the options
they give it, and every Python example compiles and imports names that exist."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main

from alignscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_CODE_SPAN = re.compile(r"`(alignscope [^`]+)`")
_FENCE = re.compile(r"^```(\w*)\s*$")


def _blocks(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Fenced code blocks as (language, [(line number, line)])."""
    out: list[tuple[str, list[tuple[int, str]]]] = []
    lang: str | None = None
    lines: list[tuple[int, str]] = []
    for no, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m and lang is None:
            lang, lines = m.group(1) or "text", []
        elif line.strip() == "```" and lang is not None:
            out.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append((no, line))
    return out


def _commands(page: Path) -> list[tuple[str, str]]:
    """(where, command line) of every alignscope command the page shows, in code blocks or code spans."""
    text = page.read_text()
    found: list[tuple[str, str]] = []
    for lang, lines in _blocks(text):
        if lang in ("bash", "sh", "shell", "console", "text"):
            for no, line in lines:
                cmd = line.split("#", 1)[0].strip().removeprefix("$ ")
                if cmd.startswith("alignscope "):
                    found.append((f"{page.name}:{no}", cmd))
    for no, line in enumerate(text.splitlines(), 1):
        for span in _CODE_SPAN.findall(line.replace("\\|", "|")):
            found.append((f"{page.name}:{no}", span))
    return found


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The command named by the leading words, and the words after it (Typer's commands and groups: a group is
    what has ``commands``)."""
    cmd: Any = typer.main.get_command(app)
    rest = list(words)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        names = rest[0].split("|")  # "speech build|speak" names several subcommands: check the first
        sub = cmd.commands.get(names[0])
        if sub is None:
            break
        for other in names[1:]:
            assert other in cmd.commands, f"unknown subcommand {other!r} of {cmd.name}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


CASES = [(where, cmd) for page in PAGES for where, cmd in _commands(page)]


@pytest.mark.parametrize(("where", "line"), CASES, ids=[w for w, _ in CASES])
def test_documented_command_exists_with_its_options(where: str, line: str) -> None:
    cleaned = re.sub(r"[\[\]]", " ", line).replace("...", " ")
    try:
        words = shlex.split(cleaned)
    except ValueError:
        words = cleaned.split()
    cmd, rest = _resolve(words[1:])
    if hasattr(cmd, "commands") and rest and re.fullmatch(r"[A-Z][A-Z_]*", rest[0]):
        known = {o for sub in cmd.commands.values() for o in _options(sub)}  # "train RECIPE": any of them
    else:
        assert not hasattr(cmd, "commands") or not rest or rest[0].startswith("-"), (
            f"{where}: {line!r} names no command (stopped at {rest[:1]})"
        )
        known = _options(cmd)
    known |= {"--help"}
    for word in rest:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in known, (
                f"{where}: {line!r}: {flag} is not an option of {cmd.name} ({sorted(known)})"
            )


def _python_blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for lang, lines in _blocks(page.read_text()):
            if lang == "python" and lines:
                out.append((f"{page.name}:{lines[0][0]}", "\n".join(line for _, line in lines)))
    return out


PY = _python_blocks()


@pytest.mark.parametrize(("where", "source"), PY, ids=[w for w, _ in PY])
def test_python_example_compiles_and_imports_what_exists(where: str, source: str) -> None:
    tree = ast.parse(source, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "alignscope":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "alignscope":
                    importlib.import_module(alias.name)


def test_the_pages_show_commands_and_examples() -> None:
    assert len(CASES) > 20 and len(PY) >= 5
