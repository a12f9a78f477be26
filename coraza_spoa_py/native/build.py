"""Build ``coraza_spoa_py/_msc*.so``: our cffi binding (API mode) of libmodsecurity plus the
glue of ``msc_glue.c`` and ``msc_glue_rm.cc``. ``make install`` runs it (``python -m
coraza_spoa_py.native.build``); it needs gcc, g++, the Python headers and Debian's
``libmodsecurity-dev`` (the C++ headers of the rule messages: msc_glue_rm.cc).

Why compiled (docs/performance.md, changes 7 and 8): a phase group is one C call that releases
the GIL once, where the ABI-mode binding made one GIL round trip per engine step and header.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from cffi import FFI

PACKAGE_DIR = Path(__file__).resolve().parent.parent
GLUE = Path(__file__).resolve().parent / "msc_glue.c"
HEADER = GLUE.with_suffix(".h")
# C++: reads the engine's rule messages (docs/engine.md "Rule matches")
RULE_MESSAGES = GLUE.with_name("msc_glue_rm.cc")
MODULE = "coraza_spoa_py._msc"
# the NOTIFY decoder in C (docs/performance.md change 22): a plain CPython extension, since it
# builds Python objects; coraza_spoa_py/spop_native.py uses it
SPOP_FAST = GLUE.with_name("spop_fast.c")
SPOP_FAST_MODULE = "coraza_spoa_py._spop_fast"


def cdef_text() -> str:
    """The cdef: msc_glue.h without its preprocessor lines (one source for C and cffi), plus
    ``free`` for the strings the engine hands over."""
    declarations = [
        line for line in HEADER.read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
    ]  # fmt: skip
    return "\n".join(declarations) + "\nvoid free(void *ptr);\n"


def builder() -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source(
        MODULE,
        GLUE.read_text(encoding="utf-8"),
        sources=[str(RULE_MESSAGES)],
        include_dirs=[str(HEADER.parent)],
        # by file name: the library we run is Debian's libmodsecurity3 (-dev adds the headers
        # and a .so symlink to the same file); libstdc++ for the C++ part
        extra_link_args=["-l:libmodsecurity.so.3", "-lstdc++"],
        # (msc_glue.c makes an undeclared function an error itself: a C-only flag)
        extra_compile_args=["-O2", "-Wall", "-Wextra"],
    )
    return ffi


def build() -> Path:
    """Compile and place the module next to the package's sources; returns its path."""
    with tempfile.TemporaryDirectory(prefix="coraza-spoa-py-build-") as tmp:
        return _place(Path(builder().compile(tmpdir=tmp, verbose=False)))


def build_spop_fast() -> Path:
    """Compile ``spop_fast.c`` into ``coraza_spoa_py/_spop_fast*.so``; returns its path."""
    from setuptools import Distribution, Extension  # noqa: PLC0415 (build time only)
    from setuptools.command.build_ext import build_ext  # noqa: PLC0415

    extension = Extension(
        SPOP_FAST_MODULE, [str(SPOP_FAST)], extra_compile_args=["-O2", "-Wall", "-Wextra"]
    )
    with tempfile.TemporaryDirectory(prefix="coraza-spoa-py-build-") as tmp:
        command = build_ext(Distribution({"ext_modules": [extension]}))
        command.build_lib, command.build_temp = tmp, tmp
        command.ensure_finalized()
        command.run()
        return _place(Path(command.get_ext_fullpath(SPOP_FAST_MODULE)))


def _place(built: Path) -> Path:
    target = PACKAGE_DIR / built.name
    # a new file renamed over the old one: a running agent keeps its mapping intact
    staged = target.with_name(target.name + ".new")
    shutil.copyfile(built, staged)
    staged.replace(target)
    return target


if __name__ == "__main__":
    sys.stderr.write(f"built {build()}\n")
    sys.stderr.write(f"built {build_spop_fast()}\n")
