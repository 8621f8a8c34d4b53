"""Check that a built wheel holds every module of the source tree, the package data and the C extension.

    python .ci/wheel_contents.py dist/mote_edge-*.whl

Source: every .py under the folders setup.py maps import names onto (PACKAGE_DIRS), every file matched by
pyproject.toml's package-data globs, and mote_edge/_native*.so. Exits non-zero, naming what is missing.
"""

from __future__ import annotations

import ast
import glob
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE_DIRS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py has no PACKAGE_DIRS")


def expected() -> set[str]:
    want = set()
    for name, folder in package_dirs().items():
        for py in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in py.parts:
                want.add("/".join([*name.split("."), *py.relative_to(REPO / folder).parts]))
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    dirs = package_dirs()
    for name, patterns in data.items():
        folder = REPO / dirs[name]
        for pattern in patterns:
            for f in glob.glob(str(folder / pattern)):
                want.add("/".join([*name.split("."), *Path(f).relative_to(folder).parts]))
    return want


def main() -> None:
    wheels = sys.argv[1:]
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel, got {wheels}")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    missing = sorted(expected() - names)
    if not any(n.startswith("mote_edge/_native") and n.endswith(".so") for n in names):
        missing.append("mote_edge/_native*.so")
    if missing:
        raise SystemExit(f"{wheels[0]} misses {len(missing)} file(s):\n  " + "\n  ".join(missing))
    print(f"{Path(wheels[0]).name}: {len(names)} files, every module, asset and the C extension")


if __name__ == "__main__":
    main()
