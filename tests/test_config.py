"""Recipes: the defaults a run gets for its dataset and model."""

from __future__ import annotations

from cigl_bayes.benchmark import parse_arms
from cigl_bayes.cli import _config
from cigl_bayes.config import recipe


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
