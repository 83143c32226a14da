"""Build script for the native core; all metadata lives in pyproject.toml."""
import os

from setuptools import Extension, setup

extra = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
# PENNY_SANITIZE=address,undefined (or thread) builds the core under sanitizers.
sanitize = os.environ.get("PENNY_SANITIZE")
link = []
if sanitize:
    extra += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
    link += [f"-fsanitize={sanitize}"]

setup(
    ext_modules=[
        Extension("penny._core", ["src/penny/_core.c"], extra_compile_args=extra, extra_link_args=link)
    ]
)
