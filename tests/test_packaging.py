"""What `pip install .` ships: every package under the mapped folders, a base install without torch, and
no benchmark or test that can shadow an installed package."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import REPO

# Not in the base install: the [export], [dev], [serve] and [bench] extras. The runtime and mote_edge/ must import
# without any of them: a device has no torch.
EXTRAS_ONLY = ("torch", "onnx", "onnxscript", "safetensors", "transformers", "matplotlib", "starlette", "uvicorn")
# Folders whose modules need an extra: the exporters (torch), training (torch) and the server ([serve]).
NEEDS_EXTRAS = ("mote_edge.exporters", "mote_edge.training", "mote_edge.serve")


@pytest.fixture(scope="module")
def dist():
    """The setuptools Distribution as `pip install .` configures it (setup.py + pyproject.toml)."""
    import setuptools  # noqa: F401  (first: it provides distutils)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(REPO)  # as pip runs it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_setup("setup.py", stop_after="config")
    finally:
        os.chdir(cwd)


def _package_folders(package_dir: dict[str, str]) -> dict[str, Path]:
    """Every folder with an __init__.py under the mapped folders, by import name."""
    found = {}
    for name, folder in package_dir.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found[".".join((name, *rel))] = init.parent
    return found


def test_every_package_folder_is_installed(dist):
    assert dist.package_dir, "setup.py maps import names onto folders"
    folders = _package_folders(dist.package_dir)
    assert set(dist.packages) == set(folders), (
        f"not installed: {sorted(set(folders) - set(dist.packages))}; "
        f"no folder: {sorted(set(dist.packages) - set(folders))}")
    # and the ones that went missing before discovery
    assert {"mote_edge.format", "mote_edge.exporters.reference", "mote_edge.quant"} <= set(dist.packages)


def test_no_module_outside_a_package(dist):
    """A folder with .py files but no __init__.py would be a namespace package setuptools skips."""
    for name, folder in dist.package_dir.items():
        for py in (REPO / folder).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            assert (py.parent / "__init__.py").exists(), f"{py.relative_to(REPO)} is in no package"


def test_package_data_and_extension(dist):
    assert any((REPO / "mote_edge" / "assets").iterdir())
    assert dist.package_data.get("mote_edge") == ["assets/*"]
    assert [e.name for e in dist.ext_modules] == ["mote_edge._native"]


def test_runtime_imports_without_the_extras(dist):
    """Import every module of the base install in a process where torch & co. cannot be imported."""
    modules = []
    for name, folder in _package_folders(dist.package_dir).items():
        if name.startswith(NEEDS_EXTRAS):
            continue
        for py in sorted(folder.glob("*.py")):
            modules.append(name if py.stem == "__init__" else f"{name}.{py.stem}")
    assert "mote_edge.runtime.engine" in modules and "mote_edge.cli" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {EXTRAS_ONLY!r}: sys.modules[m] = None\n"
        "bad = {}\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad[m] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO / "tests",
                         timeout=300)
    bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert bad == {}, f"these modules import an extra at top level: {bad}"


def _edits_sys_path(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        # sys.path.insert(...) / sys.path.append(...) / sys.path.extend(...) / sys.path += / sys.path = / [...]
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.AugAssign, ast.Assign)):
            targets = [node.target] if isinstance(node, ast.AugAssign) else node.targets
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                and target.value.id == "sys"):
            return True
    return False


def test_no_test_or_benchmark_edits_sys_path():
    files = sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    offenders = [str(f.relative_to(REPO)) for f in files if _edits_sys_path(ast.parse(f.read_text()))]
    assert offenders == [], "load a benchmark by path (importlib.util.spec_from_file_location) instead"


def test_sys_path_check_catches_an_insert():
    assert _edits_sys_path(ast.parse("import sys\nsys.path.insert(0, 'x')"))
    assert _edits_sys_path(ast.parse("import sys\nsys.path[:0] = ['x']"))
    assert not _edits_sys_path(ast.parse("import sys\nprint(sys.path)"))


def test_no_benchmark_shadows_an_installed_module():
    """A script's folder is sys.path[0] when it runs: benchmarks/kernels.py once shadowed the PyPI `kernels`
    that transformers imports."""
    shadowing = [p.name for p in sorted((REPO / "benchmarks").glob("*.py"))
                 if importlib.util.find_spec(p.stem) is not None]
    assert shadowing == [], f"rename these: an installed module has their name: {shadowing}"


def _architecture_misses(doc: str, files: list[str]) -> list[str]:
    """The source files that docs/ARCHITECTURE.md does not name (by file name or by module name)."""
    missing = []
    for rel in files:
        name = Path(rel).name
        if not (f"`{name}`" in doc or f"`{name[:-3]}`" in doc or f"{Path(rel).parent}/{name}" in doc):
            missing.append(rel)
    return missing


def test_architecture_names_every_module():
    """docs/ARCHITECTURE.md is the code map: every source file outside tests/ has its row."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    files = [f for f in out.stdout.split() if not f.startswith(("tests/", ".")) and Path(f).name not in ("__init__.py", "setup.py")]
    assert files and not _architecture_misses(doc, files)
    assert _architecture_misses(doc, ["runtime/not_a_module.py"]) == ["runtime/not_a_module.py"]
