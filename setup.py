"""Build script for the native core; all metadata lives in pyproject.toml."""
import glob
import os

from setuptools import Extension, setup

extra = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
# PENNY_SANITIZE=address,undefined (or thread) builds the core under sanitizers.
sanitize = os.environ.get("PENNY_SANITIZE")
link = []
if sanitize:
    extra += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    link += [f"-fsanitize={sanitize}"]

# One unity translation unit: core.c #includes the other parts of
# src/penny/native/ (the headers and the CPython .c parts), listed as
# dependencies so that editing any of them rebuilds the extension.
native = "src/penny/native"
unity = f"{native}/core.c"
parts = sorted(p for p in glob.glob(f"{native}/*.[ch]") if p != unity)

setup(
    ext_modules=[
        Extension(
            "penny._core",
            [unity],
            depends=parts,
            extra_compile_args=extra,
            extra_link_args=link,
        )
    ]
)
