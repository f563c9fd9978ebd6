import math

import pytest
import torch
from torch import nn

from bigtrain.train.ema import EMA, ema_beta, refresh_batchnorm_stats


def test_half_life_arithmetic():
    # After halflife_kimg of images, the old weights keep exactly half their weight.
    beta = ema_beta(images_per_step=256, halflife_kimg=10.0, cur_kimg=1000.0)
    steps = 10_000 / 256
    assert beta**steps == pytest.approx(0.5, rel=1e-12)
    assert ema_beta(256, 10.0, cur_kimg=1.0, rampup=0.05) == pytest.approx(0.5 ** (256 / 50.0))
    assert ema_beta(256, 10.0, cur_kimg=0.0, rampup=0.05) == 0.0


def test_update_lerps_parameters_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(model, beta=0.75)
    for old, new, src in zip(before, ema.model.parameters(), model.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * src)
    assert torch.equal(ema.model[1].running_mean, torch.full((3,), 5.0))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_standing_stats_are_the_plain_average_over_batches():
    bn_net = nn.Sequential(nn.Identity(), nn.BatchNorm1d(2))
    bn_net[1].running_mean.fill_(100.0)
    batches = [torch.randn(64, 2) + i for i in range(4)]
    it = iter(batches)
    refresh_batchnorm_stats(bn_net, lambda: (next(it),), num_batches=4)
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    assert torch.allclose(bn_net[1].running_mean, expected, atol=1e-6)
    assert not bn_net.training and bn_net[1].momentum == 0.1
    assert math.isfinite(float(bn_net[1].running_var.sum()))
