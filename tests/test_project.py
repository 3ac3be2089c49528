"""The project's promises about itself: CI runs the README's command; lint and types are clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(python3 -m venv[^\n]*)\n```", text)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the dev extra: pip install -e '.[dev]'")
    return found


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_lint_and_types_are_clean(command: list[str]) -> None:
    result = subprocess.run(
        [_tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------ the package's shape
PACKAGE = ROOT / "pipebit"
FACES = {"safe", "fast", "_send_queue", "_receive_cache", "_group_receive", "_async", "_endpoint", "cli", "__init__"}
BACKENDS = {"_shm_safe", "_shm_fast", "_redis_safe", "_redis_fast", "_redis_member", "_redis_group"}


def _imports_of(module: Path) -> set[str]:
    """The pipebit modules ``module`` imports, wherever the import statement is (in a
    function too: a circle closed at run time is a circle)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipebit."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipebit."))
    return found - {module.stem}


def _graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: _imports_of(path) & set(modules) for name, path in modules.items()}


def test_the_package_has_no_import_circle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail(f"import circle: {' -> '.join([*path[path.index(name) :], name])}")
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_back_end_imports_a_face_and_no_module_is_too_long() -> None:
    graph = _graph()
    for backend in BACKENDS:
        assert not graph[backend] & FACES, f"{backend} imports {graph[backend] & FACES}"
    assert "_transport" not in set().union(*(graph[b] for b in BACKENDS))
    for path in PACKAGE.glob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 600, f"{path.name} has {lines} lines"


# ------------------------------------------------------------ what the sdist ships
def test_the_sdist_ships_the_benchmarks_examples_docs_and_tests(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="the dev extra installs the build backend")
    import tarfile

    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (archive,) = tmp_path.glob("pipebit-*.tar.gz")
    with tarfile.open(archive) as sdist:
        shipped = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
    for folder, pattern in [("benchmarks", "*.py"), ("examples", "*.py"), ("docs", "*.md"), ("tests", "*.py")]:
        wanted = {str(path.relative_to(ROOT)) for path in (ROOT / folder).glob(pattern)}
        assert wanted, folder
        assert wanted <= shipped, sorted(wanted - shipped)
    assert {"README.md", "LICENSE", "pyproject.toml", "pipebit/py.typed"} <= shipped
    assert not any(name.startswith((".venv/", ".git/")) for name in shipped)
