"""The house rules of the package: the import contract (import-linter), no private names across rooms, size."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "rsclip"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOMS = ("core", "ingest", "train", "search", "detect", "app")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the package under ``root`` with the contracts of ``root/pyproject.toml``."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contract_holds():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, line", [
    ("core/tiles.py", "import rsclip.search.query"),
    ("search/query.py", "import rsclip.ingest.pipeline"),
    ("ingest/writer.py", "from rsclip.app import cli"),
    ("errors.py", "import rsclip.runtime.storage"),
])
def test_the_import_contract_fails_when_a_line_breaks_it(tmp_path, module, line):
    shutil.copytree(PACKAGE, tmp_path / "rsclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "rsclip" / module
    target.write_text(target.read_text() + f"\n{line}  # breaks the contract\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-3000:]


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "rsclip" and parts[1] in ROOMS else None


def private_imports(path: Path, module: str) -> list[str]:
    """``from rsclip.<other room>... import _name`` and ``import``-ed private modules in one file."""
    own = _room(module)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsclip."):
            other = _room(node.module + ".x")
            if other and other != own:
                found += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                if any(p.startswith("_") and p != "__init__" for p in node.module.split(".")):
                    found.append(f"{module}: {node.module}")
    return found


def test_no_room_imports_another_rooms_private_names():
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found += private_imports(path, module)
    assert not found, found


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {len(lines)}")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
