"""The package list and the C extension `mote_edge._native` (metadata and dependencies: pyproject.toml).

Import names map onto top-level folders (one job per folder: README.md, Layout): PACKAGE_DIRS below.
The packages are discovered in those folders, never listed by hand, so a new subpackage ships in the
wheel without an edit here (tests/test_packaging.py holds this to every folder with an __init__.py).

Portable C11: no -march=native. SIMD paths are compiled with per-function (per-file) target attributes
and chosen at run time, with a scalar fallback: AVX2 / AVX-512 VNNI on x86-64 (__builtin_cpu_supports),
NEON / ARMv8.2 dot product on aarch64 (getauxval(AT_HWCAP)). native_sources() picks the files of the
architecture being built for; every x86 or ARM file is also guarded in C, so a wrong pick compiles to nothing.
-ffp-contract=off: no fused multiply-adds where the C has a * b + c (the kernels are bit-exact with numpy).
"""
import glob
import os
import platform
import sysconfig

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


# kernel files by suffix: compiled only for their architecture
ARCH_SUFFIXES = {"x86_64": ("_avx2.c", "_avx512.c"), "aarch64": ("_neon.c", "_dotprod.c")}


def target_arch() -> str:
    """'x86_64', 'aarch64' or another machine name: the platform the extension is built for
    (sysconfig honours a cross build's _PYTHON_HOST_PLATFORM; platform.machine() is the fallback)."""
    name = sysconfig.get_platform().rsplit("-", 1)[-1].lower()
    if name == "win32" or not name:
        name = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


def native_sources(arch: str) -> list[str]:
    """native/*.c without the kernel files of other architectures (a macOS universal2 build compiles each
    file for both slices: all of them, each slice keeps what its #if guards let through)."""
    if arch == "universal2":
        return sorted(glob.glob("native/*.c"))
    other = tuple(suf for a, sufs in ARCH_SUFFIXES.items() if a != arch for suf in sufs)
    return sorted(f for f in glob.glob("native/*.c") if not os.path.basename(f).endswith(other))


native = Extension(
    "mote_edge._native",
    sources=native_sources(target_arch()),
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O3", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],
    extra_link_args=["-lpthread"],
)

setup(packages=packages(), package_dir=PACKAGE_DIRS, ext_modules=[native])
