"""Tests for cigl_bayes.models: shapes, parameter counts, zero-init, dropout, validation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from cigl_bayes.models import (
    MODEL_NAMES,
    BasicBlock,
    Bottleneck,
    WideBasicBlock,
    build_model,
)

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def cached(name: str, shape: tuple[int, ...], k: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, shape, k)


def test_model_names() -> None:
    assert MODEL_NAMES == ("mlp", "cnn", "resnet18", "resnet50", "wrn-22-2", "vgg19")


@pytest.mark.parametrize("shape", [CIFAR, DIGITS], ids=["32x32", "8x8"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape(name: str, shape: tuple[int, ...]) -> None:
    model = cached(name, shape, 7).eval()
    with torch.no_grad():
        for batch in (2, 5):
            out = model(torch.randn(batch, *shape))
            assert out.shape == (batch, 7)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "wrn-22-2"])
def test_train_mode_forward_backward_8x8(name: str) -> None:
    model = build_model(name, DIGITS, 10).train()
    out = model(torch.randn(2, *DIGITS))
    out.sum().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_flat_input_and_hidden_sizes() -> None:
    model = build_model("mlp", (64,), 10).eval()
    assert model(torch.randn(3, 64)).shape == (3, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 256), (256, 256), (256, 10)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2


def test_cnn_architecture() -> None:
    model = build_model("cnn", DIGITS, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)), (32, 64, (3, 3)), (64, 128, (3, 3)),
    ]  # fmt: skip
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 1
    # conv weights + 3 BN (gamma, beta) + Linear(128 -> 10)
    expected = 9 * (1 * 32 + 32 * 64 + 64 * 128) + 2 * (32 + 64 + 128) + 128 * 10 + 10
    assert n_params(model) == expected


@pytest.mark.parametrize(("name", "count"), [("resnet18", 11_173_962), ("resnet50", 23_520_842)])
def test_resnet_param_counts(name: str, count: int) -> None:
    assert n_params(cached(name, CIFAR)) == count


def _wrn_param_count(depth: int, k: int, in_ch: int, num_classes: int) -> int:
    """Independent count for a pre-activation WRN (bias-free convs, BN gamma+beta, Linear with bias)."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = 9 * in_ch * widths[0]  # stem conv
    cin = widths[0]
    for g, cout in enumerate(widths[1:]):
        for i in range(n):
            c_in = cin if i == 0 else cout
            stride = (1 if g == 0 else 2) if i == 0 else 1
            total += 2 * c_in + 9 * c_in * cout  # BN1, conv1
            total += 2 * cout + 9 * cout * cout  # BN2, conv2
            if c_in != cout or stride != 1:
                total += c_in * cout  # 1x1 shortcut conv
        cin = cout
    total += 2 * cin  # final BN
    total += cin * num_classes + num_classes  # Linear head
    return total


def test_wrn_param_count() -> None:
    expected = _wrn_param_count(22, 2, 3, 10)
    assert expected == 1_079_642  # sanity of the formula itself
    assert n_params(cached("wrn-22-2", CIFAR)) == expected
    assert n_params(build_model("wrn-22-2", DIGITS, 5)) == _wrn_param_count(22, 2, 1, 5)
    blocks = [m for m in cached("wrn-22-2", CIFAR).modules() if isinstance(m, WideBasicBlock)]
    assert len(blocks) == 9
    assert [b.conv2.out_channels for b in blocks] == [32] * 3 + [64] * 3 + [128] * 3


def _vgg19_param_count(in_ch: int, num_classes: int) -> int:
    cfg = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
    total, cin = 0, in_ch
    for v in cfg:
        total += 9 * cin * v + 2 * v  # bias-free conv + BN
        cin = v
    return total + 512 * num_classes + num_classes


def test_vgg19_structure_and_params() -> None:
    model = cached("vgg19", CIFAR)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 16
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert n_params(model) == _vgg19_param_count(3, 10)
    small = cached("vgg19", DIGITS)
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3  # 8 -> 4 -> 2 -> 1
    assert n_params(small) == _vgg19_param_count(1, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_zero_init_residual(name: str) -> None:
    model = cached(name, CIFAR).eval()
    block_type = BasicBlock if name == "resnet18" else Bottleneck
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    for b in blocks:
        last = b.bn2 if block_type is BasicBlock else b.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.count_nonzero(last.bias) == 0
        # the other BNs are not zeroed
        assert torch.all(b.bn1.weight == 1)
    # each block outputs exactly relu(shortcut(x)) at init
    records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [b.register_forward_hook(lambda m, i, o: records.append((m, i[0], o))) for b in blocks]
    try:
        with torch.no_grad():
            model(torch.randn(2, *CIFAR))
            assert len(records) == len(blocks)
            for block, x, out in records:
                assert torch.equal(out, torch.relu(block.shortcut(x)))
    finally:
        for h in hooks:
            h.remove()


def test_resnet_structure() -> None:
    model = cached("resnet18", CIFAR)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    shortcut_convs = [
        b.shortcut[0] for b in model.modules() if isinstance(b, BasicBlock) and isinstance(b.shortcut, nn.Sequential)
    ]
    assert [c.kernel_size for c in shortcut_convs] == [(1, 1)] * 3


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_all_weights_in_standard_conv_linear(name: str) -> None:
    model = cached(name, DIGITS)
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() >= 2:
                assert isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "weight"
            else:
                assert isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_dropout_by_default(name: str) -> None:
    assert not any(isinstance(m, nn.Dropout) for m in cached(name, DIGITS).modules())
    assert not any(isinstance(m, nn.Dropout) for m in build_model(name, DIGITS, 3, dropout=0.0).modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dropout(name: str) -> None:
    torch.manual_seed(1)
    model = build_model(name, DIGITS, 10, dropout=0.5)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == (2 if name == "mlp" else 1)
    assert all(d.p == 0.5 for d in drops)
    x = torch.randn(4, *DIGITS)
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert torch.equal(c, d)


def test_dropout_sits_before_classifier() -> None:
    model = build_model("resnet18", DIGITS, 10, dropout=0.5)
    seen: list[str] = []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Dropout, nn.Linear)):
            m.register_forward_hook(lambda mod, i, o, n=n: seen.append(n))
    model.train()(torch.randn(2, *DIGITS))
    assert seen == ["dropout", "linear"]


def test_name_is_case_insensitive() -> None:
    assert isinstance(build_model("MLP", (4,), 2), nn.Module)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet34"}, "unknown model .*mlp, cnn, resnet18"),
        ({"name": "cnn", "input_shape": (64,)}, r"\(C, H, W\)"),
        ({"name": "resnet18", "input_shape": (64,)}, r"\(C, H, W\)"),
        ({"name": "wrn-22-2", "input_shape": (3, 32)}, r"\(C, H, W\)"),
        ({"name": "vgg19", "input_shape": (10,)}, r"\(C, H, W\)"),
        ({"name": "cnn", "input_shape": (1, 3, 3)}, ">= 4"),
        ({"name": "mlp", "input_shape": ()}, "input_shape"),
        ({"name": "mlp", "input_shape": (0, 4)}, "input_shape"),
        ({"name": "mlp", "input_shape": 5}, "input_shape"),
        ({"name": "mlp", "num_classes": 2.0}, "num_classes"),
        ({"name": "cnn", "num_classes": 0}, "num_classes"),
        ({"name": "mlp", "dropout": 1.0}, r"\[0, 1\)"),
        ({"name": "mlp", "dropout": -0.1}, r"\[0, 1\)"),
        ({"name": "resnet18", "dropout": float("nan")}, r"\[0, 1\)"),
    ],
)
def test_value_errors(kwargs: dict, match: str) -> None:
    args = {"name": "mlp", "input_shape": DIGITS, "num_classes": 10, "dropout": 0.0} | kwargs
    with pytest.raises(ValueError, match=match):
        build_model(**args)
