"""Mode-regularized GAN (Che et al. 2017; bigtrain/objective/mode_regularized.py) and the MODE score
(bigtrain/eval/mode_score.py): G's loss is the sum of its parts, the encoder learns from the
regularizers alone, the reconstructions improve in a short run, and E resumes and trains identically on
two ranks. The score equals the Inception-style score when G's label marginal is the data's and falls
when it is not."""

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.config import ConfigError, load_config
from bigtrain.data.interface import StreamSpec
from bigtrain.data.loader import ShardLoader
from bigtrain.eval.mode_score import log_scores_of_sums, mode_score, prediction_sums
from bigtrain.models.layers import frozen_state
from bigtrain.objective.mode_regularized import ModeRegularized
from bigtrain.train.loop import Trainer
from conftest import REPO, assert_same_networks

ON = ["regularize.mode_regularized.geometric=1", "regularize.mode_regularized.mode=0.1"]


def _cfg(data, run_dir, iterations, *extra, batch=16):
    return load_config(REPO / "configs/biggan/digits32.yaml", [
        f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
        f"train.batch={batch}", "data.num_workers=0", f"train.total_kimg={iterations * batch / 1000}", *extra,
    ])  # fmt: skip


def _mrgan(trainer: Trainer) -> ModeRegularized:
    (part,) = [r for r in trainer.objective.regularizers if isinstance(r, ModeRegularized)]
    return part


# ----------------------------------------------------------------------------- the MODE score


def _inception_style(p: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the rows' mean: the Inception Score's formula in one split."""
    marginal = p.mean(dim=0)
    return math.exp(float((torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)).sum(dim=1).mean()))


def _table(seed: int, n: int = 500, classes: int = 10) -> torch.Tensor:
    """Fixed p(y|x) rows: a softmax of random logits, sharp enough to look like a trained classifier's."""
    logits = 4 * torch.randn(n, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return logits.softmax(dim=1)


def test_mode_score_is_the_inception_style_score_when_the_label_marginals_match():
    for seed in range(3):
        p = _table(seed)
        inception = _inception_style(p)
        score = mode_score(p, p.mean(dim=0))  # p*(y) = p(y)
        assert abs(score - inception) <= 1e-9 * inception, (seed, score, inception)
    perfect = torch.eye(10, dtype=torch.float64).repeat(30, 1)  # sharp, every class equally often
    assert mode_score(perfect, torch.full((10,), 0.1)) == pytest.approx(10.0, rel=1e-12)


def test_mode_score_falls_when_the_label_marginal_differs_from_the_data():
    """The penalty is exp(-KL(p(y) || p*(y))): a G whose classes are off the data's proportions scores
    below its Inception-style score, a collapsed one down to p*(its class)."""
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    p = _table(0)
    skewed = p * torch.linspace(0.2, 2.0, 10, dtype=torch.float64)  # more of the later classes
    skewed = skewed / skewed.sum(dim=1, keepdim=True)
    marginal = skewed.mean(dim=0)
    kl = float((marginal * (marginal / uniform).log()).sum())
    inception, score = _inception_style(skewed), mode_score(skewed, uniform)
    assert score < inception, (score, inception)
    assert score == pytest.approx(inception * math.exp(-kl), rel=1e-9), (score, inception, kl)
    collapsed = torch.eye(10, dtype=torch.float64)[[3] * 100]
    counts = torch.arange(1.0, 11.0, dtype=torch.float64)  # p*(3) = 4 / 55
    assert mode_score(collapsed, counts) == pytest.approx(4 / 55, rel=1e-12)
    # Dropping one class of the perfect G: IS 9 (log 9 nats of label information), MODE 9 x 0.9
    # (exp(-KL) = exp(log 0.9) on the uniform p*), so the score tells the missing mode apart.
    nine = torch.eye(10, dtype=torch.float64)[torch.arange(900) % 9]
    assert _inception_style(nine) == pytest.approx(9.0, rel=1e-12)
    assert mode_score(nine, uniform) == pytest.approx(8.1, rel=1e-12)


def test_the_printed_form_with_p_star_in_the_first_kl_is_the_inception_style_score_whatever_p_star():
    """Why the score takes p(y) in its first KL (see mode_score.py): with p*(y) there, the p* terms
    cancel and no p*(y) changes the figure."""
    p = _table(1)
    inception = _inception_style(p)
    for p_star in (
        torch.full((10,), 0.1, dtype=torch.float64),
        torch.arange(1.0, 11.0, dtype=torch.float64) / 55,
    ):
        marginal = p.mean(dim=0)
        first = (torch.special.xlogy(p, p) - torch.special.xlogy(p, p_star)).sum(dim=1).mean()
        second = (torch.special.xlogy(marginal, marginal) - torch.special.xlogy(marginal, p_star)).sum()
        assert math.exp(float(first - second)) == pytest.approx(inception, rel=1e-9)


def test_prediction_sums_add_up_over_batches_and_ranks():
    """The suite sums each batch's (and rank's) prediction_sums: the score of the sum is the score of all."""
    p, p_star = _table(2, n=300), torch.arange(1.0, 11.0, dtype=torch.float64)
    parts = sum(prediction_sums(chunk) for chunk in p.split([100, 120, 80]))
    whole = log_scores_of_sums(prediction_sums(p), p_star)
    assert log_scores_of_sums(parts, p_star) == pytest.approx(whole, rel=1e-12)
    assert math.exp(whole[1]) == pytest.approx(mode_score(p, p_star / p_star.sum()), rel=1e-12)


# ----------------------------------------------------------------------------- the regularizers


def _one_g_step(trainer: Trainer, reals) -> dict:
    """The gradients of one G step of a fresh trainer, and the MRGAN part's penalty (no optimizer steps:
    G and E stay as they were)."""
    trainer.backend.step = lambda which: None
    trainer.D.requires_grad_(False)  # as train_step does around G's step
    parts = [r for r in trainer.objective.regularizers if isinstance(r, ModeRegularized)]
    penalties = []

    def recorded(penalty_of):
        def g_pass_penalty(*args):
            penalties.append(penalty_of(*args))
            return penalties[-1]

        return g_pass_penalty

    for part in parts:
        part.after_step = lambda: None  # E keeps its weights
        part.g_pass_penalty = recorded(part.g_pass_penalty)
    trainer._g_step([reals])
    nets = [("G", trainer.G), ("D", trainer.D), *(("E", part.E) for part in parts)]
    grads = {f"{n}.{k}": p.grad for n, net in nets for k, p in net.named_parameters()}
    return {"grads": grads, "penalties": penalties}


def test_g_loss_is_the_sum_of_its_parts_and_e_learns_from_the_regularizers_alone(demo_shards, tmp_path):
    """One G step with lambda_1 = 1, lambda_2 = 0.1 against the same step without MRGAN (same seed: same
    G, D, data and z): G's gradient is the adversarial one plus that of lambda_1 d(x, G(E(x))) +
    lambda_2 (-log D(G(E(x)))) computed here by hand; E's gradient is that of the regularizers alone (it
    does not feed the adversarial term); D gets none; the part's penalty is that sum."""
    off = Trainer(_cfg(demo_shards, tmp_path / "off", 1))
    on = Trainer(_cfg(demo_shards, tmp_path / "on", 1, *ON))
    x, y = on._real()
    assert torch.equal(x, off._real()[0]), "the two trainers read different data"
    plain, regularized = _one_g_step(off, (x, y)), _one_g_step(on, (x, y))
    E = _mrgan(on).E
    with frozen_state(on.G, batchnorm=True), frozen_state(on.D):  # as in G's step, after its main pass
        reconstructions = on.G(E(x), y)
        distance = (reconstructions - x).square().mean()
        mode = F.softplus(-on.D(reconstructions, y)).mean()
    penalty = 1.0 * distance + 0.1 * mode
    (step_penalty,) = regularized["penalties"]
    assert step_penalty.item() == pytest.approx(penalty.item(), rel=1e-6), (
        step_penalty.item(),
        penalty.item(),
    )
    names = [f"G.{k}" for k, _ in on.G.named_parameters()] + [f"E.{k}" for k, _ in E.named_parameters()]
    by_hand = torch.autograd.grad(penalty, [*on.G.parameters(), *E.parameters()], allow_unused=True)
    worst = 0.0
    for name, hand in zip(names, by_hand):
        adversarial = plain["grads"][name] if name.startswith("G.") else None  # E: no adversarial part
        parts = [g for g in (adversarial, hand) if g is not None]
        expected = torch.stack(parts).sum(dim=0)
        scale = expected.abs().max().item() + 1e-12
        worst = max(worst, (regularized["grads"][name] - expected).abs().max().item() / scale)
    assert worst < 1e-4, f"G's and E's gradients differ from the sum of the parts by {worst:.3g} (relative)"
    assert all(g is None for k, g in regularized["grads"].items() if k.startswith("D.")), "D got gradients"
    assert any(regularized["grads"][k].abs().max() > 0 for k in names if k.startswith("E.")), "E got none"


def _fixed_reals(data) -> tuple[torch.Tensor, torch.Tensor]:
    """64 fixed reals of the digits (a seeded shard order, no shuffle buffer) and their labels."""
    loader = ShardLoader(
        StreamSpec(data, 64, 32, torch.device("cpu"), seed=5, shuffle_buffer=0), num_workers=0
    )
    try:
        return next(loader)
    finally:
        loader.close()


def test_reconstructions_improve_and_the_mode_score_is_logged_in_a_short_run(demo_shards, tmp_path):
    """16 iterations of 32 of the BigGAN digits recipe with lambda_1 = 1, lambda_2 = 0.1: the mean
    squared error of G(E(x)) on 64 fixed reals falls below 0.8 of its start. Measured end / start over
    seeds 0, 1, 2 with ATEN_CPU_CAPABILITY=default and avx2, one thread: 0.671, 0.691, 0.657 and 0.675,
    0.689, 0.652 (starts 1.055, 0.805, 0.855); two threads, seed 0: 0.674. The MODE score of G_ema (200
    samples) is logged at the start and end, between 0 and the number of classes."""
    cfg = _cfg(demo_shards, tmp_path, 16, *ON, "eval.metrics=[mode]", "eval.every_kimg=0.512",
               "eval.num_samples=200", "eval.batch=100", batch=32)  # fmt: skip
    trainer = Trainer(cfg)
    x, y = _fixed_reals(demo_shards)
    E = _mrgan(trainer).E

    def error() -> float:
        with torch.no_grad(), frozen_state(trainer.G, batchnorm=True):
            return float((trainer.G(E(x), y) - x).square().mean())

    start = error()
    trainer.run()
    end = error()
    assert end < 0.8 * start, f"the reconstruction error went from {start:.4f} to {end:.4f} (bar 0.8 x start)"
    scores = [m["mode_digits"] for m in trainer.metric_history]
    assert len(scores) == 2 and all(0 < s <= 10 for s in scores), scores
    logged = trainer.log_metrics(elapsed=1.0, images=32)
    assert "mrgan_geometric" in logged and "mrgan_mode" in logged, sorted(logged)


def test_the_encoder_and_its_optimizer_resume_exactly_with_accumulation(demo_shards, tmp_path):
    """4 iterations straight against 2, a checkpoint, and 2 more, with train.accum=2: G, D, G_ema, E and
    E's Adam state are bit-identical."""
    on = [*ON, "train.accum=2"]
    whole = Trainer(_cfg(demo_shards, tmp_path / "whole", 4, *on))
    whole.run()
    Trainer(_cfg(demo_shards, tmp_path / "split", 2, *on)).run()
    resumed = Trainer(_cfg(demo_shards, tmp_path / "split", 4, *on), resume=True)
    resumed.run()
    assert_same_networks(whole, resumed, "with MRGAN on")
    a, b = _mrgan(whole), _mrgan(resumed)
    for (key, x), (_, y) in zip(a.E.state_dict().items(), b.E.state_dict().items()):
        assert torch.equal(x, y), f"E.{key} differs after resume"
    state_a, state_b = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert state_a.keys() == state_b.keys() and state_a, "E's Adam state is missing"
    for i in state_a:
        for key in state_a[i]:
            assert torch.equal(state_a[i][key], state_b[i][key]), f"E's Adam {key} of parameter {i} differs"


def test_two_ranks_end_identical_and_equal_one_process_with_accumulation(tmp_path):
    """Two torchrun ranks on gloo (tests/scripts/train_rank.py) train BigGAN with MRGAN for 3
    iterations: every tensor of G, D, G_ema, E and E's Adam state is the same on both ranks, and equal
    (1e-6 absolute) to one process with train.accum=2 over the same global batch."""
    from test_dist import assert_ranks_equal_one_process, two_ranks_and_one_process

    overrides = [
        *ON,
        "model.biggan.ch=4",
        "model.biggan.d_ch=4",
        "regularize.mode_regularized.encoder_width=8",
    ]
    r0, r1, single = two_ranks_and_one_process(tmp_path, 3, *overrides)
    assert any(k.startswith("objective.mrgan_encoder.") for k in r0), sorted(r0)[:5]
    assert any(k.startswith("objective.mrgan_encoder_optim.state.") for k in r0), "no Adam state of E"
    assert_ranks_equal_one_process(r0, r1, single)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["regularize.mode_regularized.geometric=-1"], "regularize.mode_regularized.geometric=-1"),
        ([*ON, "regularize.mode_regularized.lr=0"], "regularize.mode_regularized.lr=0"),
        ([*ON, "regularize.mode_regularized.encoder_width=0"], "regularize.mode_regularized.encoder_width=0"),
        (["regularize.mode_regularized.mode=0.1", "model.name=ebgan", "loss.name=ebgan"], "regularize.mode_regularized.mode=0.1"),
    ],
)  # fmt: skip
def test_bad_values_name_their_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(REPO / "configs/biggan/digits32.yaml", overrides)


def test_off_builds_nothing():
    cfg = load_config(REPO / "configs/biggan/digits32.yaml", [])
    assert cfg.regularize.mode_regularized.geometric == cfg.regularize.mode_regularized.mode == 0
    assert ModeRegularized.build(cfg.regularize.mode_regularized, None) is None
