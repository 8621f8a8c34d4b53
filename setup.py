"""The package list and the C extension `mote_edge._native` (metadata and dependencies: pyproject.toml).

Import names map onto top-level folders (one job per folder: README.md, Layout): PACKAGE_DIRS below.
The packages are discovered in those folders, never listed by hand, so a new subpackage ships in the
wheel without an edit here (tests/test_packaging.py holds this to every folder with an __init__.py).

Portable C11: no -march=native. SIMD paths (AVX2, AVX-512 VNNI) are compiled with per-function
target attributes and chosen at run time with __builtin_cpu_supports, with a scalar fallback.
"""
import glob

from setuptools import Extension, find_packages, setup

# import name -> folder
PACKAGE_DIRS = {
    "mote_edge": "mote_edge",
    "mote_edge.exporters": "exporters",
    "mote_edge.runtime": "runtime",
    "mote_edge.training": "training",
}


def packages() -> list[str]:
    """Every package under the mapped folders, with its import name."""
    found = []
    for name, folder in PACKAGE_DIRS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(found)


native = Extension(
    "mote_edge._native",
    sources=sorted(glob.glob("native/*.c")),
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],
    extra_link_args=["-lpthread"],
)

setup(packages=packages(), package_dir=PACKAGE_DIRS, ext_modules=[native])
