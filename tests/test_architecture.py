"""The house rules of the code: the import contract (import-linter), no private names across modules, size,
module docstrings, and a public API that type checkers can read. Each rule is shown to fail on a breach."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "rsclip"
# The trees the house rules cover: the package, the deployment helpers and the job scripts.
SOURCES = ("rsclip", "infra", "jobs")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def source_files() -> list[Path]:
    """Every Python module of :data:`SOURCES`."""
    return sorted(path for top in SOURCES for path in (ROOT / top).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module at ``path`` (a package for its ``__init__.py``)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# ---------------------------------------------------------------- the import contract


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the package under ``root`` with the contracts of ``root/pyproject.toml``."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def contract_report() -> subprocess.CompletedProcess:
    return lint_imports(ROOT)


def test_the_import_contract_holds(contract_report):
    res = contract_report
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, line, evidence", [
    ("table/tiles.py", "import rsclip.search.query", "rsclip.table.tiles -> rsclip.search.query"),
    ("search/query.py", "import rsclip.ingest.pipeline", "rsclip.search.query -> rsclip.ingest.pipeline"),
    ("ingest/writer.py", "from rsclip.app import cli", "rsclip.ingest.writer -> rsclip.app.cli"),
    ("geo/raster.py", "import rsclip.model.clip", "rsclip.geo.raster -> rsclip.model.clip"),
    ("errors.py", "import rsclip.runtime.storage", "rsclip.errors -> rsclip.runtime.storage"),
    ("search/query.py", "import rsclip.model.convert.converter", "rsclip.search.query -> rsclip.model.convert"),
    ("train/loop.py", "import rsclip.table.tiles", "rsclip.train.loop -> rsclip.table.tiles"),
    ("table/rows.py", "import streamlit", "rsclip.table.rows -> streamlit"),
    ("table/labels.py", "import rsclip.testing", "rsclip.table.labels -> rsclip.testing"),
    ("table/keyed_writes.py", "import rsclip.table.tiles", "No cycles are allowed in rsclip.table."),
    # an import inside a function counts as much as one at the top
    ("search/examples.py", "def breach():\n    import rsclip.search.query", "No cycles are allowed in rsclip.search."),
    ("app/cli/serve.py", "import rsclip.app.web.text", "rsclip.app.cli.serve -> rsclip.app.web.text"),
    ("app/web/data/timedata.py", "import streamlit", "rsclip.app.web.data.timedata -> streamlit"),
])
def test_the_import_contract_fails_when_a_line_breaks_it(tmp_path, contract_report, module, line, evidence):
    shutil.copytree(PACKAGE, tmp_path / "rsclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "rsclip" / module
    target.write_text(target.read_text() + f"\n{line}  # breaks the contract\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-3000:]
    # the breach is reported as such, not only whatever the tree already breaks
    assert evidence in res.stdout and evidence not in contract_report.stdout, res.stdout[-3000:]


# ---------------------------------------------------------------- private names stay in their module


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_module(dotted: str, root: Path = ROOT) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of the module a ``from ... import`` reads (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(source: str, module: str, *, is_package: bool = False, root: Path = ROOT) -> list[str]:
    """Private (``_``) names of another module of :data:`SOURCES` that one module's source uses:
    ``from m import _name``, imports of private modules, and ``m._name`` on a module it imported."""
    def foreign(name: str) -> bool:
        return name.split(".")[0] in SOURCES and name != module

    found, modules = [], {}  # modules: local name -> the module it is bound to
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if foreign(alias.name) and any(is_private(p) for p in alias.name.split(".")):
                    found.append(f"{module}:{node.lineno} {alias.name}")
                local = alias.asname or alias.name.split(".")[0]
                modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            source_module = imported_module(node, module, is_package)
            if not foreign(source_module):
                continue
            if any(is_private(p) for p in source_module.split(".")):
                found.append(f"{module}:{node.lineno} {source_module}")
            for alias in node.names:
                if is_private(alias.name):
                    found.append(f"{module}:{node.lineno} {source_module}.{alias.name}")
                elif is_module(f"{source_module}.{alias.name}", root):
                    modules[alias.asname or alias.name] = f"{source_module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                owner = ".".join([modules[value.id], *reversed(chain)])
                if foreign(owner) and is_module(owner, root):
                    found.append(f"{module}:{node.lineno} {owner}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = []
    for path in source_files():
        found += private_uses(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    assert not found, found


@pytest.mark.parametrize("module, source", [
    ("rsclip.search.query", "from rsclip.table.tiles import _weights_metadata\n"),
    ("rsclip.table.index", "from rsclip.table import tiles\ntiles._weights_metadata(None)\n"),
    ("jobs.embed_archive", "import rsclip.table.tiles\nrsclip.table.tiles._weights_metadata(None)\n"),
    ("infra.demo", "import infra.local_stack as stack\nstack._free_port()\n"),
    ("rsclip.table.rows", "from . import tiles\nx = tiles._weights_metadata\n"),
    ("rsclip.app.cli", "from rsclip.table._hidden import thing\n"),
])
def test_the_private_name_rule_fails_on_a_private_use(module, source):
    assert len(private_uses(source, module)) == 1, private_uses(source, module)


def test_the_private_name_rule_leaves_own_dunder_objects_and_other_libraries_alone():
    source = ("import ray\nimport rsclip.table.tiles as tiles\nfrom rsclip.table.tiles import ModelIdentity\n"
              "ray._private\ntiles.__name__\nModelIdentity._fields\n\ndef _own():\n    return _own.__doc__\n")
    assert private_uses(source, "rsclip.search.query") == []
    assert private_uses("import rsclip.table.tiles\nrsclip.table.tiles._weights_metadata\n",
                        "rsclip.table.tiles") == []


# ---------------------------------------------------------------- size


def size_problems(text: str, where: str) -> list[str]:
    """A module over :data:`MAX_MODULE_LINES` lines, and its functions over :data:`MAX_FUNCTION_LINES`."""
    lines = text.splitlines()
    found = [f"{where}: {len(lines)} lines"] if len(lines) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_short():
    found = []
    for path in source_files():
        found += size_problems(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, found


def test_the_size_rule_fails_on_a_long_module_and_a_long_function():
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    nested = "class C:\n    def m(self):\n" + "        x = 1\n" * MAX_FUNCTION_LINES
    assert size_problems(long_module, "m.py") == [f"m.py: {MAX_MODULE_LINES + 1} lines"]
    assert size_problems(long_function, "m.py") == [f"m.py:1 f: {MAX_FUNCTION_LINES + 1} lines"]
    assert size_problems(nested, "m.py") == [f"m.py:2 m: {MAX_FUNCTION_LINES + 1} lines"]
    at_the_limits = ("def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
                     + "x = 1\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES))
    assert size_problems(at_the_limits, "m.py") == []


# ---------------------------------------------------------------- module docstrings


def docstring_problem(text: str) -> str | None:
    """Why a module does not start with a docstring whose first line says what it holds; None when it does.
    An empty module (a bare ``__init__.py``) holds nothing and needs none."""
    if not text.strip():
        return None
    body = ast.parse(text).body
    first = body[0] if body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return "no module docstring"
    if not first.value.value.splitlines()[:1] or not first.value.value.splitlines()[0].strip():
        return "the docstring's first line is empty"
    return None


def test_every_module_starts_with_a_docstring_saying_what_it_holds():
    found = [f"{path.relative_to(ROOT)}: {why}" for path in source_files()
             if (why := docstring_problem(path.read_text()))]
    assert not found, found


@pytest.mark.parametrize("text", [
    "import os\n",
    "from __future__ import annotations\n\"\"\"Too late to be a docstring.\"\"\"\n",
    '"""\nThe summary is not on the first line."""\n',
    '""""""\nx = 1\n',
    "# a comment only\n",
])
def test_the_docstring_rule_fails_on_a_module_without_one(text):
    assert docstring_problem(text) is not None


@pytest.mark.parametrize("text", ['"""What it holds."""\n', '"""What it holds.\n\nMore."""\nimport os\n', "", "\n"])
def test_the_docstring_rule_passes_a_module_that_says_what_it_holds(text):
    assert docstring_problem(text) is None


# ---------------------------------------------------------------- the public API


def test_type_checkers_see_every_public_name_from_its_module():
    """``rsclip/__init__.py`` resolves names lazily; its ``TYPE_CHECKING`` imports name each one from the
    module the lazy lookup uses, and ``__all__`` lists them sorted, as a literal type checkers read."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assigned = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    exports = ast.literal_eval(assigned["_EXPORTS"])
    guarded = next(node for node in tree.body if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    typed = {alias.asname or alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    assert typed == exports
    assert ast.literal_eval(assigned["__all__"]) == sorted(exports)
