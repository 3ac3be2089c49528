"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot drift from the code.

The blocks of one page run in order in one fresh interpreter, sharing their names like the cells of a
notebook (a page reads top to bottom), with a private /dev/shm where the machine allows one (else the
pipes a page leaves are removed after it).  A ```console block is a shell session run at its place in
the page: each ``$ `` line is a command that must succeed and print the lines below it (``...`` in a
line matches any text, and a run of spaces any run of spaces).  ```sh and ```text blocks are shown,
not run.  A block that cannot run alone is marked, visibly, by the line before it:

    <!-- not-run: why -->

and counted: ``test_not_run_blocks_are_few_and_say_why`` lists them and keeps the list short.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

import pipebit

from .helpers import private_shm_prefix

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->\s*$")
MOST_NOT_RUN = 4  # blocks that cannot run alone, in all pages together: keep it short


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason given, if marked


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = NOT_RUN.search(before)
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(1),
                code=match.group(2),
                not_run=marked.group(1) if marked else None,
            )
        )
    return found


RUN = ("python", "console")  # the languages of the blocks that run


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language in RUN and b.not_run is None]


def cells(page: Path) -> list[list[str]]:
    """What the runner runs: ``[first line, language, code]`` of each block, code placed at its
    line, so that a traceback names the page's own line."""
    return [[str(b.line + 1), b.language, "\n" * b.line + b.code] for b in runnable(page)]


# Runs the cells in one namespace, and console sessions in between; says which block failed, and how.
RUNNER = r"""
import json, os, re, subprocess, sys, traceback, warnings
warnings.simplefilter("error")  # a block that warns (undelivered packets, say) is a block that is wrong
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # `pipebit`
page, cells = sys.argv[1], json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}

def session(text):
    steps = []  # (command, expected output lines)
    for line in text.strip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps

def matches(expected, got):  # runs of spaces are one space (aligned columns), "..." any text
    parts = re.split(r"(\.\.\.)", " ".join(expected.split()))
    pattern = "".join(".*" if part == "..." else re.escape(part) for part in parts)
    return re.fullmatch(pattern, " ".join(got.split())) is not None

def run_session(text):
    for command, expected in session(text):
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        got = done.stdout.splitlines()
        if done.returncode or len(got) != len(expected) or not all(map(matches, expected, got)):
            raise AssertionError(f"$ {command}\nexit {done.returncode}, printed:\n{done.stdout}{done.stderr}")

for line, language, code in cells:
    try:
        if language == "console":
            run_session(code)
        else:
            exec(compile(code, page, "exec"), namespace)
    except BaseException:
        print(f"the block at {page}:{line} failed:\n{traceback.format_exc()}", file=sys.stderr)
        sys.exit(1)
print("all blocks ran")
"""


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_every_python_block_runs(page: Path) -> None:
    prefix = private_shm_prefix("256m") or ()
    before = set() if prefix else {p.name for p in pipebit.list_pipes()}
    try:
        result = run_cells(page, ROOT, shown=str(page.relative_to(ROOT)), prefix=prefix, timeout=180)
    finally:
        if not prefix:  # no private /dev/shm: remove what the page made
            for stats in pipebit.list_pipes():
                if stats.name not in before:
                    pipebit.remove(stats.name, force=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.rstrip().endswith("all blocks ran"), result.stdout


def test_not_run_blocks_are_few_and_say_why() -> None:
    marked = [b for page in PAGES for b in blocks(page) if b.not_run is not None]
    listing = "\n".join(f"  {b.page.name}:{b.line} ({b.language}): {b.not_run}" for b in marked)
    print(f"\n{len(marked)} block(s) not run:\n{listing}")
    assert len(marked) <= MOST_NOT_RUN, listing
    for block in marked:
        assert block.language in RUN, f"{block.page.name}:{block.line}: {block.language} blocks are not run; unmark it"
        assert len(block.not_run or "") >= 15, f"{block.page.name}:{block.line}: say why it cannot run"


def test_the_runner_finds_blocks_and_a_failing_block_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- not-run: a reason long enough -->\n```python\nraise SystemExit(3)\n```\n"
        "\n```console\n$ echo one; echo two\none\nt...\n$ true\n```\n"
        "\n```python\nassert x == 2, 'x is ' + str(x)\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.line, b.not_run) for b in found] == [(3, None), (8, "a reason long enough"), (12, None), (19, None)]
    result = run_cells(page, tmp_path)
    assert result.returncode == 1
    assert "the block at page.md:20 failed" in result.stderr  # the session passed; the last block did not
    assert 'page.md", line 20' in result.stderr  # the page's own line
    assert "x is 1" in result.stderr
    page.write_text("```console\n$ echo one\ntwo\n```\n", encoding="utf-8")
    result = run_cells(page, tmp_path)
    assert result.returncode == 1
    assert "the block at page.md:2 failed" in result.stderr
    assert "$ echo one" in result.stderr


def run_cells(
    page: Path, cwd: Path, *, shown: str = "", prefix: Sequence[str] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the page's blocks in a fresh interpreter in ``cwd`` (under ``prefix``, a command such
    as a private /dev/shm's), the page named ``shown`` (default: its file name) in errors."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", RUNNER, shown or page.name],
        input=json.dumps(cells(page)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
