"""Sparse conv inference: exact against the dense conv, BN folding, and the measured per-layer choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cigl_bayes.export import SparseLinearInference, to_sparse_inference
from cigl_bayes.models import MLP, build_model
from cigl_bayes.models.cnn import SmallCNN
from cigl_bayes.sparse.network import SparseNet
from cigl_bayes.sparse_inference import (
    FoldedBatchNorm1d,
    SparseConv2dInference,
    capture_inputs,
    default_output_format,
    fold_batchnorm,
    probe_layers,
    set_output_format,
)
from cigl_bayes.sparse_kernel import load_kernel

HAS_KERNEL = load_kernel() is not None
BACKENDS = ["torch", pytest.param("kernel", marks=pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler"))]
# float32 sums in another order: |diff| <= 1e-5 * (1 + |y|) for outputs of order 1
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _sparse_conv(*args, density: float = 0.2, **kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(*args, **kwargs)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < density)
    return conv.eval()


def _masked(name: str, shape: tuple[int, ...], density: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    model = MLP(shape, 10, hidden_sizes=(256, 256)) if name == "mlp" else build_model(name, shape, 10)
    net = SparseNet(model, density, "erk", seed=1)
    for m in net.module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net.module.eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", [
    (3, 1, 1, 1, 1, False),   # WRN 3x3
    (3, 2, 1, 1, 1, True),    # strided, bias
    (1, 1, 0, 1, 1, True),    # pointwise
    (1, 2, 0, 1, 1, False),   # WRN strided shortcut
    (3, 1, 0, 1, 1, True),    # no padding
    (5, 3, 2, 1, 1, False),   # stride 3, padding 2
    (3, 1, 2, 2, 1, True),    # dilation
    (3, 2, 1, 1, 2, True),    # groups
    ((3, 1), (2, 1), (1, 0), 1, 1, True),  # rectangular
])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_matches_dense(backend, kernel, stride, padding, dilation, groups, bias, batch):
    torch.manual_seed(0)
    conv = _sparse_conv(4, 6, kernel, stride, padding, dilation, groups, bias=bias)
    sparse = SparseConv2dInference(conv, backend)
    x = torch.randn(batch, 4, 9, 7)
    square = torch.randn(batch, 4, 16, 16)  # outputs 16x16 / 8x8 (kernel: row tiles), 14x14, 6x6 (grid tiles)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), torch.randn(batch, 4, 18, 7)[:, :, ::2],
                square, square.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            torch.testing.assert_close(sparse(inp), conv(inp), **TOL)
    assert sparse.backend == backend and abs(sparse.density - float((conv.weight != 0).double().mean())) < 1e-12


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler")
@pytest.mark.parametrize("fmt,expect_cl", [("input", [False, True]), ("channels_last", [True, True]),
                                           ("contiguous", [False, False])])
def test_output_format(fmt, expect_cl):
    conv = _sparse_conv(8, 16, 3, padding=1)
    sparse = SparseConv2dInference(conv, "kernel", fmt)
    x = torch.randn(2, 8, 6, 6)
    for inp, cl in zip((x, x.contiguous(memory_format=torch.channels_last)), expect_cl):
        y = sparse(inp)
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        torch.testing.assert_close(y, conv(inp), **TOL)


def test_bad_arguments():
    conv = _sparse_conv(2, 2, 3)
    with pytest.raises(ValueError, match="backend"):
        SparseConv2dInference(conv, "cuda")
    with pytest.raises(ValueError, match="output_format"):
        SparseConv2dInference(conv, "auto", "nhwc")
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2dInference(nn.Conv2d(2, 2, 3, padding="same"))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        SparseConv2dInference(conv)(torch.randn(1, 3, 5, 5))


def test_no_kernel_falls_back(monkeypatch):
    monkeypatch.setenv("CIGL_BAYES_NO_KERNEL", "1")
    conv = _sparse_conv(3, 5, 3, padding=1)
    with pytest.raises(RuntimeError, match="backend='torch'"):
        SparseConv2dInference(conv, "kernel")
    sparse = SparseConv2dInference(conv)
    assert sparse.backend == "torch"
    model = _masked("cnn", (1, 8, 8))
    # without the kernel and without a probe, convs stay dense (the torch path is slower than dense)
    assert not any(isinstance(m, SparseConv2dInference) for m in to_sparse_inference(model).modules())


@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("wrn-22-2", (3, 8, 8)), ("mlp", (20,))])
def test_fold_batchnorm_is_exact(name, shape):
    model = _masked(name, shape)
    folded = _masked(name, shape)
    count = fold_batchnorm(folded)
    expected = {"cnn": 3, "wrn-22-2": 10, "mlp": 2}[name]  # WRN: stem conv -> bn1 of block 1, conv1 -> bn2 per block
    assert count == expected
    remaining = sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert remaining == sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()) - count
    x = torch.randn(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    # zeros stay zeros: the folded weight keeps the sparse support
    params = dict(folded.named_parameters())
    for n, a in model.named_parameters():
        if n.endswith("weight") and a.dim() > 1:
            assert torch.equal(a == 0, params[n] == 0), n


def test_fold_batchnorm_sequential_fallback_and_guards():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent branch: torch.fx cannot trace this
                return x
            return self.body(x)

    model = Untraceable().eval()  # the conv has a bias: folded as (b - mu) * gamma / sigma + beta
    model.body[1].running_mean.normal_()
    model.body[1].running_var.uniform_(0.25, 4.0)
    model.body[1].weight.data.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        ref = model(x)
        assert fold_batchnorm(model) == 1 and isinstance(model.body[1], nn.Identity)
        torch.testing.assert_close(model(x), ref, **TOL)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    with pytest.raises(ValueError, match="fold_bn=False"):
        FoldedBatchNorm1d()(torch.randn(2, 3, 4))


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler")
@pytest.mark.parametrize("name,shape", [("cnn", (1, 8, 8)), ("wrn-22-2", (3, 8, 8))])
def test_to_sparse_inference_swaps_convs(name, shape):
    model = _masked(name, shape, 0.1)
    sparse = to_sparse_inference(model)
    convs = [m for m in sparse.modules() if isinstance(m, SparseConv2dInference)]
    candidates = [m for m in model.modules() if isinstance(m, nn.Conv2d) and (m.weight != 0).float().mean() <= 0.3]
    assert len(convs) == len(candidates) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sparse.modules()) or name == "wrn-22-2"
    for batch in (1, 4):
        x = torch.randn(batch, *shape)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                ref = model(inp)
                torch.testing.assert_close(sparse(inp), ref, atol=1e-4 * float(ref.abs().max()), rtol=0)


def test_probe_choice_follows_measurement():
    model = _masked("cnn", (1, 8, 8), 0.1)
    x = torch.randn(3, 1, 8, 8)
    # the probe sees each layer's real input: conv 3 (features.7) gets the pooled 4x4 map
    assert capture_inputs(model, ["features.7"], x)["features.7"].shape == (3, 64, 4, 4)
    log: list[tuple[str, tuple[int, ...]]] = []

    def timer(layer, inp):  # only the last conv (128 outputs) measures faster sparse; whole model: contiguous
        log.append((type(layer).__name__, tuple(inp.shape)))
        if isinstance(layer, SparseConv2dInference):
            return 1.0 if layer.out_channels == 128 else 2.0
        if isinstance(layer, SmallCNN):
            fmt = layer.features[7].output_format
            return 3.0 if fmt == "contiguous" else 4.0
        return 1.5

    out = to_sparse_inference(model, example_input=x, timer=timer)
    assert [n for n, m in out.named_modules() if isinstance(m, SparseConv2dInference)] == ["features.7"]
    assert ("SparseConv2dInference", (3, 64, 4, 4)) in log and ("Conv2d", (3, 32, 8, 8)) in log
    layer_calls = [entry for entry in log if entry[0] != "SmallCNN"]
    assert len(layer_calls) == 2 * 2 * 2  # 2 candidate convs (features.3, features.7) x dense/sparse x 2 rounds
    assert len(log) - len(layer_calls) == 2 * 2  # then the whole model, 2 output formats x 2 rounds
    assert out.features[7].output_format == "contiguous"  # measured faster (the default would be channels_last)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), atol=1e-4, rtol=1e-4)


def test_probe_measuring_dense_faster_keeps_everything_dense():
    model = _masked("mlp", (64,), 0.1)
    out = to_sparse_inference(model, example_input=torch.randn(2, 64),
                              timer=lambda layer, x: 2.0 if isinstance(layer, SparseLinearInference) else 1.0)
    assert not any(isinstance(m, (SparseLinearInference, SparseConv2dInference)) for m in out.modules())
    cnn = _masked("cnn", (1, 8, 8), 0.1)
    out = to_sparse_inference(cnn, example_input=torch.randn(2, 1, 8, 8),
                              timer=lambda layer, x: 2.0 if isinstance(layer, SparseConv2dInference) else 1.0)
    assert not any(isinstance(m, SparseConv2dInference) for m in out.modules())


def test_probe_layers_reports_medians():
    conv = _sparse_conv(2, 3, 3, padding=1)
    model = nn.Sequential(conv).eval()
    sparse = SparseConv2dInference(conv, "torch")
    calls = iter([1.0, 5.0, 3.0, 2.0, 4.0, 9.0])  # dense, sparse / sparse, dense / dense, sparse
    times = probe_layers(model, {"0": (conv, sparse)}, torch.randn(1, 2, 4, 4), lambda layer, x: next(calls), rounds=3)
    assert times == {"0": {"dense": 2.0, "sparse": 5.0}}  # medians of (1, 2, 4) and (5, 3, 9)


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler")
def test_deepcopy_keeps_the_kernel():
    import copy

    conv = _sparse_conv(3, 4, 3, padding=1)
    sparse = SparseConv2dInference(conv)
    x = torch.randn(2, 3, 5, 5)
    sparse(x)  # builds a plan holding data pointers
    for clone in (copy.deepcopy(sparse), copy.deepcopy(nn.Sequential(sparse))[0]):
        assert clone.backend == "kernel" and clone._kernel is not None and not clone._plans
        with torch.no_grad():
            torch.testing.assert_close(clone(x), conv(x), **TOL)
    with pytest.raises(ValueError, match="smaller than"):
        SparseConv2dInference(_sparse_conv(3, 4, 5))(torch.randn(1, 3, 3, 3))


def test_default_output_format_and_setter():
    assert default_output_format(_masked("cnn", (1, 8, 8))) == "channels_last"  # max-pools
    assert default_output_format(_masked("wrn-22-2", (3, 8, 8))) == "input"
    model = nn.Sequential(SparseConv2dInference(_sparse_conv(2, 3, 3)))
    set_output_format(model, "contiguous")
    assert model[0].output_format == "contiguous"
    with pytest.raises(ValueError, match="output_format"):
        set_output_format(model, "nhwc")
    with pytest.raises(ValueError, match="conv_output_format"):
        to_sparse_inference(model, conv_output_format="nhwc")


@pytest.mark.skipif(not HAS_KERNEL, reason="no C compiler")
def test_switching_output_format_keeps_cached_calls_valid():
    """Regression: each cached call owns its geometry tensor (a format switch once freed the other's)."""
    conv = _sparse_conv(16, 32, 3, padding=1)
    sparse = SparseConv2dInference(conv)
    x = torch.randn(4, 16, 8, 8)
    ref = conv(x).detach()
    for _ in range(20):
        for fmt in ("contiguous", "channels_last", "input"):
            sparse.output_format = fmt
            with torch.no_grad():
                torch.testing.assert_close(sparse(x), ref, **TOL)
            torch.randn(64, 64)  # reuse freed memory, as the probe's other work does
