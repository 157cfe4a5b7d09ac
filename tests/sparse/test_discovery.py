"""Maskable-weight discovery by parameter (``masks.maskable_weight_names``) and what ``SparseNet`` does
with it: the old type-based order for the package's models, tied embedding / head weights as one
slot masked in both uses, attention projections, include / exclude globs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes.cigl import RandomMask
from cigl_bayes.models import build_model
from cigl_bayes.names import MODEL_NAMES
from cigl_bayes.sparse import SparseNet, maskable_weight_names, parameter_aliases
from cigl_bayes.sparse.masks import MASKABLE_TYPES


class TiedLM(nn.Module):
    """Embedding tied to a bias-free output head, with a LayerNorm and a hidden Linear between."""

    def __init__(self, vocab: int = 12, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.norm(self.embed(ids)))))


def reference_logits(model: TiedLM, w_eff: torch.Tensor, mid_eff: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The tied LM computed by hand, both uses of the tied weight reading ``w_eff``."""
    h = F.layer_norm(F.embedding(ids, w_eff), (w_eff.shape[1],), model.norm.weight, model.norm.bias)
    return torch.tanh(F.linear(h, mid_eff, model.mid.bias)) @ w_eff.T


def corrupt_off_support(net: SparseNet, value: float = 0.37) -> None:
    with torch.no_grad():
        for w, m in zip(net.weights(), net.support.layers()):
            w[~m] = value


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_package_models_keep_the_type_based_order(name):
    """Same names, same order as the old rule (every Linear / Conv weight): existing seeds keep their supports."""
    model = build_model(name, (3, 32, 32), 10)
    old = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, MASKABLE_TYPES)]
    assert maskable_weight_names(model) == old


def test_tied_weight_is_one_slot_masked_in_both_uses():
    torch.manual_seed(0)
    model = TiedLM()
    assert maskable_weight_names(model) == ["embed.weight", "mid.weight"]  # norm, biases: dense
    net = SparseNet(model, density=0.4, random_mask=RandomMask(drop_rate=0.2, seed=1), seed=2)
    assert net.weight_aliases == [("embed.weight", "head.weight"), ("mid.weight",)]
    assert net.support.shapes == [(12, 8), (8, 8)] and net.support.nnz == round(0.4 * (96 + 64))
    assert model.head.weight is model.embed.weight  # the tie survives wrapping
    corrupt_off_support(net)  # an unmasked use would read 0.37 off the support

    ids = torch.randint(0, 12, (5, 7), generator=torch.Generator().manual_seed(3))
    net.train()
    net.capture_dense_grad = True
    logits = net(ids)
    e = net.support.layer_views(net.last_sampled_mask)  # the Z drawn by this forward
    assert (e[0] == 0).any() and (e[0] != 0).any()
    w_ref = model.embed.weight.detach().clone().requires_grad_(True)
    mid_ref = model.mid.weight.detach().clone().requires_grad_(True)
    w_eff, mid_eff = w_ref * e[0], mid_ref * e[1]
    w_eff.retain_grad()
    expected = reference_logits(model, w_eff, mid_eff, ids)
    torch.testing.assert_close(logits, expected)

    target = torch.randint(0, 12, (5, 7), generator=torch.Generator().manual_seed(4))
    F.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
    F.cross_entropy(expected.flatten(0, 1), target.flatten()).backward()
    # one gradient for the tied weight: E * (embedding use + head use), zero where E == 0
    torch.testing.assert_close(model.embed.weight.grad, w_ref.grad)
    assert torch.all(model.embed.weight.grad[e[0] == 0] == 0)
    grads = net.dense_gradients()
    assert len(grads) == 2
    torch.testing.assert_close(grads[0], w_eff.grad)


def test_unwrap_of_tied_model_loads_into_a_fresh_instance():
    torch.manual_seed(0)
    net = SparseNet(TiedLM(), density=0.3, random_mask=RandomMask(drop_rate=0.1, rescale=False))
    corrupt_off_support(net)
    net.eval()
    ids = torch.arange(12).view(3, 4)
    plain = net.unwrap()
    assert plain.head.weight is plain.embed.weight
    fresh = TiedLM()
    fresh.load_state_dict(plain.state_dict())
    fresh.eval()
    with torch.no_grad():
        expected = net(ids)
        torch.testing.assert_close(plain(ids), expected)
        torch.testing.assert_close(fresh(ids), expected)
    keep = 1.0 - 0.1  # E[Z] without rescaling is baked in
    w, m = net.weights()[0], net.support.layers()[0]
    torch.testing.assert_close(fresh.head.weight, w * m * keep)


def test_include_and_exclude_globs():
    model = TiedLM()
    # excluding one name of a tied weight leaves the whole weight dense
    assert maskable_weight_names(model, exclude="head.*") == ["mid.weight"]
    assert maskable_weight_names(model, include=["*norm.weight", "mid.bias"]) == [
        "embed.weight", "norm.weight", "mid.weight", "mid.bias"]
    net = SparseNet(model, 0.5, include="norm.weight", exclude="mid.*")
    assert net.weight_names == ["embed.weight", "norm.weight"]
    with pytest.raises(ValueError, match="include pattern 'mlp.*' matches no parameter"):
        maskable_weight_names(model, include="mlp.*")
    with pytest.raises(ValueError, match="exclude pattern"):
        SparseNet(model, 0.5, exclude=["mid.weight", "nope"])
    with pytest.raises(ValueError, match="no weight that could be sparsified"):
        maskable_weight_names(model, exclude="*")
    with pytest.raises(TypeError, match="glob pattern"):
        maskable_weight_names(model, include=[3])


def test_only_compute_weights_by_default():
    """Embedding tables, position / class-token parameters, MHA's bias_k and norm scales stay dense."""

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.table = nn.EmbeddingBag(10, 8)
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)
            self.norm = nn.GroupNorm(2, 8)
            self.rnn = nn.GRU(8, 8)
            self.up = nn.ConvTranspose1d(8, 4, 3)

    names = maskable_weight_names(Custom())
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "up.weight"]
    aliases = parameter_aliases(Custom())
    assert list(aliases) == [n for n, _ in Custom().named_parameters()]


def encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True),
        nn.Flatten(), nn.Linear(16 * 5, 3),
    )


def test_transformer_encoder_attention_is_masked_with_exact_density():
    net = SparseNet(encoder(), density=0.2, seed=1)
    assert net.weight_names == ["0.self_attn.in_proj_weight", "0.self_attn.out_proj.weight", "0.linear1.weight",
                                "0.linear2.weight", "2.weight"]
    total = 16 * 48 + 16 * 16 + 32 * 16 + 16 * 32 + 80 * 3
    assert net.support.total == total and net.support.nnz == round(0.2 * total)
    for w, m, c in zip(net.weights(), net.support.layers(), net.support.counts):
        assert int(m.sum()) == c and int(torch.count_nonzero(w)) == c and torch.all(w[~m] == 0)

    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(2))
    corrupt_off_support(net)
    net(x).square().sum().backward()
    attn = net.module[0].self_attn
    assert torch.all(attn.in_proj_weight.grad[~net.support.layers()[0]] == 0)
    assert attn.in_proj_weight.grad.abs().sum() > 0

    net.eval()
    plain = net.unwrap()
    fresh = encoder(seed=5)
    fresh.load_state_dict(plain.state_dict())
    fresh.eval()
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(fresh(x), expected)
        torch.testing.assert_close(fresh[0].self_attn.in_proj_weight, attn.in_proj_weight * net.support.layers()[0])


def test_separate_qkv_projections_are_masked():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=4, batch_first=True)
    net = SparseNet(mha, density=0.5)
    assert net.weight_names == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    corrupt_off_support(net)
    out, _ = net(q, k, v)
    ref = net.unwrap()
    with torch.no_grad():
        for w, m in zip((ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight, ref.out_proj.weight), net.support.layers()):
            assert torch.all(w[~m] == 0)
        torch.testing.assert_close(ref(q, k, v)[0], out)
