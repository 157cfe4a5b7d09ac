"""Tests for cigl_bayes.drop_rate: --drop-rate auto chooses by validation NLL of pilot runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cigl_bayes.drop_rate import choose_drop_rate
from cigl_bayes.evaluate import predict_logits
from cigl_bayes.methods import assemble
from cigl_bayes.runner import final_model, run


def test_auto_picks_the_candidate_with_the_lowest_validation_nll(tiny_config, digits_data) -> None:
    config = tiny_config("cigl", optim__epochs=4, random_mask__drop_rate="auto", random_mask__auto_candidates=(0.0, 0.5))
    blind = dataclasses.replace(digits_data, x_test=torch.full_like(digits_data.x_test, float("nan")))  # never read
    resolved, record = choose_drop_rate(config, blind)
    assert record["pilot_epochs"] == 2 and set(record["val_nll"]) == {"0", "0.5"}
    best = min(record["val_nll"], key=record["val_nll"].get)
    assert resolved.random_mask.drop_rate == record["drop_rate"] == float(best)
    assert record["pilot_seconds"] > 0 and record["chosen_by"].startswith("auto")
    # each score is the validation NLL of that pilot, recomputed independently
    for rate, nll in record["val_nll"].items():
        pilot = config.with_(random_mask__drop_rate=float(rate), optim__epochs=2, optim__warmup_epochs=1)
        parts = assemble(pilot, digits_data, progress=False)
        parts.trainer.fit()
        logits = predict_logits(final_model(parts), digits_data.x_val)
        assert F.cross_entropy(logits, digits_data.y_val).item() == pytest.approx(nll, rel=1e-5)


def test_run_records_how_the_rate_was_chosen(tiny_config, tmp_path) -> None:
    auto = run(tiny_config("cigl", random_mask__drop_rate="auto", random_mask__auto_candidates=(0.01, 0.1)), tmp_path, progress=False)
    assert auto["random_mask"]["chosen_by"].startswith("auto") and auto["random_mask"]["drop_rate"] in (0.01, 0.1)
    assert auto["config"]["random_mask"]["drop_rate"] == auto["random_mask"]["drop_rate"]  # the resolved config is saved
    given = run(tiny_config("cigl", random_mask__drop_rate=0.05), None, progress=False)
    assert given["random_mask"] == {"drop_rate": 0.05, "chosen_by": "given"}
    assert "random_mask" not in run(tiny_config("rigl"), None, progress=False)


def test_unresolved_auto_and_bad_values_are_refused(tiny_config, digits_data) -> None:
    with pytest.raises(ValueError, match="resolved by pilot runs"):
        assemble(tiny_config("cigl", random_mask__drop_rate="auto"), digits_data, progress=False)
    with pytest.raises(ValueError, match="or 'auto'"):
        tiny_config("cigl", random_mask__drop_rate="sometimes")
    with pytest.raises(ValueError, match="candidates"):
        tiny_config("cigl", random_mask__auto_candidates=(0.1, 1.5))


def test_cli_accepts_auto_and_rejects_words(tmp_path) -> None:
    from typer.testing import CliRunner

    from cigl_bayes.cli import app

    bad = CliRunner().invoke(app, ["train", "--drop-rate", "often", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--drop-rate takes a number" in bad.output
    ok = CliRunner().invoke(app, ["train", "--method", "cigl", "--model", "mlp", "--epochs", "2", "--batch-size", "128",
                                  "--update-every", "2", "--drop-rate", "auto", "--out", str(tmp_path / "r"), "--no-progress"])
    assert ok.exit_code == 0, ok.output
