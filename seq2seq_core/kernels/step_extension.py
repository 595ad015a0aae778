"""The compiled decoding step (``decode_step.cpp``): built once, cached, or absent.

Computes: nothing itself; it builds and loads the C++ extension whose ``DecodeStep`` runs
one decoder step (and the whole greedy loop) as the same ATen calls as the eager step, so
its logits, states and tokens are bitwise the eager ones (``tests/unit/decoding/
test_compiled_step.py``).

Why: a decoding step is some fifty small ops, and at batch 1 the Python around them (the
argument parsing of each call, the NamedTuples, the Kernels indirection) costs as much as
the ops. ``torch.compile`` (inductor's C++ backend, freezing on) was measured on the
default model's step (docs/benchmarks.md, "The compiled decoding step"): 607 us a step at
batch 1 and 6.1 ms at batch 64, against 325 us and 2.4 ms eager on packed weights and 224 us
and 2.2 ms here, after 11-19 s of compiling per shape. One C++ function per
step calls the ops directly.

The build (``torch.utils.cpp_extension.load_inline``, about a minute on two cores) happens
once per source hash and torch version, into ``SEQ2SEQ_EXTENSIONS_DIR`` (``make`` sets it
to ``.state/torch_extensions``; elsewhere ``~/.cache/seq2seq/torch_extensions``); later
processes, a served model's copy of the code included, load the built library in about a
second.
``Translator.load`` loads it, so a served model pays the build when it loads, not at its
first request. Without a C++ compiler, or when the build fails, ``load`` returns
None and says so once in the log: decoding then runs the eager step.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_step.cpp")
EXTENSIONS_DIR_ENV = "SEQ2SEQ_EXTENSIONS_DIR"
# Content-addressed (``extension_name``), so every copy of the same source may share one
# build: the checkout, the tests' fresh processes and a served model's own copy of the code
# (a per-copy cache would build for minutes in each). The Makefile points it at .state/.
DEFAULT_EXTENSIONS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "seq2seq"
    / "torch_extensions"
)
CFLAGS = ["-O3"]

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def extension_name(source: str) -> str:
    """The module's name: the source's hash with the torch version and flags, so a new
    torch or an edited source builds anew instead of loading a stale library."""
    key = "\n".join([source, torch.__version__, " ".join(CFLAGS)])
    return "seq2seq_decode_step_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_dir(name: str) -> Path:
    return Path(os.environ.get(EXTENSIONS_DIR_ENV, DEFAULT_EXTENSIONS_DIR)) / name


def load() -> ModuleType | None:
    """The built extension, building it on first use; None where it cannot be built (logged
    once per process). Cheap after the first call: every decoding call asks."""
    with _lock:  # one build per process, however many threads decode
        source = _source()
        if source is None:  # a copy of the package without its .cpp
            if "" not in _loaded:
                log.warning("compiled decoding step: %s is missing; decoding runs eagerly", SOURCE)
                _loaded[""] = None
            return None
        name = extension_name(source)
        if name not in _loaded:
            _loaded[name] = _build(name, source)
        return _loaded[name]


@functools.cache
def _source() -> str | None:
    """The C++ source, read once per process."""
    try:
        return SOURCE.read_text(encoding="utf-8")
    except OSError:
        return None


def _build(name: str, source: str) -> ModuleType | None:
    from torch.utils import cpp_extension  # imports setuptools: only when first needed

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        log.warning("compiled decoding step: no C++ compiler (%s); decoding runs eagerly", compiler)
        return None
    directory = build_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        module = cpp_extension.load_inline(
            name, cpp_sources=[source], build_directory=str(directory), extra_cflags=CFLAGS
        )
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
        log.warning(
            "compiled decoding step: the build in %s failed (%s); decoding runs eagerly",
            directory,
            _first_error(str(exc)) or type(exc).__name__,
        )
        return None
    log.info(
        "compiled decoding step: %s ready in %.1f s (%s)",
        name,
        time.perf_counter() - start,
        directory,
    )
    return module


def _first_error(output: str) -> str:
    """The compiler's first error line, else the output's last line: what a log needs."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if ": error:" in line]
    return (errors or lines[-1:] or [""])[0][-300:]
