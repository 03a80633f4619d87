"""The same proofs on a CUDA device, in float32, where one is present; skipped cleanly
without one (CI has none). Each compares the GPU against the CPU or one path against the
other on the GPU."""

import pytest
import torch

from wavenet.batches import pack_padded, pad_names
from wavenet.models import ConvWaveNet, HierarchicalMLP, WaveNet
from wavenet.rundir import RunDir
from wavenet.sample import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
TOL = 1e-5


@pytest.fixture
def batch(names, vocab):
    return pad_names(names[:256], vocab, 8)


def _grads(model):
    return {k: p.grad.detach().cpu().double() for k, p in model.named_parameters()}


def test_conv_on_cuda_equals_the_cpu_and_its_packed_step(batch, vocab):
    X, Y = batch
    cpu = ConvWaveNet(len(vocab), generator=torch.Generator().manual_seed(0))
    gpu = ConvWaveNet(len(vocab), generator=torch.Generator().manual_seed(0)).cuda()
    _, loss_cpu = cpu(X, Y)
    loss_cpu.backward()
    _, loss_gpu = gpu(X.cuda(), Y.cuda())
    loss_gpu.backward()
    assert abs(loss_cpu.item() - loss_gpu.item()) < TOL
    ref = _grads(gpu)
    for k, g in _grads(cpu).items():
        assert torch.allclose(g, ref[k], rtol=0, atol=TOL), k
    gpu.zero_grad()
    _, loss_packed = gpu(pack_padded(X, Y, 8, len(vocab)).to("cuda"))
    loss_packed.backward()
    assert abs(loss_packed.item() - loss_gpu.item()) < TOL
    for k, g in _grads(gpu).items():
        assert torch.allclose(g, ref[k], rtol=0, atol=TOL), k


def test_mlp_and_conv_agree_on_cuda(names, vocab):
    from wavenet.batches import build_windows
    mlp = HierarchicalMLP(len(vocab), generator=torch.Generator().manual_seed(1)).cuda().eval()
    conv = ConvWaveNet.from_mlp(mlp).eval()
    X, _ = pad_names(names[:64], vocab, 8)
    Xw, _ = build_windows(names[:64], vocab, 8)
    with torch.no_grad():
        logits_conv, _ = conv(X.cuda())
        logits_mlp, _ = mlp(Xw.cuda())
    _, Y = pad_names(names[:64], vocab, 8)
    assert torch.allclose(logits_conv[Y != -1], logits_mlp, rtol=0, atol=TOL)


def test_wavenet_cached_sampling_equals_full_on_cuda(vocab):
    model = WaveNet(len(vocab), n_residual=32, n_skip=32, generator=torch.Generator().manual_seed(2))
    model = model.cuda().eval()
    cached = generate(model, 20, generator=torch.Generator().manual_seed(3), device="cuda")
    full = generate(model, 20, generator=torch.Generator().manual_seed(3), device="cuda", method="full")
    assert cached == full


@pytest.mark.parametrize("kind", ["lstm", "gru", "transformer"])
def test_peers_on_cuda_equal_the_cpu_and_their_cache(kind, names, vocab):
    """A peer's logits and loss on the GPU equal the CPU's (float32); its cache on the GPU
    equals its full forward there at every step."""
    from wavenet.config import model_config
    from wavenet.models import build_model
    def fresh():
        config = model_config(kind, dropout=0.0)
        return build_model(config, len(vocab), torch.Generator().manual_seed(0)).eval()
    cpu, gpu = fresh(), fresh().cuda()
    X, Y = pad_names(names[:64], vocab, 1)
    a, loss_a = cpu(X, Y)
    b, loss_b = gpu(X.cuda(), Y.cuda())
    assert torch.allclose(a, b.cpu(), rtol=0, atol=TOL) and abs(loss_a.item() - loss_b.item()) < TOL
    cache = gpu.new_cache(len(X))
    steps = [cache.logits] + [gpu.step(X[:, t].cuda(), cache) for t in range(1, X.shape[1])]
    assert torch.allclose(torch.stack(steps, 1), b, rtol=0, atol=TOL)
    cached = generate(gpu, 20, generator=torch.Generator().manual_seed(3), device="cuda")
    full = generate(gpu, 20, generator=torch.Generator().manual_seed(3), device="cuda", method="full")
    assert cached == full


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_train_eval_sample_on_cuda(dtype, tmp_path, names_path, cli):
    work = tmp_path / "run"
    code, out, err = cli("train", "-i", names_path, "-o", work, "--device", "cuda", "--dtype", dtype,
                         "--max-steps", "200", "--eval-interval", "100", "--no-progress", "-n", "3")
    assert code == 0 and "device cuda" in out, err
    assert RunDir(work).load()["step"] == 200
    code, out, err = cli("eval", "-o", work, "--device", "cuda")
    assert code == 0 and "val" in out, err
    code, out, err = cli("sample", "-o", work, "--device", "cuda", "--seed", "1", "-n", "5")
    assert code == 0 and len(out.splitlines()) == 5, err
