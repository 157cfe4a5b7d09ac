"""A tiny Hugging Face GPT-2 (built from a config, no download) trained sparse with CigL + RigL: tied
embeddings are one masked slot, ``Conv1D`` weights are masked, density is exact and the support never
leaks across updates, and ``to_sparse_module`` gives a plain ``GPT2LMHeadModel`` with the same logits.
Also runs the README's ``### A Hugging Face model`` snippet as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cigl_bayes.cigl import RandomMask
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater, to_sparse_module

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

VOCAB = 64


def config() -> GPT2Config:
    return GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0)


def tokens(n: int, length: int, seed: int) -> torch.Tensor:
    """Sequences with ``x[t+1] = x[t] + 3 (mod VOCAB)`` from random starts: learnable next-token rule."""
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + 3 * torch.arange(length)) % VOCAB


def assert_support_exact(net: SparseNet, counts: list[int]) -> None:
    assert net.support.counts == counts and int(net.support.flat.sum()) == net.support.nnz == sum(counts)
    for w, m in zip(net.weights(), net.support.layers()):
        assert torch.all(w[~m] == 0)  # nothing off the support, ever


def test_gpt2_trains_sparse_with_cigl_and_exports_plain():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config())
    net = SparseNet(model, density=0.3, random_mask=RandomMask(drop_rate=0.05, seed=1), seed=2)

    # the tied embedding / head is one slot; every Conv1D weight is masked; wpe, LayerNorms, biases are not
    conv1d = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8 and set(net.weight_names) == {"transformer.wte.weight", *conv1d}
    assert net.weight_aliases[0] == ("transformer.wte.weight", "lm_head.weight")
    assert model.lm_head.weight is model.transformer.wte.weight
    total = sum(p.numel() for n, p in model.named_parameters() if n in net.weight_names)
    assert net.support.total == total and net.support.nnz == round(0.3 * total)
    counts = list(net.support.counts)
    assert_support_exact(net, counts)

    steps = 40
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    updater = TopologyUpdater(net, opt, DropSchedule.for_run(total_steps=steps, update_every=10), rule="rigl")
    train, held_out = tokens(16, 16, seed=3), tokens(16, 16, seed=4)
    net.eval()
    with torch.no_grad():
        before = net(input_ids=held_out, labels=held_out).loss.item()
    net.train()
    supports = [net.support.flat.clone()]
    for _ in range(steps):
        out = net(input_ids=train, labels=train)  # kwargs pass through; a ModelOutput comes back
        opt.zero_grad()
        out.loss.backward()
        if updater():
            opt.step()
        else:
            supports.append(net.support.flat.clone())
        assert_support_exact(net, counts)
    assert updater.updates_done == 2 and not torch.equal(supports[0], supports[-1])  # RigL moved the support
    net.eval()
    with torch.no_grad():
        after = net(input_ids=held_out, labels=held_out).loss.item()
    assert after < 0.5 * before, (before, after)  # ln(64) = 4.16 -> about 0.5

    plain = to_sparse_module(net)
    fresh = GPT2LMHeadModel(config())
    fresh.load_state_dict(plain.state_dict())
    fresh.eval()
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    with torch.no_grad():
        expected = net(input_ids=held_out).logits
        torch.testing.assert_close(fresh(input_ids=held_out).logits, expected)
    params = dict(fresh.named_parameters())
    for name, m in zip(net.weight_names, net.support.layers()):
        assert torch.all(params[name][~m] == 0)


def test_readme_huggingface_snippet_runs_as_written(tmp_path: Path, readme_blocks, python_run):
    (snippet,) = readme_blocks("### A Hugging Face model")
    proc = python_run(snippet, tmp_path)
    assert proc.returncode == 0, proc.stderr
    loss = float(re.search(r"loss ([0-9.]+)", proc.stdout).group(1))
    assert loss < 2.0, proc.stdout  # from ln(64) = 4.16 at the start
