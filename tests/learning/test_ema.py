"""The weight average (``train.ema_decay``): its arithmetic, and that a run with it predicts with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.learning.ema import WeightAverage
from pipeline.learning.recipe import TrainRecipe
from pipeline.learning.presets import load_model_preset


def test_average_follows_the_warm_up_decay_and_copies_buffers() -> None:
    model = nn.BatchNorm1d(2)                      # one weight vector, one bias, running-stat buffers
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)                    # init weight is 1: the shadow starts at 1
    expected = torch.ones(2)
    for n, value in enumerate([3.0, 5.0, 7.0, 9.0, 11.0] * 3):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(value)
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert torch.allclose(ema.shadow.weight, expected), n
        assert torch.equal(ema.shadow.running_mean, model.running_mean)
    assert ema.updates == 15
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    assert model.weight.requires_grad                # the trained model is untouched
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, 1.0)


def test_recipe_reads_ema_decay_and_keeps_old_run_digests() -> None:
    preset = load_model_preset("iaenet_cpu")
    assert preset["train"]["ema_decay"] == 0.99                     # the CPU presets average
    assert "ema_decay" not in load_model_preset("iaenet_casme2")["train"]   # the paper's do not
    preset["train"].pop("ema_decay")
    off = TrainRecipe.from_preset(preset, {})
    assert off.ema_decay == 0.0 and "ema_decay" not in off.identity(False)   # digests of runs before the key
    preset["train"]["ema_decay"] = 0.99
    on = TrainRecipe.from_preset(preset, {})
    assert on.identity(False)["ema_decay"] == 0.99
    preset["train"]["ema_decay"] = 1.5
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainRecipe.from_preset(preset, {})
