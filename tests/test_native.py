"""models/native.py: the C kernels of the conv step's BatchNorm are built once, cached, used
where they load, and never in the way where they do not (tests/test_packed.py proves the step
both ways against the autograd reference)."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from wavenet.batches import pack_padded, pad_names
from wavenet.data import Vocab
from wavenet.models import ConvWaveNet, native

WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "jo", "bartholomew"]
VOCAB = Vocab.from_words(WORDS)
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """native.library() decided again in this test, into an empty cache; decided again after it."""
    monkeypatch.setenv("WAVENET_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    yield tmp_path / "cache"
    native.library.cache_clear()


def conv_step(dtype=torch.float64):
    m = ConvWaveNet(len(VOCAB), block_size=8, n_embd=6, n_hidden=10,
                    generator=torch.Generator().manual_seed(0)).to(dtype).train()
    X, Y = pad_names(WORDS, VOCAB, 8)
    _, loss = m(pack_padded(X, Y, 8, len(VOCAB)))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in m.parameters()]


@needs_cc
def test_the_step_calls_each_kernel_once_a_layer(fresh, monkeypatch):
    assert native.library() is not None, native.status()
    assert native.status().startswith("C kernels")
    calls = {"forward": 0, "backward": 0}
    real = native.kernels

    def counting(like):
        fwd, bwd = real(like)

        def f(*a):
            calls["forward"] += 1
            return fwd(*a)

        def b(*a):
            calls["backward"] += 1
            return bwd(*a)
        return f, b
    monkeypatch.setattr(native, "kernels", counting)
    conv_step()
    assert calls == {"forward": 3, "backward": 3}  # block 8: three layers


@needs_cc
def test_built_once_then_loaded_from_the_cache(fresh, monkeypatch):
    assert native.library() is not None
    built = list(fresh.glob("bn_tanh-*.so"))
    assert len(built) == 1 and not list(fresh.glob("*.tmp"))
    native.library.cache_clear()

    def no_compiling(*a, **k):
        raise AssertionError("compiled again")
    monkeypatch.setattr(native.subprocess, "run", no_compiling)
    assert native.library() is not None
    assert list(fresh.glob("bn_tanh-*.so")) == built


@needs_cc
def test_a_damaged_cached_library_is_built_again(fresh):
    path = native.library_path(native.compiler(), native.FLAG_SETS[0])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # as a crash mid-copy or a full disk might leave it
    assert native.library() is not None, native.status()
    assert path.read_bytes() != b"not a shared library"
    assert native.status().endswith(f" {' '.join(native.FLAG_SETS[0])})")


def test_turned_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("WAVENET_NATIVE", "0")
    assert native.library() is None and native.kernels(torch.zeros(1)) is None
    assert native.status() == "torch operators (WAVENET_NATIVE=0)"


def test_no_compiler_falls_back_to_torch(fresh, monkeypatch, tmp_path):
    expected = conv_step()
    native.library.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to compile with
    monkeypatch.setenv("CC", "no-such-cc")
    assert native.library() is None
    assert native.status() == "torch operators (no C compiler (cc, gcc or clang) on PATH)"
    loss, grads = conv_step()
    assert abs(loss - expected[0]) < 1e-12
    for g, e in zip(grads, expected[1]):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("where", ["a compiler that fails", "a cache that is a file"])
def test_a_failed_build_falls_back_and_says_why(fresh, monkeypatch, where):
    if where == "a compiler that fails":
        if shutil.which("false") is None:
            pytest.skip("no `false` to act as a failing compiler")
        monkeypatch.setenv("CC", "false")
    else:
        fresh.parent.mkdir(parents=True, exist_ok=True)
        fresh.write_text("a file where the cache directory should be")
    assert native.library() is None
    assert native.status().startswith("torch operators (the C kernels did not build: -O3 -march=native: ")
    conv_step()  # the step runs on the torch operators


def test_only_cpu_float32_and_float64(fresh):
    assert native.kernels(torch.zeros(1, dtype=torch.bfloat16)) is None
    assert native.kernels(torch.zeros(1, dtype=torch.float16)) is None


@pytest.mark.parametrize("shape", ["names/3@256", "cities/8@256", "names/8", "names/8@0"])
def test_the_kernel_benchmark_names_a_bad_shape_in_one_line(shape, capsys):
    """benchmarks/norm_kernels.py: a shape it cannot run is one line on stderr and exit 2,
    before anything is measured."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "norm_kernels.py"
    spec = importlib.util.spec_from_file_location("norm_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["names/8@256", shape]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"bad shape {shape!r}: expected DATA/BLOCK@POSITIONS with DATA names or fullnames, "
                   "e.g. names/64@256\n")
