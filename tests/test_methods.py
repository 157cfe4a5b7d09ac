"""The method registry: every method assembles, trains and evaluates; its parts are the right ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask
from cigl_bayes.evaluate import measured_density, predict_logits
from cigl_bayes.methods import METHODS, assemble, check_device, get_method, validate
from cigl_bayes.runner import final_model, final_predictions, known_class_probs, run
from cigl_bayes.models import MODEL_NAMES
from cigl_bayes.sparse import SparseNet
from cigl_bayes.sparse.masks import maskable_weight_names


DENSITY = 0.1


def _nonzero_and_total(model: nn.Module) -> tuple[int, int]:
    """Non-zeros of the conv/linear weights as used in an eval-mode forward."""
    if isinstance(model, SparseNet):
        weights = model.masked_weights(sample=False)
    else:
        params = dict(model.named_parameters())
        weights = [params[n] for n in maskable_weight_names(model)]
    return sum(int(torch.count_nonzero(w)) for w in weights), sum(w.numel() for w in weights)


@pytest.fixture(scope="module")
def trained(single_thread, digits_data):
    """Every method trained for 2 epochs on digits (MLP), with its final predictions."""
    from cigl_bayes.config import recipe

    results = {}
    for name in METHODS:
        config = recipe("digits").with_(method=name, model__name="mlp", optim__epochs=2, data__batch_size=128,
                                        sparsity__update_every=2, sparsity__density=DENSITY, eval__mc_samples=2,
                                        moon__warmup_epochs=1)
        parts = assemble(config, digits_data, None, progress=False)
        history = parts.trainer.fit()
        log_probs, notes = final_predictions(parts, config, digits_data)
        results[name] = (config, parts, history, {k: v.exp() for k, v in log_probs.items()}, notes)
    return results


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_predicts(name: str, trained, digits_data) -> None:
    config, parts, history, probs, notes = trained[name]
    assert len(history.loss) == 2 and all(torch.isfinite(torch.tensor(history.loss)))
    if parts.method.svi:  # -ELBO/N carries the KL's constant: check it went down instead
        assert history.loss[-1] < history.loss[0]
    else:
        assert history.loss[-1] < 2.3  # below chance-level cross-entropy (ln 10): it learned something
    for split, labels in (("val", digits_data.y_val), ("test", digits_data.y_test)):
        outputs = digits_data.num_classes + (1 if parts.method.unknown_class else 0)  # MOON: K + 1
        assert probs[split].shape == (len(labels), outputs)
        p = known_class_probs(probs[split], digits_data.num_classes)
        assert p.shape == (len(labels), digits_data.num_classes)
        assert torch.all(p >= 0) and torch.allclose(p.sum(-1), torch.ones(len(labels)), atol=1e-5)
    accuracy = (known_class_probs(probs["test"], 10).argmax(-1) == digits_data.y_test).float().mean().item()
    assert accuracy > 0.5, f"{name}: test accuracy {accuracy}"
    assert parts.method is METHODS[name]
    assert isinstance(parts.model, SparseNet) == METHODS[name].sparse


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.sparse])
def test_sparse_methods_end_at_target_density(name: str, trained) -> None:
    config, parts, history, probs, notes = trained[name]
    net = parts.model
    target = round(DENSITY * net.support.total)
    assert abs(net.support.nnz - target) <= 1
    assert int(net.support.flat.sum()) == net.support.nnz
    if METHODS[name].averaging != "weights":
        model = final_model(parts)
        assert model is net
        nonzero, total = _nonzero_and_total(model)
        assert total == net.support.total
        assert abs(nonzero - DENSITY * total) <= 1, f"{name}: {nonzero} non-zeros, target {DENSITY * total}"
        assert measured_density(model) == pytest.approx(nonzero / total)
        if METHODS[name].averaging is None:
            assert notes["measured_density"] == pytest.approx(nonzero / total)
        else:  # a snapshot ensemble: members are W * Z * M (sampled masks), all inside the support
            assert notes["measured_density"] <= nonzero / total
            for member in parts.averaging.ensemble.members:
                params = dict(member.named_parameters())
                for weight_name, mask in zip(net.weight_names, net.support.layers()):
                    assert torch.count_nonzero(params[weight_name][~mask]) == 0
        # stored weights off the support are exactly zero
        for weight, mask in zip(net.weights(), net.support.layers()):
            assert torch.count_nonzero(weight[~mask]) == 0
    if METHODS[name].update != "static":
        assert parts.trainer.gate.updates_done > 0


def test_static_support_never_changes(digits_data, tiny_config) -> None:
    parts = assemble(tiny_config("static"), digits_data, None, progress=False)
    before = parts.model.support.flat.clone()
    parts.trainer.fit()
    assert torch.equal(before, parts.model.support.flat)
    rigl = assemble(tiny_config("rigl"), digits_data, None, progress=False)
    before = rigl.model.support.flat.clone()
    rigl.trainer.fit()
    assert not torch.equal(before, rigl.model.support.flat)
    assert rigl.model.support.counts == parts.model.support.counts  # per-layer counts preserved


def test_dense_is_dense(trained) -> None:
    config, parts, history, probs, notes = trained["dense"]
    assert not isinstance(parts.model, SparseNet)
    assert measured_density(parts.model) == 1.0
    assert parts.trainer.gate is None


def test_cigl_final_model_is_the_sparse_average(trained, digits_data) -> None:
    config, parts, history, probs, notes = trained["cigl"]
    net = parts.model
    assert isinstance(net.random_mask, RandomMask) and net.random_mask.drop_rate == config.random_mask.drop_rate
    averaged = final_model(parts)
    assert averaged is parts.averaging.weights.averaged
    assert not isinstance(averaged, SparseNet) and type(averaged) is type(net.module)
    assert notes["snapshots"] == parts.averaging.count == 1  # start = int(0.8 * 2) = 1: the last epoch
    # its support is M: no non-zero outside the (frozen) support
    params = dict(averaged.named_parameters())
    for name, mask in zip(net.weight_names, net.support.layers()):
        assert torch.count_nonzero(params[name][~mask]) == 0, name
    # evaluated without a random mask: plain softmax of the averaged model's logits
    for split, x in (("val", digits_data.x_val), ("test", digits_data.x_test)):
        assert torch.allclose(probs[split], predict_logits(averaged, x).softmax(-1), atol=1e-6)
    assert notes["measured_density"] == pytest.approx(measured_density(averaged))


@pytest.mark.parametrize("sample_mask", [False, True])
def test_cigl_average_keeps_the_support_density(sample_mask: bool, digits_data, tiny_config) -> None:
    # Averaging from epoch 0 over 4 epochs gives 4 snapshots; as in the spec (T_end < BS) the support must be
    # frozen before the first snapshot: end_fraction 0.25 puts T_end at step 8 = the end of epoch 0.
    config = tiny_config("cigl", optim__epochs=4, averaging__start_fraction=0.0, sparsity__end_fraction=0.25,
                         averaging__sample_mask=sample_mask, random_mask__drop_rate=0.1)
    parts = assemble(config, digits_data, None, progress=False)
    parts.trainer.fit()
    net, averaged = parts.model, final_model(parts)
    assert parts.averaging.count == 4
    nonzero, total = _nonzero_and_total(averaged)
    assert total == net.support.total
    if sample_mask:
        # a position is zero only if Z dropped it in all 4 snapshots (p = 0.1 ** 4 each)
        assert net.support.nnz - 5 <= nonzero <= net.support.nnz
    else:
        assert nonzero == net.support.nnz
    assert abs(net.support.nnz - DENSITY * total) <= 1


def test_rigl_ts_reports_positive_temperature(trained, digits_data) -> None:
    config, parts, history, probs, notes = trained["rigl-ts"]
    temperature = notes["temperature"]
    assert isinstance(temperature, float) and 0 < temperature < float("inf")
    logits = predict_logits(parts.model, digits_data.x_test)
    assert torch.allclose(probs["test"], (logits / temperature).softmax(-1), atol=1e-5)
    assert temperature != pytest.approx(1.0)  # it actually rescaled something
    assert "temperature" not in trained["rigl"][4]


def test_rigl_mcdrop_has_dropout(trained) -> None:
    config, parts, history, probs, notes = trained["rigl-mcdrop"]
    drops = [m for m in parts.model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == config.model.dropout > 0 for m in drops)
    assert notes["mc_samples"] == config.eval.mc_samples
    for name in ("rigl", "cigl", "dense"):
        assert not any(isinstance(m, nn.Dropout) for m in trained[name][1].model.modules()), name


def test_cigl_pred_avg_averages_predictions(trained, digits_data) -> None:
    config, parts, history, probs, notes = trained["cigl-pred-avg"]
    assert parts.averaging.weights is None and parts.averaging.count == notes["snapshots"] == 1
    members = parts.averaging.ensemble.members
    mean = torch.stack([m(digits_data.x_test).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(probs["test"], mean, rtol=1e-5, atol=1e-6)
    assert final_model(parts) is parts.model


def test_cigl_no_rm_has_no_random_mask(trained) -> None:
    config, parts, history, probs, notes = trained["cigl-no-rm"]
    assert parts.model.random_mask is None
    assert final_model(parts) is parts.averaging.weights.averaged


def test_run_record_reports_target_and_measured_density(tiny_config) -> None:
    record = run(tiny_config("rigl", sparsity__density=0.2), progress=False)
    assert record["density"] == 0.2
    assert abs(record["measured_density"] - 0.2) < 1e-3
    assert record["method"] == "rigl" and record["config"]["sparsity"]["density"] == 0.2
    for key in ("accuracy", "ece", "nll", "brier"):
        assert key in record and key in record["val"]
    dense = run(tiny_config("dense", sparsity__density=0.2), progress=False)
    assert dense["density"] == 1.0 and dense["measured_density"] == 1.0


def test_unknown_method_lists_choices(tiny_config, digits_data) -> None:
    with pytest.raises(ValueError) as info:
        get_method("rigl2")
    for name in METHODS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        assemble(tiny_config("magic"), digits_data, None, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        validate(tiny_config("magic"))


def test_validate(tiny_config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    validate(tiny_config("cigl"))
    validate(tiny_config("cigl", data__dataset=f"npz:{tmp_path / 'x.npz'}"))  # existence is checked at load time
    with pytest.raises(ValueError) as info:
        validate(tiny_config("cigl", model__name="transformer"))
    assert all(name in str(info.value) for name in MODEL_NAMES)
    with pytest.raises(ValueError, match="unknown dataset 'fashion-mnist'.*cifar10"):
        validate(tiny_config("cigl", data__dataset="fashion-mnist"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cpu"):
        validate(tiny_config("cigl", device="cuda"))
    with pytest.raises(ValueError, match="CUDA"):
        validate(tiny_config("cigl", device="cuda:0"))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cpu:0", "cuda:0", "cuda:12", "CUDA", "Cpu", " cuda", "cuda:", "cuda:01",
                                    "cuda:-1", "cuda:+1", "cuda:0:1", "cuda :0", "mps", "meta", "tpu", "cuda:\u0661"])
def test_check_device_reads_names_as_torch_does(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch-free name check accepts exactly the cpu / cuda strings ``torch.device`` parses."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        expected = torch.device(device).type in ("cpu", "cuda")
    except RuntimeError:
        expected = False
    if expected:
        check_device(device)
    else:
        with pytest.raises(ValueError, match="unknown device"):
            check_device(device)


def test_batch_larger_than_data_is_rejected(tiny_config, digits_data) -> None:
    with pytest.raises(ValueError, match="--batch-size"):
        assemble(tiny_config("rigl", data__batch_size=5000), digits_data, None, progress=False)


def test_same_seed_same_result_different_seed_differs(tiny_config, digits_data) -> None:
    def train(seed: int) -> torch.Tensor:
        parts = assemble(tiny_config("cigl", seed=seed, optim__epochs=1), digits_data, None, progress=False)
        parts.trainer.fit()
        return torch.cat([p.detach().flatten() for p in parts.model.parameters()])

    a, b, c = train(0), train(0), train(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
