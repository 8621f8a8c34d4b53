"""Builds the C extension `mote_edge._native` from native/ (everything else is in pyproject.toml).

Portable C11: no -march=native. SIMD paths (AVX2, AVX-512 VNNI) are compiled with per-function
target attributes and chosen at run time with __builtin_cpu_supports, with a scalar fallback.
"""
import glob

from setuptools import Extension, setup

native = Extension(
    "mote_edge._native",
    sources=sorted(glob.glob("native/*.c")),
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],
    extra_link_args=["-lpthread"],
)

setup(ext_modules=[native])
