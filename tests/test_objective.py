"""The objective's parts on their own: adversarial losses, regularizers and the G/D views, on tiny
networks and hand-checked cases, with no shards and no Trainer."""

import logging
import math

import pytest
import torch

from bigtrain.augment import color, cutout, diff_augment, parse_policy, translation
from bigtrain.config import ConfigError, load_config
from bigtrain.models.biggan import Generator
from bigtrain.models.layers import frozen_state
from bigtrain.models.roles import DOutput
from bigtrain.models.stylegan2 import Discriminator as StyleDiscriminator
from bigtrain.models.stylegan2 import Generator as StyleGenerator
from bigtrain.objective import DScores, DView, GInputs, PassTools, build_objective, split_scores
from bigtrain.objective.adversarial import (
    build_loss,
    hinge_d,
    hinge_g,
    lsgan_d,
    lsgan_g,
    minimax_g,
    nonsat_d,
    nonsat_g,
    rahinge_d,
    rahinge_g,
    ralsgan_d,
    ralsgan_g,
    rasgan_d,
    rasgan_g,
    wgan_d,
    wgan_g,
)
from bigtrain.objective.aux_classifier import AuxClassifier, class_loss
from bigtrain.objective.consistency import Consistency, consistency_transform
from bigtrain.objective.feature_matching import FeatureMatching, feature_matching_loss
from bigtrain.objective.gradient_penalty import GradientPenalty, wgan_gp_terms
from bigtrain.objective.historical_average import HistoricalAverage
from bigtrain.objective.lecam import LeCam, lecam_penalty
from bigtrain.objective.orthogonal import (
    Orthogonal,
    add_orthogonal_grad_,
    ortho_parameters,
    orthogonal_penalty,
    orthogonal_penalty_grad,
)
from bigtrain.objective.path_length import PathLength, path_lengths
from bigtrain.objective.r1 import R1, r1_penalty
from bigtrain.objective.regularizer import Networks
from bigtrain.objective.style_mixing import StyleMixing
from bigtrain.objective.unrolled import d_parameters, unroll
from bigtrain.objective.views import instance_noise_sigma
from bigtrain.objective.weight_clip import WeightClip
from bigtrain.objective.zcr import LatentConsistency
from conftest import REPO


def _small_stylegan2(resolution: int = 16) -> tuple[StyleGenerator, StyleDiscriminator]:
    torch.manual_seed(0)
    G = StyleGenerator(resolution, 32, 32, 0, channel_base=512, channel_max=32, mapping_layers=2)
    return G, StyleDiscriminator(resolution, 0, channel_base=512, channel_max=32)


def _tools(G=None, D=None, generator=None, micro_batch=8) -> PassTools:
    generator = generator or torch.Generator().manual_seed(5)
    inputs = GInputs(G, 0, 32, 1, 0, 1, torch.device("cpu")) if G is not None else None
    return PassTools(
        d=DView(D, D, D, [], generator) if D is not None else None,
        g=G,
        g_inputs=lambda batch: inputs(batch, training_g=True),
        generator=generator,
        all_mean=lambda t: t,
        micro_batch=micro_batch,
    )


def _scored(logits, images=None, labels=None, features=None, classes=None) -> DScores:
    """D's view of a set, as the trainer hands it to the penalty hooks."""
    return DScores(images, labels, logits, features, classes)


def test_hinge_and_nonsaturating_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert torch.isclose(hinge_d(real, fake), torch.tensor((0 + 0.5) / 2 + (0 + 1) / 2))
    assert torch.isclose(hinge_g(fake), torch.tensor(1.0))
    sp = torch.nn.functional.softplus
    assert torch.isclose(nonsat_d(real, fake), sp(-real).mean() + sp(fake).mean())
    assert torch.isclose(nonsat_g(fake), sp(-fake).mean())


def test_minimax_g_saturates_where_nonsat_does_not():
    """Goodfellow et al.'s minimax G loss log(1 - sigmoid(l)): its gradient vanishes for a confidently
    rejected fake (l << 0), where the non-saturating loss's does not."""
    fake = torch.tensor([-8.0, 0.0], requires_grad=True)
    assert torch.isclose(minimax_g(fake), torch.log(1 - torch.sigmoid(fake)).mean())
    (minimax_grad,) = torch.autograd.grad(minimax_g(fake), fake)
    (nonsat_grad,) = torch.autograd.grad(nonsat_g(fake), fake)
    assert abs(minimax_grad[0]) < 1e-3 < abs(nonsat_grad[0]), (minimax_grad, nonsat_grad)


def test_one_sided_label_smoothing_moves_only_the_reals_target():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = torch.nn.functional.softplus
    want = (0.9 * sp(-real) + 0.1 * sp(real)).mean() + sp(fake).mean()  # BCE toward 0.9 on reals, 0 on fakes
    assert torch.isclose(nonsat_d(real, fake, real_label=0.9), want)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.isclose(
        nonsat_d(real, fake, 0.9), bce(real, torch.full_like(real, 0.9)) + bce(fake, torch.zeros(2))
    )
    assert torch.equal(nonsat_d(real, fake, 1.0), sp(-real).mean() + sp(fake).mean()), (
        "t = 1 is not the exact old form"
    )


def test_lsgan_targets():
    """Mao et al. eq. 2 with a = -1, b = 1, c = 0: D at its targets has zero loss, G's loss is its
    fakes' squared distance from c."""
    real, fake = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])
    assert lsgan_d(real, fake, a=-1.0, b=1.0).item() == 0.0
    # 1/2 ((3 - 1)^2 + (1 - 1)^2) / 2 + 1/2 ((0 + 1)^2 + (-1 + 1)^2) / 2 = 1 + 0.25
    assert lsgan_d(torch.tensor([3.0, 1.0]), torch.tensor([0.0, -1.0]), a=-1.0, b=1.0).item() == 1.25
    assert lsgan_g(torch.tensor([2.0, 0.0]), c=0.0).item() == 1.0  # 1/2 (4 + 0) / 2


def test_relativistic_average_losses_on_two_fixed_logit_vectors():
    """Means: E[real] = 2, E[fake] = -1, so D~(x) = real + 1 = (2, 4) and D~(G(z)) = fake - 2 = (-2, -4)."""
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    # RaHinge D: relu(1 - (2, 4)) = 0; relu(1 + (-2, -4)) = 0. G: relu(1 - (-2, -4)) = (3, 5); relu(1 + (2, 4)) = (3, 5)
    assert rahinge_d(real, fake).item() == 0.0
    assert rahinge_g(fake, real).item() == 8.0
    # RaLSGAN D: ((2 - 1)^2 + (4 - 1)^2) / 2 + ((-2 + 1)^2 + (-4 + 1)^2) / 2 = 5 + 5
    assert ralsgan_d(real, fake).item() == 10.0
    # G: ((-2 - 1)^2 + (-4 - 1)^2) / 2 + ((2 + 1)^2 + (4 + 1)^2) / 2 = 17 + 17
    assert ralsgan_g(fake, real).item() == 34.0
    sp = torch.nn.functional.softplus
    rel_real, rel_fake = torch.tensor([2.0, 4.0]), torch.tensor([-2.0, -4.0])
    assert torch.isclose(rasgan_d(real, fake), sp(-rel_real).mean() + sp(rel_fake).mean())
    assert torch.isclose(rasgan_g(fake, real), sp(-rel_fake).mean() + sp(rel_real).mean())


def test_the_loss_section_builds_each_loss_with_its_parameters():
    from bigtrain.config import LossConfig

    real, fake = torch.tensor([0.5, 1.5]), torch.tensor([-0.5, 0.25])
    lsgan = build_loss(LossConfig("lsgan", lsgan_a=-1.0, lsgan_b=1.0, lsgan_c=0.0))
    assert torch.equal(lsgan.d(real, fake), lsgan_d(real, fake, -1.0, 1.0)) and not lsgan.needs_reals
    assert torch.equal(lsgan.g(fake, None), lsgan_g(fake, c=0.0))
    smoothed = build_loss(LossConfig("minimax", real_label=0.9))
    assert torch.equal(smoothed.d(real, fake), nonsat_d(real, fake, 0.9))
    assert torch.equal(smoothed.g(fake, None), minimax_g(fake))
    assert all(build_loss(LossConfig(name)).needs_reals for name in ("rasgan", "ralsgan", "rahinge"))


def test_orthogonal_penalty_is_zero_for_orthogonal_rows_and_ignores_norms():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    w = q[:8] * torch.arange(1.0, 9.0)[:, None]  # orthogonal rows of different norms
    assert orthogonal_penalty(w, 1.0) < 1e-8


def test_closed_form_gradient_equals_autograd():
    torch.manual_seed(0)
    for shape in [(8, 20), (16, 4, 3, 3)]:
        w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        orthogonal_penalty(w, 1e-4).backward()
        closed = orthogonal_penalty_grad(w.detach(), 1e-4)
        assert torch.allclose(closed, w.grad, rtol=1e-10, atol=1e-14), (closed - w.grad).abs().max()


def test_regularizer_covers_g_weights_but_not_the_shared_embedding():
    G = Generator(32, ch=8, z_dim=120, shared_dim=16, num_classes=10, attn_res=(16,))
    params = ortho_parameters(G)
    ids = {id(p) for p in params}
    assert id(G.shared.weight) not in ids
    assert id(G.blocks[0].conv1.parametrizations.weight.original) in ids
    assert all(p.ndim >= 2 for p in params)
    for p in params:
        p.grad = torch.zeros_like(p)
    add_orthogonal_grad_(params, 1e-4)
    p = G.blocks[0].conv1.parametrizations.weight.original
    assert torch.allclose(p.grad, orthogonal_penalty_grad(p.detach(), 1e-4))


def test_wgan_losses_and_the_gradient_penalty_on_a_linear_d():
    """D(x) = <a, x>: its gradient is a everywhere, so the penalty is (||a|| - 1)^2, whatever x^."""
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert wgan_d(real, fake).item() == pytest.approx(-1.0 - 1.25)
    assert wgan_g(fake).item() == pytest.approx(1.0)
    torch.manual_seed(4)
    a = torch.randn(1, 3, 4, 4)
    reals, fakes = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = GradientPenalty(weight=10.0, drift=0.001)
    no_labels = torch.zeros(5, dtype=torch.long)
    interp, labels = gp.extra_d_set(reals, no_labels, fakes, no_labels, torch.Generator().manual_seed(1))
    between = (interp - fakes) / (reals - fakes)  # x^ = fake + eps (real - fake), one eps per sample
    assert torch.allclose(between, between[:, :1, :1, :1].expand_as(between), atol=1e-4)
    assert ((between[:, 0, 0, 0] >= 0) & (between[:, 0, 0, 0] <= 1)).all()
    real_logits = (a * reals).sum(dim=(1, 2, 3))
    got = gp.d_penalty(_scored(real_logits), None, _scored((a * interp).sum(dim=(1, 2, 3)), interp))
    want = 10.0 * (a.norm() - 1) ** 2 + 0.001 * real_logits.square().mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5), (got.item(), want.item())
    assert torch.equal(got, wgan_gp_terms((a * interp).sum(dim=(1, 2, 3)), interp, real_logits, 10.0, 0.001))


def test_r1_equals_the_hand_computed_penalty_on_a_tiny_d():
    """D(x) = sum(a x^2): grad = 2 a x, so R1 = gamma / 2 E[sum (2 a x)^2]."""
    torch.manual_seed(2)
    a = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (a * x.square()).sum(dim=(1, 2, 3))
    gamma = 0.7
    expected = gamma / 2 * (2 * a * x.detach()).square().sum(dim=(1, 2, 3)).mean()
    got = r1_penalty(logits, x, gamma)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6), (got.item(), expected.item())
    got.backward()  # the graph is kept: the penalty trains D (here: gives x a gradient)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("aux_classes", [0, 10])
def test_r1s_lazy_pass_reaches_every_d_parameter_through_the_zero_term(aux_classes):
    """Also AC-GAN's class head, which R1's penalty does not reach."""
    torch.manual_seed(0)
    D = StyleDiscriminator(16, 10, channel_base=512, channel_max=32, aux_classes=aux_classes)
    r1 = R1(gamma=1.0, interval=4)
    assert r1.lazy and r1.due(0) and r1.due(8) and not r1.due(3)
    x = torch.randn(4, 3, 16, 16)
    penalty, zero_term = r1.lazy_penalty(_tools(D=D), (x, torch.zeros(4, dtype=torch.long)))
    (penalty + zero_term).backward()
    missing = [n for n, p in D.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph (DDP's reducer would stop): {missing}"
    assert zero_term.item() == 0.0 and penalty.item() > 0


def test_path_length_of_a_linear_synthesis():
    """images = A w (per layer): J_w^T y = A^T y, so the length is known in closed form."""
    torch.manual_seed(3)
    A = torch.randn(2, 3 * 4 * 4, 8)  # two w layers of 8, to 3x4x4 images
    ws = torch.randn(6, 2, 8, requires_grad=True)
    images = torch.einsum("lpd,bld->bp", A, ws).reshape(6, 3, 4, 4)
    noise = torch.randn(4, 3, 4, 4) / 4
    got = path_lengths(images, ws, noise)
    grads = torch.einsum("lpd,bp->bld", A, noise.reshape(4, -1))
    expected = grads.square().sum(dim=2).mean(dim=1).sqrt()
    assert got.shape == (4,) and torch.allclose(got, expected, atol=1e-5), (got, expected)


def test_path_length_mean_follows_its_decay():
    G, _ = _small_stylegan2()
    regularizer = PathLength(weight=2.0, interval=4, decay=0.25, batch_shrink=2, device=torch.device("cpu"))
    z, y = torch.randn(8, 32), torch.zeros(8, dtype=torch.long)
    tools = _tools(G=G)
    expected_mean = 0.0
    for _ in range(3):
        fake, ws = G(z, y, return_ws=True)
        tools.generator.manual_seed(5)
        penalty = regularizer.penalty(fake, ws, tools)
        tools.generator.manual_seed(5)
        noise = torch.randn(fake.shape, generator=tools.generator) / math.sqrt(16 * 16)
        lengths = path_lengths(fake, ws, noise).detach()
        expected_mean += 0.25 * (lengths.mean().item() - expected_mean)  # lerp toward the batch mean
        assert regularizer.mean.item() == pytest.approx(expected_mean, rel=1e-5), (
            regularizer.mean,
            expected_mean,
        )
        want = (lengths - expected_mean).square().mean() * 2.0
        assert penalty.item() == pytest.approx(want.item(), rel=1e-4)
    restored = PathLength(2.0, 4, 0.25, 2, torch.device("cpu"))
    restored.load_state_dict(regularizer.state_dict())
    assert torch.equal(restored.mean, regularizer.mean) and restored.mean.item() != 0


def test_lecam_penalty_on_two_fixed_logit_vectors():
    """relu(D(x) - alpha_F)^2 on reals and relu(alpha_R - D(G(z)))^2 on fakes, by hand."""
    real, fake = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.0, 2.0])
    anchor_real, anchor_fake = torch.tensor(1.5), torch.tensor(0.5)
    # reals: (0.5^2 + 1.5^2 + 2.5^2) / 3 = 8.75 / 3; fakes: (2.5^2 + 1.5^2 + 0) / 3 = 8.5 / 3
    got = lecam_penalty(real, fake, anchor_real, anchor_fake).item()
    assert got == pytest.approx(5.75), f"{got} != 5.75"
    assert lecam_penalty(torch.tensor([0.0]), torch.tensor([2.0]), anchor_real, anchor_fake).item() == 0.0


def test_lecam_anchors_are_the_debiased_average_of_whole_steps():
    """No penalty before the first D step; then the anchors are the zero-debiased moving average of each
    step's mean output over its micro-batches and ranks (here a second rank whose means are 1 higher)."""
    decay = 0.5
    lecam = LeCam(weight=2.0, decay=decay, device=torch.device("cpu"), all_mean=lambda t: (t + (t + 1.0)) / 2)
    steps = [  # per step: two micro-batches of (real logits, fake logits)
        [(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0])), (torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0]))],
        [(torch.tensor([4.0, 4.0]), torch.tensor([-2.0, -2.0])), (torch.tensor([0.0, 0.0]), torch.tensor([-2.0, -2.0]))],
        [(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])), (torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))],
    ]  # fmt: skip
    # (real, fake) mean of each step over its micro-batches, plus 0.5 for the second rank
    step_means = [torch.tensor([2.5, -0.5]), torch.tensor([2.5, -1.5]), torch.tensor([1.5, 1.5])]
    assert lecam.d_penalty(*map(_scored, steps[0][0]), None) is None, "a penalty before any anchor exists"
    lecam.d_penalty(*map(_scored, steps[0][1]), None)
    lecam.after_backward()
    for n, step in enumerate(steps[1:], start=2):
        weights = [decay ** (n - 1 - k) for k in range(n - 1)]
        anchors = sum(w * m for w, m in zip(weights, step_means)) / sum(weights)
        assert torch.allclose(lecam.anchors(), anchors), (lecam.anchors(), anchors)
        for real, fake in step:
            got = lecam.d_penalty(_scored(real), _scored(fake), None)
            want = 2.0 * lecam_penalty(real, fake, anchors[0], anchors[1])
            assert torch.allclose(got, want), (got, want)
        lecam.after_backward()
    restored = LeCam(2.0, decay, torch.device("cpu"))
    restored.load_state_dict(lecam.state_dict())
    assert torch.equal(restored.anchors(), lecam.anchors()) and restored.updates == 3


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) pixels, zeros where nothing moved in."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_consistency_transform_is_a_flip_and_a_shift_of_at_most_an_eighth():
    x = torch.rand(64, 3, 16, 16) + 0.1  # no zero pixels: a shift shows as zeros
    out = consistency_transform(x, torch.Generator().manual_seed(3))
    found = set()
    for i in range(64):
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[i], _shifted(x[i].flip(2) if flip else x[i], dy, dx))
        ]
        assert len(matches) == 1, f"sample {i}: not one flip and shift within 2 px of 16: {matches}"
        found.add(matches[0][0])
    assert found == {False, True}, "64 draws without both a flipped and an unflipped image"


def test_consistency_penalties_cr_and_bcr():
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.0])
    augmented = torch.tensor([0.0, 2.0, -1.0, 3.0])  # D(T(x)) for the 2 reals, then D(T(G(z))) for the fakes
    cr, bcr = Consistency(real=10.0, fake=0.0), Consistency(real=10.0, fake=5.0)
    # CR: 10 ((1 - 0)^2 + 0^2) / 2 = 5; bCR adds 5 (0^2 + (0 - 3)^2) / 2 = 22.5
    assert cr.d_penalty(_scored(real), _scored(fake), _scored(augmented[:2])).item() == 5.0
    assert bcr.d_penalty(_scored(real), _scored(fake), _scored(augmented)).item() == 27.5
    reals, fakes = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    real_labels, fake_labels = torch.tensor([3, 4]), torch.tensor([5, 6])
    images, labels = cr.extra_d_set(reals, real_labels, fakes, fake_labels, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [3, 4]
    images, labels = bcr.extra_d_set(reals, real_labels, fakes, fake_labels, torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [3, 4, 5, 6]


def test_weight_clipping_clamps_every_d_parameter_after_its_step():
    D = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    with torch.no_grad():
        D[0].weight.copy_(torch.tensor([[0.5, -0.5, 0.005, -0.005]] * 3))
    before = D[0].weight.clone()
    WeightClip(0.01, D).after_step()
    assert all(p.abs().max() <= 0.01 for p in D.parameters())
    assert torch.equal(D[0].weight[:, 2:], before[:, 2:]), "weights inside [-c, c] must stay as they are"
    assert torch.equal(D[0].weight[:, :2], torch.tensor([[0.01, -0.01]] * 3)), D[0].weight


def test_instance_noise_is_added_to_what_d_sees_and_anneals_to_zero():
    assert [instance_noise_sigma(0.2, 10.0, k) for k in (0.0, 5.0, 10.0, 20.0)] == [0.2, 0.1, 0.0, 0.0]
    assert instance_noise_sigma(0.2, 0.0, 1e6) == 0.2, "anneal_kimg=0 keeps sigma constant"
    seen = []
    D = lambda x, y, parts=1: seen.append(x) or x.sum(dim=(1, 2, 3))  # noqa: E731
    view = DView(D, D, D, [], torch.Generator().manual_seed(3))
    images = torch.zeros(4, 3, 8, 8)
    view(images, torch.zeros(4, dtype=torch.long))
    assert torch.equal(seen[-1], images), "sigma 0 must leave the images alone"
    view.noise_sigma = 0.5
    view(images, torch.zeros(4, dtype=torch.long))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(seen[-1], 0.5 * noise), "not N(0, sigma^2) from the slot's stream"


def test_historical_averaging_penalty_after_three_updates():
    """theta = 1 as built, then 3, 5 and 2 after three steps: the average of the four is 2.75, and the
    penalty at theta = 2 is lambda (2 - 2.75)^2; only D's penalty comes with every micro-batch."""
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = HistoricalAverage("g", 0.5, net)
    for value in (3.0, 5.0, 2.0):
        with torch.no_grad():
            net.weight.fill_(value)
        average.after_step()
    assert average.average["weight"].item() == 2.75 and average.count == 4
    assert average.g_penalty(None, None, last_micro_batch=False) is None, "G's penalty twice in a step"
    penalty = average.g_penalty(None, None, last_micro_batch=True)
    assert penalty.item() == 0.5 * 0.75**2
    (grad,) = torch.autograd.grad(penalty, net.weight)
    assert grad.item() == -0.75, "d/dtheta lambda (theta - avg)^2 = 2 lambda (theta - avg)"
    restored = HistoricalAverage("g", 0.5, torch.nn.Linear(1, 1, bias=False))
    restored.load_state_dict(average.state_dict())
    assert restored.average["weight"].item() == 2.75 and restored.count == 4
    section = _cfg(
        "biggan/digits32.yaml", "regularize.historical_averaging.d=1"
    ).regularize.historical_averaging
    only_d = HistoricalAverage.build(section, Networks(net, torch.nn.Linear(1, 1), True, torch.device("cpu")))
    assert [r.network for r in only_d] == ["d"] and only_d[0].d_penalty(None, None, None).item() == 0.0


def test_path_lengths_lazy_pass_uses_the_shrunk_batch_and_reaches_every_g_parameter():
    G, _ = _small_stylegan2()
    regularizer = PathLength(weight=2.0, interval=4, decay=0.01, batch_shrink=2, device=torch.device("cpu"))
    penalty, zero_term = regularizer.lazy_penalty(_tools(G=G, micro_batch=8), None)
    (penalty + zero_term).backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"
    assert G.mapping.w_avg.abs().sum() > 0, "the G pass of the regularizer updates w_avg (a G step)"


def test_style_mixing_draws_cutoffs_at_its_probability_from_the_slot():
    G, _ = _small_stylegan2()
    inputs = GInputs(G, 0, 32, 1, 0, 1, torch.device("cpu"), hooks=[StyleMixing(0.5, G.num_ws)])
    cutoffs = [inputs(4)[2].get("mix_cutoff") for _ in range(200)]
    drawn = [c for c in cutoffs if c is not None]
    assert 60 < len(drawn) < 140, f"{len(drawn)} of 200 mixed at probability 0.5"
    assert set(drawn) == set(range(1, G.num_ws)), sorted(set(drawn))
    again = GInputs(G, 0, 32, 1, 0, 1, torch.device("cpu"), hooks=[StyleMixing(0.5, G.num_ws)])
    assert [again(4)[2].get("mix_cutoff") for _ in range(200)] == cutoffs, "the draws follow the slot seed"


def test_g_inputs_of_two_ranks_interleave_the_slots_of_one():
    G, _ = _small_stylegan2()
    one = GInputs(G, 3, 32, 10, 0, 1, torch.device("cpu"))
    ranks = [GInputs(G, 3, 32, 10, r, 2, torch.device("cpu")) for r in range(2)]
    single = [one(4) for _ in range(4)]
    for k in range(2):
        for r in range(2):
            z, y, kwargs = ranks[r](4)
            z1, y1, kwargs1 = single[2 * k + r]
            assert torch.equal(z, z1) and torch.equal(y, y1)
            assert all(torch.equal(a, b) for a, b in zip(kwargs["noise"], kwargs1["noise"]))


def test_d_view_keeps_the_sets_apart_and_augments_with_the_slot_stream():
    _, D = _small_stylegan2()
    x = torch.randn(8, 3, 16, 16)
    labels = torch.zeros(8, dtype=torch.long)
    view = DView(D, D, D, [], torch.Generator())
    together = view(x, labels, parts=2)
    apart = torch.cat([D(x[:4], labels[:4]), D(x[4:], labels[4:])]).float()
    assert torch.allclose(together, apart, atol=1e-6), "the minibatch statistics mixed reals and fakes"
    augmented = DView(D, D, D, ["translation"], torch.Generator().manual_seed(1))
    assert torch.equal(
        augmented(x, labels), augmented.D(translation(x, generator=torch.Generator().manual_seed(1)), labels)
    )


def test_augmentations_are_differentiable_twice_for_r1():
    _, D = _small_stylegan2()
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    logits = D(diff_augment(x, parse_policy("color,translation,cutout"), g))
    penalty = r1_penalty(logits, x, 1.0)
    penalty.backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(t).all() for t in grads), "R1 through the augmentation failed"


def test_augmentations_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    moved = translation(x, generator=g)
    assert moved.shape == x.shape and not torch.equal(moved, x)
    same_rows = [(moved[i] == x[i]).all() for i in range(64)]
    assert 0 < sum(same_rows) < 64, "some shifts are zero (probability 1/25), most are not"
    cut = cutout(x, generator=g)
    zero_fraction = (cut == 0).float().mean().item()
    assert 0.1 < zero_fraction < 0.3, f"a half-side square should zero about 1/4, got {zero_fraction:.3f}"
    assert color(x, generator=g).shape == x.shape
    with pytest.raises(ValueError, match="blur"):
        parse_policy("color,blur")


def test_orthogonal_regularizer_adds_the_closed_form_or_the_penalty_by_backend():
    """With gradient hooks the closed form is added after backward; an engine that owns the gradients
    gets the penalty in the last micro-batch's loss instead. Both give the same gradient."""
    G = Generator(32, ch=8, z_dim=120, shared_dim=16, num_classes=10, attn_res=(16,))
    hooks, engine = Orthogonal(1e-2, G, grad_hooks=True), Orthogonal(1e-2, G, grad_hooks=False)
    assert hooks.g_penalty(None, None, True) is None and engine.g_penalty(None, None, False) is None
    engine.g_penalty(None, None, last_micro_batch=True).backward()
    by_penalty = [p.grad.clone() for p in engine.params]
    for p in hooks.params:
        p.grad = torch.zeros_like(p)
    hooks.after_backward()
    for a, b in zip(by_penalty, (p.grad for p in hooks.params)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9), (a - b).abs().max()


def _cfg(recipe: str, *overrides: str):
    return load_config(REPO / "configs" / recipe, list(overrides))


def test_the_registry_builds_the_regularizers_a_recipe_turns_on():
    G, _ = _small_stylegan2(32)
    titles = lambda cfg, G: [r.title for r in build_objective(cfg, G, True, torch.device("cpu")).regularizers]  # noqa: E731
    assert titles(_cfg("stylegan2/digits32.yaml"), G) == ["R1", "path length", "style mixing"]
    assert titles(_cfg("progan/digits32.yaml"), G) == ["gradient penalty"]
    biggan = Generator(32, ch=8, z_dim=64, shared_dim=32, num_classes=10, attn_res=(16,))
    assert titles(_cfg("biggan/digits32.yaml"), biggan) == ["orthogonal"]
    assert titles(_cfg("biggan/cifar10_32.yaml"), biggan) == []
    objective = build_objective(_cfg("stylegan2/digits32.yaml"), G, True, torch.device("cpu"))
    assert objective.lazy_ratio("d") == 16 / 17 and objective.lazy_ratio("g") == 4 / 5
    assert not objective.d_double_backward
    assert build_objective(_cfg("progan/digits32.yaml"), G, True, torch.device("cpu")).d_double_backward


def test_config_errors_name_the_key():
    recipe = "stylegan2/digits32.yaml"
    with pytest.raises(ConfigError, match="augment.diffaugment"):
        _cfg(recipe, "augment.diffaugment=color,zoom")
    with pytest.raises(ConfigError, match="regularize.r1.interval"):
        _cfg(recipe, "regularize.r1.interval=0")
    with pytest.raises(ConfigError, match="needs model.name=stylegan2"):
        _cfg("biggan/digits32.yaml", "regularize.path_length.weight=2")
    with pytest.raises(ConfigError, match="two gradient penalties"):
        _cfg("progan/digits32.yaml", "regularize.r1.gamma=1")
    with pytest.raises(ConfigError, match="regularize.gradient_penalty.weight"):
        _cfg("progan/digits32.yaml", "regularize.gradient_penalty.weight=0")
    with pytest.raises(ConfigError, match="loss.name='ls' is not one of hinge, nonsat, minimax, lsgan"):
        _cfg(recipe, "loss.name=ls")
    with pytest.raises(
        ConfigError, match="loss.real_label=0.9 smooths a target that loss.name=hinge does not"
    ):
        _cfg("biggan/digits32.yaml", "loss.real_label=0.9")
    with pytest.raises(ConfigError, match="regularize.weight_clip.value with dist.backend=deepspeed"):
        _cfg("biggan/digits32.yaml", "regularize.weight_clip.value=0.01", "dist.backend=deepspeed")
    with pytest.raises(ConfigError, match="augment.instance_noise=-0.1 must be >= 0"):
        _cfg(recipe, "augment.instance_noise=-0.1")
    with pytest.raises(ConfigError, match="regularize.lecam.decay=1.0 must be below 1"):
        _cfg(recipe, "regularize.lecam.weight=0.3", "regularize.lecam.decay=1")
    with pytest.raises(
        ConfigError, match="regularize.unrolled.lr=0.0 must be > 0 with regularize.unrolled.steps=2"
    ):
        _cfg(recipe, "regularize.unrolled.steps=2", "regularize.unrolled.lr=0")
    with pytest.raises(ConfigError, match="regularize.unrolled.steps=-1 must be >= 0"):
        _cfg(recipe, "regularize.unrolled.steps=-1")
    with pytest.raises(ConfigError, match="unknown config key regularize.r1.weight"):
        _cfg(recipe, "regularize.r1.weight=1")


def test_old_keys_still_load_with_a_warning(caplog):
    """Recipes and checkpoints written before the objective became parts keep their meaning."""
    with caplog.at_level(logging.WARNING, logger="bigtrain.config"):
        old = load_config(
            None, ["loss.name=wgan-gp", "loss.r1_gamma=0", "data.diffaugment=color", "model.name=progan"]
        )
    assert old.loss.name == "wgan" and old.regularize.gradient_penalty.weight == 10.0
    assert old.regularize.gradient_penalty.drift == 0.001 and old.augment.diffaugment == "color"
    assert old.regularize.ortho.strength == 1e-4, "the old layout's default orthogonal regularization"
    assert "loss.r1_gamma -> regularize.r1.gamma" in caplog.text and "wgan-gp -> wgan" in caplog.text
    assert load_config(None, ["loss.name=hinge"]).regularize.ortho.strength == 0.0


class _TinyD(torch.nn.Module):
    """D(x) = w2 . tanh(SN(W) x + b) + b2 on flattened 2x2 images, in float64."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 3).double())
        self.out = torch.nn.Linear(3, 1).double()

    def forward(self, images, labels, parts=1):
        return self.out(torch.tanh(self.fc(images.flatten(1)))).squeeze(1)


def _unroll_case():
    torch.manual_seed(0)
    D = _TinyD()
    view = DView(D, D, D, [], torch.Generator())
    x, z = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    loss = build_loss(load_config(None, ["loss.name=nonsat"]).loss)

    def score(images, labels, parts, params):  # DView's scores in float64 (it returns float32)
        return torch.func.functional_call(D, params, (images, labels), {"parts": parts})

    params = d_parameters(D)
    assert torch.equal(view(x, y, train=False, params=params), score(x, y, 1, params).float())
    return D, score, loss, (x, y), z


def test_unrolled_d_equals_k_explicit_functional_steps():
    """theta_D^{k+1} = theta_D^k - eta dL_D/dtheta_D^k (Metz et al. 2017, eq. 6), three steps by hand
    on D written out (spectral norm with its frozen u, v), against the unroll through DView."""
    D, score, loss, (x, y), fake = _unroll_case()
    before = {n: t.clone() for n, t in D.state_dict().items()}
    lr, steps = 0.5, 3
    with frozen_state(D):  # as in the G step: SN's u, v stay
        got = unroll(score, loss.d, d_parameters(D), (x, y), (fake, y), steps, lr)
        logits = score(torch.cat([x, fake]), torch.cat([y, y]), 2, got)
    sn = D.fc.parametrizations.weight[0]
    u, v = sn._u, sn._v

    def explicit(W, b, w2, b2, images):
        return (torch.tanh(images.flatten(1) @ (W / torch.vdot(u, W @ v)).T + b) @ w2.T + b2).squeeze(1)

    theta = [D.fc.parametrizations.weight.original, D.fc.bias, D.out.weight, D.out.bias]
    theta = [t.detach().clone().requires_grad_(True) for t in theta]
    images = torch.cat([x, fake])
    for _ in range(steps):
        out = explicit(*theta, images)
        grads = torch.autograd.grad(loss.d(out[:4], out[4:]), theta)
        theta = [(t - lr * g).detach().requires_grad_(True) for t, g in zip(theta, grads)]
    names = ["fc.parametrizations.weight.original", "fc.bias", "out.weight", "out.bias"]
    for name, want in zip(names, theta):
        assert torch.allclose(got[name], want, rtol=0, atol=1e-12), (name, got[name], want)
        assert not torch.equal(got[name], before[name]), f"{name} did not move in the unroll"
    want_logits = explicit(*theta, images)
    assert torch.allclose(logits, want_logits, rtol=0, atol=1e-12), (logits, want_logits)
    for name, t in D.state_dict().items():  # D's own parameters and SN buffers are untouched
        assert torch.equal(t, before[name]), f"D's {name} changed in the unroll"


def test_gs_gradient_through_the_unroll_matches_finite_differences():
    """G(z) = a z + c: dL_G/d(a, c) through three unrolled steps (eq. 7) equals central differences of
    L_G(theta_G) = L_G(D_{theta_D^3(theta_G)}(G(z))), and differs from the gradient with D as it is."""
    D, score, loss, reals, z = _unroll_case()
    y = reals[1]

    def loss_g(theta_g: torch.Tensor, steps: int) -> torch.Tensor:
        fake = theta_g[0] * z + theta_g[1]
        with frozen_state(D):
            params = unroll(score, loss.d, d_parameters(D), reals, (fake, y), steps, lr=0.5)
            return loss.g(score(fake, y, 1, params), None)

    theta = torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_g(theta, 3), theta)
    (grad0,) = torch.autograd.grad(loss_g(theta, 0), theta)
    eps = 1e-6
    steps = torch.eye(2, dtype=torch.float64) * eps
    fd = torch.stack([(loss_g(theta + e, 3) - loss_g(theta - e, 3)).detach() / (2 * eps) for e in steps])
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-9), (grad, fd)
    assert (grad - grad0).abs().max() > 1e-3, ("the unroll did not change G's gradient", grad, grad0)


def test_split_scores_gives_each_set_its_rows_of_every_declared_output():
    sets = [(torch.zeros(2, 1), torch.tensor([0, 1])), (torch.ones(3, 1), torch.tensor([2, 3, 4]))]
    out = DOutput(torch.arange(5.0), torch.arange(10.0).reshape(5, 2), None)
    first, second = split_scores(sets, out)
    assert torch.equal(first.logits, torch.arange(2.0)) and torch.equal(second.features, out.features[2:])
    assert second.labels.tolist() == [2, 3, 4] and torch.equal(second.images, sets[1][0])
    assert first.classes is None and second.classes is None
    logits_only = split_scores(sets, torch.arange(5.0))
    assert torch.equal(logits_only[1].logits, torch.arange(2.0, 5.0)) and logits_only[1].features is None


def test_feature_matching_on_fixed_features():
    """Means over the batch: reals (2, 3), fakes (1, 1); ||(1, 2)||^2 = 5, times weight 0.5, over accum 2.
    The gradient reaches the fakes' features only: d/df_i = -2 (weight / accum) (mean_r - mean_f) / B."""
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]], requires_grad=True)
    assert feature_matching_loss(real, fake).item() == 5.0
    fm = FeatureMatching(weight=0.5, replace=False, accum=2)
    assert fm.network == "g" and fm.d_outputs and fm.needs_reals and not fm.replaces_g_loss
    got = fm.g_penalty(_scored(None, features=fake), _scored(None, features=real), last_micro_batch=False)
    assert got.item() == 1.25, f"{got.item()} != 1.25"
    got.backward()
    assert real.grad is None, "feature matching trained D's view of the reals"
    want = torch.tensor([[-0.25, -0.5], [-0.25, -0.5]])
    assert torch.equal(fake.grad, want), f"{fake.grad} != {want}"
    assert FeatureMatching(1.0, replace=True).replaces_g_loss
    with pytest.raises(ConfigError, match="regularize.feature_matching.replace=true .* needs "
                                          "regularize.feature_matching.weight > 0"):  # fmt: skip
        _cfg("biggan/digits32.yaml", "regularize.feature_matching.replace=true")


def test_aux_classifier_cross_entropies_on_fixed_logits():
    """AC-GAN's L_C by hand: reals' class logits (2, 0, 0) and (0, 1, 0) for classes 0 and 1 give
    -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) and log(1 + 2 e^-1); uniform fakes give log 3 each. D's loss
    adds weight x (CE(reals) + CE(fakes)), G's weight x CE(fakes) / accum."""
    real = _scored(
        None, labels=torch.tensor([0, 1]), classes=torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    )
    fake = _scored(None, labels=torch.tensor([2, 0]), classes=torch.zeros(2, 3, requires_grad=True))
    ce_real = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(-1))) / 2
    assert class_loss(real.classes, real.labels).item() == pytest.approx(ce_real, rel=1e-6)
    section = _cfg(
        "biggan/digits32.yaml", "model.aux_classifier=true", "regularize.aux_classifier.weight=0.5"
    )
    networks = Networks(None, None, True, torch.device("cpu"), num_classes=3, accum=2)
    on_d, on_g = AuxClassifier.build(section.regularize.aux_classifier, networks)
    assert (on_d.network, on_g.network) == ("d", "g") and on_d.d_outputs and on_g.d_outputs
    got_d, want_d = on_d.d_penalty(real, fake, None).item(), 0.5 * (ce_real + math.log(3))
    assert got_d == pytest.approx(want_d, rel=1e-6), f"D's term {got_d} != {want_d}"
    got_g = on_g.g_penalty(fake, None, last_micro_batch=True)
    assert got_g.item() == pytest.approx(0.5 * math.log(3) / 2, rel=1e-6), f"G's term {got_g.item()}"
    got_g.backward()  # dCE/dlogits = (softmax - onehot) / B, times weight / accum = 0.25
    want = 0.25 * (torch.full((2, 3), 1 / 3) - torch.eye(3)[[2, 0]]) / 2
    assert torch.allclose(fake.classes.grad, want), f"{fake.classes.grad} != {want}"


def test_aux_classifier_needs_the_head_and_a_conditional_dataset():
    recipe = "biggan/digits32.yaml"
    with pytest.raises(ConfigError, match=r"regularize.aux_classifier.weight=1.0 trains D's class head, which "
                                          r"model.aux_classifier=true adds"):  # fmt: skip
        _cfg(recipe, "regularize.aux_classifier.weight=1")
    with pytest.raises(ConfigError, match="model.aux_classifier=true adds a class head to D that only "
                                          "regularize.aux_classifier.weight trains"):  # fmt: skip
        _cfg(recipe, "model.aux_classifier=true")
    with pytest.raises(ConfigError, match="model.num_classes=1 makes the run unconditional"):
        _cfg(recipe, "model.aux_classifier=true", "regularize.aux_classifier.weight=1", "model.num_classes=1")
    # model.num_classes 0 takes the dataset's: an unconditional one is refused when the objective is built
    cfg = _cfg(recipe, "model.aux_classifier=true", "regularize.aux_classifier.weight=1")
    G = Generator(32, ch=8, z_dim=64, shared_dim=32, num_classes=1, attn_res=(16,))
    with pytest.raises(ConfigError, match=r"regularize.aux_classifier.weight=1.0 .* this run has 1 class"):
        build_objective(cfg, G, True, torch.device("cpu"), num_classes=1)


def test_the_objective_asks_d_for_its_outputs_only_where_a_part_reads_them():
    G = Generator(32, ch=8, z_dim=64, shared_dim=32, num_classes=10, attn_res=(16,))
    build = lambda *overrides: build_objective(_cfg("biggan/digits32.yaml", *overrides), G, True,  # noqa: E731
                                               torch.device("cpu"), num_classes=10)  # fmt: skip
    # (D's outputs in the D step, in the G step, the G step scores reals, G trains on the adversarial loss)
    asks = lambda o: (o.d_outputs("d"), o.d_outputs("g"), o.needs_reals, o.adversarial_g)  # noqa: E731
    assert asks(build()) == (False, False, False, True), asks(build())
    fm = build("regularize.feature_matching.weight=1")
    assert asks(fm) == (False, True, True, True), asks(fm)
    alone = build("regularize.feature_matching.weight=1", "regularize.feature_matching.replace=true")
    assert asks(alone) == (False, True, True, False), asks(alone)
    ac = build("model.aux_classifier=true", "regularize.aux_classifier.weight=1")
    assert asks(ac) == (True, True, False, True), asks(ac)
    titles = [r.title for r in ac.regularizers]
    assert titles == ["orthogonal", "auxiliary classifier (D)", "auxiliary classifier (G)"], titles


class _LinearG(torch.nn.Module):
    """G(z, y) = (z A) as a 1x2x2 image: a latent shift dz moves the image by dz A."""

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 1.0, 0.0, 3.0]]))

    def forward(self, z, y, **kwargs):
        return (z @ self.A).reshape(-1, 1, 2, 2)


def test_latent_consistency_terms_of_d_and_g():
    """zCR (Zhao et al. 2021, eqs. 4-5), z' = z + sigma eps with eps from the slot's stream:
    D's term lambda_dis E[(D(G(z)) - D(G(z')))^2] on two fixed logit pairs, G's term
    -lambda_gen E[(G(z) - G(z'))^2] = -lambda_gen E[(sigma eps A)^2] (over pixels, divided by accum 2)."""
    G = _LinearG()
    section = load_config(
        None, ["regularize.zcr.dis=5", "regularize.zcr.gen=0.5", "regularize.zcr.sigma=0.1"]
    )
    on_d, on_g = LatentConsistency.build(
        section.regularize.zcr, Networks(G, None, True, torch.device("cpu"), accum=2)
    )
    assert (on_d.network, on_g.network) == ("d", "g"), (on_d.network, on_g.network)
    z, y = torch.tensor([[1.0, -1.0], [0.5, 2.0]]), torch.tensor([0, 1])
    eps = torch.randn(2, 2, generator=torch.Generator().manual_seed(3))
    on_d.g_kwargs({}, z, 0, torch.Generator().manual_seed(3))
    images, labels = on_d.extra_d_set(torch.zeros(2, 1, 2, 2), y, G(z, y), y, torch.Generator())
    torch.testing.assert_close(images, G(z + 0.1 * eps, y).detach(), msg="D's extra set is not G(z')")
    assert torch.equal(labels, y) and not images.requires_grad
    got = on_d.d_penalty(None, _scored(torch.tensor([1.0, 2.0])), _scored(torch.tensor([0.0, 4.0])))
    assert got.item() == 5 * (1 + 4) / 2, f"D's term {got.item()} != 12.5"
    on_g.g_kwargs({}, z, 0, torch.Generator().manual_seed(3))
    fake = G(z, y)
    got = on_g.g_penalty(_scored(None, images=fake, labels=y), None, last_micro_batch=True)
    want = -0.5 * ((0.1 * eps) @ G.A.detach()).square().mean() / 2
    torch.testing.assert_close(got, want, msg=f"G's term {got.item()} != {want.item()}")
    got.backward()  # G is pushed to spread nearby latents: the gradient of -||dz A||^2 in A
    want_grad = -0.5 * 2 * (0.1 * eps).T @ ((0.1 * eps) @ G.A.detach()) / 8 / 2
    torch.testing.assert_close(G.A.grad, want_grad, msg=f"{G.A.grad} != {want_grad}")
