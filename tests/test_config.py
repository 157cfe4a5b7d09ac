"""Recipes (the defaults a run gets for its dataset and model) and the config as data: dict and
YAML round trips, --set values, errors naming the field, the precedence of the layers."""

from __future__ import annotations

import json
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from cigl_bayes.benchmark import parse_arms
from cigl_bayes.cli import _config
from cigl_bayes.config import RunConfig, recipe
from cigl_bayes.config_io import (dump_yaml, field_names, fields_help, layered_config, load_config_file, parse_scalar,
                                  parse_sets)


def test_wrn_on_cifar_gets_the_papers_wrn_recipe() -> None:
    """WRN-22-2 on CIFAR: wd 5e-4 and decay every 30k iterations (spec); ResNet-50: 1e-4 / 20k."""
    for config in (recipe("cifar10", "wrn-22-2"), _config("cigl", "cifar10", 0, "cpu", model="wrn-22-2"),
                   parse_arms("cigl+model=wrn-22-2")[0].config("cifar10", 0.1, 0)):
        assert config.model.name == "wrn-22-2"
        assert config.optim.weight_decay == 5e-4 and config.optim.decay_every == 30_000
    resnet = _config("cigl", "cifar100", 0, "cpu")
    assert resnet.model.name == "resnet50" and resnet.optim.weight_decay == 1e-4 and resnet.optim.decay_every == 20_000
    assert resnet.optim.decay_factor == 0.6
    assert _config("rigl", "digits", 0, "cpu", model="mlp").model.name == "mlp"
    assert recipe("wine", "cnn").model.name == "cnn" and recipe("mnist").model.name == "mlp"


# ----------------------------------------------------------------------------- config as data (item 14.5)



@pytest.mark.parametrize("dataset,model", [("digits", None), ("cifar10", "wrn-22-2"), ("wine", None), ("mnist", None)])
def test_to_dict_from_dict_and_yaml_round_trip(dataset: str, model: str | None, tmp_path: Path) -> None:
    config = recipe(dataset, model).with_(random_mask__auto_candidates=(0.02, 0.2), averaging__hold_lr=0.05, seed=7)
    assert RunConfig.from_dict(config.to_dict()) == config
    (tmp_path / "c.yaml").write_text(dump_yaml(config))
    assert RunConfig.from_dict(load_config_file(tmp_path / "c.yaml")) == config
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert RunConfig.from_dict(load_config_file(tmp_path / "c.json")) == config


def test_every_dataclass_field_is_settable_and_listed_in_the_help() -> None:
    hints = typing.get_type_hints(RunConfig)
    expected = [f"{f.name}.{g.name}" if is_dataclass(hints[f.name]) else f.name
                for f in fields(RunConfig) for g in (fields(hints[f.name]) if is_dataclass(hints[f.name]) else [f])]
    assert field_names() == expected and len(expected) > 40
    text = fields_help()
    for name in expected:
        section, _, attr = name.partition(".")
        assert (f"{section}.{{" in text and attr in text) if attr else name in text


def test_set_values_are_yaml_scalars() -> None:
    assert parse_scalar("0.05") == 0.05 and parse_scalar("1e-3") == 1e-3 and parse_scalar("-2E+2") == -200.0
    assert parse_scalar("true") is True and parse_scalar("null") is None and parse_scalar("[0.01, 0.1]") == [0.01, 0.1]
    assert parse_scalar("cigl") == "cigl" and parse_scalar("7") == 7
    assert parse_sets(["optim.lr=1e-3", "seed=3", "optim.epochs=5", "bayes.prior_precision=null",
                       "random_mask.auto_candidates=[0.01, 0.1]", "random_mask.drop_rate=auto", "compile=true"]) == {
        "optim": {"lr": 1e-3, "epochs": 5}, "seed": 3, "bayes": {"prior_precision": None},
        "random_mask": {"auto_candidates": (0.01, 0.1), "drop_rate": "auto"}, "compile": True}
    assert parse_sets(["optim.lr=1"]) == {"optim": {"lr": 1.0}}  # an integer is a valid number
    assert isinstance(parse_sets(["optim.lr=1"])["optim"]["lr"], float)


@pytest.mark.parametrize("items,expected", [
    (["optim.lrr=0.1"], "unknown field of section 'optim' in --set 'lrr'; did you mean lr?"),
    (["optm.lr=0.1"], "unknown section or field in --set 'optm'; did you mean optim?"),
    (["lr=0.1"], "did you mean optim.lr?"),
    (["optim.lr=fast"], "optim.lr must be a number, got 'fast' (string)"),
    (["optim.epochs=2.5"], "optim.epochs must be an integer, got 2.5"),
    (["data.batch_size=true"], "data.batch_size must be an integer, got True"),
    (["optim.nesterov=1"], "optim.nesterov must be true or false, got 1"),
    (["bayes.prior_precision=high"], "bayes.prior_precision must be a number or null"),
    (["random_mask.auto_candidates=0.1"], "random_mask.auto_candidates must be a list of numbers"),
    (["optim=0.1"], "write optim.FIELD"),
    (["optim.lr"], "expected section.field=value"),
])
def test_set_errors_name_the_field_and_the_expected_type(items: list[str], expected: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_sets(items)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: epochs, lr, momentum"):
        RunConfig.from_dict({"optim": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="valid: method, seed, device, precision, compile, data, model"):
        RunConfig.from_dict({"sparse": {"density": 0.1}})


def test_the_dataclasses_own_validation_still_runs() -> None:
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        RunConfig.from_dict({"sparsity": {"density": 2}})
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        layered_config(sets=parse_sets(["optim.schedule=linear"]))


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: cigl\noptim: {lr: [0.1\n")
    with pytest.raises(ValueError, match=r"config file .*bad.yaml is not valid YAML at line 3"):
        load_config_file(bad)
    (tmp_path / "list.yaml").write_text("- cigl\n- rigl\n")
    with pytest.raises(ValueError, match="must be a mapping of sections and fields"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "section.yaml").write_text("optim: 0.1\n")
    with pytest.raises(ValueError, match="section 'optim' .* must be a mapping of its fields"):
        load_config_file(tmp_path / "section.yaml")
    (tmp_path / "bad.json").write_text("{\"method\": }")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(tmp_path / "empty.yaml") == {}


def test_precedence_recipe_then_file_then_options_then_set() -> None:
    file = {"data": {"dataset": "wine"}, "optim": {"lr": 0.3, "epochs": 7, "momentum": 0.5}, "method": "rigl"}
    flags = {"optim": {"lr": 0.2, "epochs": 9}}
    sets = {"optim": {"lr": 0.1}}
    config = layered_config(file, flags, sets)
    assert config.optim.lr == 0.1  # --set wins
    assert config.optim.epochs == 9  # the options given beat the file
    assert config.optim.momentum == 0.5 and config.method == "rigl"  # the file beats the recipe
    assert config.data.batch_size == recipe("wine").data.batch_size == 32  # the recipe of the file's dataset
    assert config.optim.schedule == "cosine" and config.model.name == "mlp"
    assert layered_config(file, flags).optim.lr == 0.2 and layered_config(file).optim.lr == 0.3
    assert layered_config() == recipe("digits")
    # the dataset (and model) that pick the recipe follow the same order
    assert layered_config(file, {"data": {"dataset": "cifar10"}}).data.batch_size == 128
    assert layered_config(file, sets={"model": {"name": "cnn"}}).model.name == "cnn"


def test_readme_config_example_parses_as_documented(tmp_path: Path, readme) -> None:
    import re

    section = readme("## Command line")
    (block,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    (tmp_path / "run.yaml").write_text("\n".join(line.strip() for line in block.splitlines()))  # indented under a list item
    command = re.search(r"`python3 -m cigl_bayes train --config run.yaml --set (\S+) --out \S+`", section)
    config = layered_config(load_config_file(tmp_path / "run.yaml"), sets=parse_sets([command.group(1)]))
    assert (config.method, config.sparsity.density, config.optim.lr, config.optim.epochs) == ("cigl", 0.05, 0.05, 30)
    assert config.random_mask.drop_rate == 0.03
