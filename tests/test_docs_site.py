"""The handbook in docs/ builds as a site with every warning an error (a broken link, a reference to a
name that does not exist, a page left out of the table of contents), and its API reference covers every
public name, each with a docstring."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pipebit

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# -W: warnings are errors; -n: every cross-reference must resolve; -E: read every page anew.
SPHINX = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html"]


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="the docs (and dev) extra installs Sphinx")
    pytest.importorskip("myst_parser", reason="the docs (and dev) extra installs myst-parser")
    result = subprocess.run(
        [*SPHINX, "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = {path.stem for path in (tmp_path / "html").glob("*.html")}
    assert {path.stem for path in DOCS.glob("*.md")} <= built
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    for name in public_names():
        assert f'id="pipebit.{name}"' in api, f"pipebit.{name} is not in the built API reference"
    for endpoint in (pipebit.SafeSender, pipebit.SafeReceiver, pipebit.FastSender, pipebit.FastReceiver):
        for attr in public_members(endpoint):
            assert f'id="pipebit.{endpoint.__name__}.{attr}"' in api, f"{endpoint.__name__}.{attr} is not documented"


def public_names() -> list[str]:
    return [name for name in pipebit.__all__ if name != "__version__"]


def test_the_api_reference_names_every_public_name() -> None:
    page = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto\w+:: pipebit\.(\w+)$|^\.\. data:: pipebit\.(\w+)$", page, re.M))
    names = {a or b for a, b in documented}
    assert names == set(public_names())


def public_members(cls: type) -> list[str]:
    """The methods and properties a user calls on ``cls`` (inherited ones too)."""
    return [
        attr
        for attr, member in inspect.getmembers(cls)
        if (not attr.startswith("_") or attr == "__iter__")
        and (inspect.isfunction(member) or isinstance(member, property))
    ]


def test_every_public_name_and_method_has_a_docstring() -> None:
    missing = []
    for name in public_names():
        obj = getattr(pipebit, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            context_manager = [attr for attr in ("__enter__", "__exit__") if hasattr(obj, attr)]
            for attr in [*public_members(obj), *context_manager]:
                if not inspect.getdoc(getattr(obj, attr)):
                    missing.append(f"{name}.{attr}")
    assert missing == []
