"""bn_tanh.c, built once with the system's C compiler and loaded with ctypes: BatchNorm's
training-mode forward and backward for the conv's fused step on the CPU (tree_fused.py).

At 256 target positions a step of the fused conv is bound by its ~200 small torch operators,
not by its matrix products; per layer these kernels do the work of a dozen of them in two or
three passes over the rows. They compute the same arithmetic in the same order of sums over
rows (tests/test_packed.py proves the step both ways against the autograd reference in
float64 and float32). Nothing here is required: without a C compiler, with
`WAVENET_NATIVE=0` in the environment, on CUDA, or under torchrun, the step runs its torch
operators instead. The library is built at first use (about a second), keyed by the source,
the compiler's flags and this CPU, into `$WAVENET_CACHE` (default `~/.cache/wavenet`), and
written atomically, so concurrent processes (torchrun ranks, test workers) never load half a
file. `status()` says which way this process runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("bn_tanh.c")
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # -march=native where the compiler knows it
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
SIGNATURES = {"bn_forward": [_I, _I, _P, _D, _D, _D, _D, _P, _P, _P, _P, _P, _P, _P],
              "bn_backward": [_I, _I, _P, _D, _D, _P, _P, _P, _P, _P, _P, _P, _P]}
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_why_not = ""


def cache_dir() -> Path:
    return Path(os.environ.get("WAVENET_CACHE") or Path.home() / ".cache" / "wavenet")


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("vendor_id", "model name", "flags", ...),
    or {} where there is no such file."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_key() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (a home directory
    shared by different machines gets one library per kind of CPU)."""
    info = cpuinfo()
    found = [info[k] for k in ("model name", "flags", "Features", "CPU part") if k in info]
    return " ".join([platform.machine(), *(found or [platform.processor()])])


def library_path(cc: str, flags: list[str]) -> Path:
    """Where the library built from this source, compiler, flags and CPU lives in the cache."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *flags, cpu_key()]).encode()).hexdigest()
    return cache_dir() / f"bn_tanh-{key[:16]}.so"


def build(cc: str, flags: list[str], again: bool = False) -> Path:
    """The shared library for these flags, compiled unless already in the cache (or `again`).
    Written to a new file and renamed into place: a process that has the old one loaded keeps it."""
    out = library_path(cc, flags)
    if out.exists() and not again:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE)], check=True,
                       capture_output=True, timeout=120)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def compiler() -> str | None:
    """$CC, else cc, gcc or clang: the first on PATH."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def library():
    """The loaded kernels (a ctypes library), or None, with the reason in `status()`."""
    global _why_not
    if os.environ.get("WAVENET_NATIVE", "1") == "0":
        _why_not = "WAVENET_NATIVE=0"
        return None
    cc = compiler()
    if cc is None:
        _why_not = "no C compiler (cc, gcc or clang) on PATH"
        return None
    errors = []
    for flags in FLAG_SETS:
        try:
            try:
                lib = ctypes.CDLL(str(build(cc, flags)))
            except OSError:  # a damaged file in the cache: build it again, once
                lib = ctypes.CDLL(str(build(cc, flags, again=True)))
        except (OSError, subprocess.SubprocessError) as e:
            said = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip()  # the compiler's
            errors.append(f"{' '.join(flags)}: {said.splitlines()[0] if said else e}")
            continue
        for name, args in SIGNATURES.items():
            for suffix in SUFFIX.values():
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, None
        lib.description = f"C kernels ({Path(cc).name} {' '.join(flags)})"
        return lib
    _why_not = "the C kernels did not build: " + "; ".join(e[:200] for e in errors)
    return None


def kernels(like: torch.Tensor):
    """(forward, backward) for tensors like `like`, or None where the torch operators run:
    not on the CPU, not float32 or float64, or no library."""
    if like.device.type != "cpu" or like.dtype not in SUFFIX:
        return None
    lib = library()
    if lib is None:
        return None
    suffix = SUFFIX[like.dtype]
    return getattr(lib, f"bn_forward_{suffix}"), getattr(lib, f"bn_backward_{suffix}")


def status() -> str:
    """How this process's conv steps take BatchNorm on the CPU, in words."""
    lib = library()
    return lib.description if lib is not None else f"torch operators ({_why_not})"
