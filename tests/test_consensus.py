"""Consensus optimization (Mescheder et al. 2017, "The Numerics of GANs"): the corrected gradients on the
Dirac-GAN and against finite differences (`bigtrain/objective/consensus.py`), and the part in the
trainer (the term it adds, accumulation, two ranks)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from bigtrain.config import ConfigError, load_config
from bigtrain.models.layers import frozen_state
from bigtrain.objective.adversarial import hinge_d, hinge_g
from bigtrain.objective.consensus import consensus_gradients, consensus_regularizer, consensus_term
from bigtrain.train.loop import Trainer
from conftest import REPO

H = 0.1  # the Dirac-GAN's step size


# ------------------------------------------------------------------ the Dirac-GAN (GAN_stability's form)


def _f(t: torch.Tensor) -> torch.Tensor:
    """f(t) = -log(1 + exp(-t)) (Mescheder et al. 2018, "Which Training Methods for GANs do actually
    Converge?", section 2)."""
    return -F.softplus(-t)


def _dirac_losses(theta: torch.Tensor, psi: torch.Tensor, saturating: bool = False):
    """(L_G, L_D) of the Dirac-GAN: data at 0, G = delta_theta, D(x) = psi x; the game's
    L = f(D(G)) + f(-D(0)), D ascending it; G descends L (saturating) or -f(-D(G)) (non-saturating)."""
    fake, real = psi * theta, psi * 0.0
    loss_d = -(_f(fake) + _f(-real))
    loss_g = _f(fake) if saturating else -_f(-fake)
    return loss_g, loss_d


def _simultaneous_steps(theta0, psi0, steps, gamma=None, saturating=False) -> list[tuple[float, float]]:
    """(theta, psi) after each simultaneous gradient step of size H, in float64: the plain gradients of
    both losses (gamma None: each loss differentiated on its own forward), else `consensus_gradients`."""
    theta, psi = torch.tensor(theta0, dtype=torch.float64), torch.tensor(psi0, dtype=torch.float64)
    path = []
    for _ in range(steps):
        th, ps = theta.clone().requires_grad_(), psi.clone().requires_grad_()
        if gamma is None:
            (grad_g,) = torch.autograd.grad(_dirac_losses(th, ps, saturating)[0], [th])
            (grad_d,) = torch.autograd.grad(_dirac_losses(th, ps, saturating)[1], [ps])
        else:
            (grad_g,), (grad_d,) = consensus_gradients(*_dirac_losses(th, ps, saturating), [th], [ps], gamma)
        theta, psi = theta - H * grad_g, psi - H * grad_d
        path.append((theta.item(), psi.item()))
    return path


def _turns(path) -> float:
    angles = [math.atan2(psi, theta) for theta, psi in path]
    steps = [(b - a + math.pi) % (2 * math.pi) - math.pi for a, b in zip(angles, angles[1:])]
    return sum(steps) / (2 * math.pi)


def test_plain_simultaneous_steps_on_the_dirac_gan_circle_and_never_converge():
    """Plain simultaneous gradient steps (size 0.1, non-saturating loss) do not converge: the equilibrium
    repels them, they spiral outward near it (the Jacobian's eigenvalues +-i/2 give |1 + 0.1 i/2| > 1):
    from norm 0.014 the norm grows at every one of the first 1,000 steps, to 0.049 (it first stops
    growing at step 2,796). From (1, 1) they spiral inward instead, onto a circle where the step's
    outward drift h^2 r^2 / 4 meets the non-saturating loss's inward pull, radius sqrt(2h) = 0.447: the
    norm is 0.467 after 1,000 steps (8.0 turns; never below 0.462), 0.447 after 3,000 (never below
    0.444). (The saturating loss's steps, purely rotational in continuous time, spiral outward from
    (1, 1) at every step.)"""
    near = _simultaneous_steps(0.01, 0.01, 1000)
    norms = [math.hypot(0.01, 0.01)] + [math.hypot(*p) for p in near]
    fell = [i for i, (a, b) in enumerate(zip(norms, norms[1:])) if b <= a]
    assert not fell and norms[-1] > 0.04, f"near 0: the norm fell at steps {fell[:5]}; {norms[-1]:.4f}"
    far = _simultaneous_steps(1.0, 1.0, 1000)
    lowest, turns = min(math.hypot(*p) for p in far), _turns([(1.0, 1.0), *far])
    assert lowest > 0.44 and turns > 7, f"from (1, 1): the norm fell to {lowest:.4f} in {turns:.1f} turns"
    out = [math.sqrt(2)] + [math.hypot(*p) for p in _simultaneous_steps(1.0, 1.0, 500, saturating=True)]
    assert all(b > a for a, b in zip(out, out[1:])), "the saturating Dirac-GAN's steps did not spiral out"


def test_consensus_optimization_converges_on_the_dirac_gan():
    """gamma 0.3, steps 0.1 from (1, 1), non-saturating loss: the norm of (theta, psi) is 0.034 after 500
    steps, first below 1e-2 at step 698, 1.5e-3 after 1,000 (float64 and float32 alike), where plain
    steps are still at 0.467; near 0 the corrected field's eigenvalues are -gamma/4 +- i/2."""
    theta, psi = _simultaneous_steps(1.0, 1.0, 1000, gamma=0.3)[-1]
    assert math.hypot(theta, psi) < 1e-2, f"after 1000 steps (theta, psi) = ({theta:.3g}, {psi:.3g})"


def test_gamma_zero_is_bit_identical_to_plain_simultaneous_steps():
    plain = _simultaneous_steps(1.0, 1.0, 300)
    assert _simultaneous_steps(1.0, 1.0, 300, gamma=0.0) == plain
    assert _simultaneous_steps(1.0, 1.0, 300, gamma=0.3) != plain


def test_consensus_gradient_on_the_dirac_gan_equals_the_hand_computed_one():
    """With s = sigmoid(psi theta), s' = s (1 - s): v = (psi s, -theta (1 - s)) and
    L = 1/2 (psi^2 s^2 + theta^2 (1 - s)^2), so dL/dtheta = psi^3 s s' + theta (1 - s)^2 - theta^2 psi (1 - s) s'
    and dL/dpsi = psi s^2 + psi^2 theta s s' - theta^3 (1 - s) s'."""
    gamma = 0.3
    for theta0, psi0 in [(1.0, 1.0), (-0.7, 0.4), (2.0, -1.5)]:
        th = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
        ps = torch.tensor(psi0, dtype=torch.float64, requires_grad=True)
        (grad_g,), (grad_d,) = consensus_gradients(*_dirac_losses(th, ps), [th], [ps], gamma)
        theta, psi = theta0, psi0
        s = 1 / (1 + math.exp(-psi * theta))
        ds = s * (1 - s)
        dl_dtheta = psi**3 * s * ds + theta * (1 - s) ** 2 - theta**2 * psi * (1 - s) * ds
        dl_dpsi = psi * s**2 + psi**2 * theta * s * ds - theta**3 * (1 - s) * ds
        expected = (psi * s + gamma * dl_dtheta, -theta * (1 - s) + gamma * dl_dpsi)
        got = (grad_g.item(), grad_d.item())
        close = [math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-14) for a, b in zip(got, expected)]
        assert all(close), f"at ({theta0}, {psi0}): {got} by autograd, {expected} by hand"


SHAPES = [(5, 3), (5, 2), (3, 2), (2,), (2, 4), (4, 1)]  # z, reals; G's weight and bias; D's two weights


def test_consensus_gradient_equals_finite_differences_on_a_tiny_problem():
    """A linear G (3 -> 2) and a one-hidden-layer tanh D (2 -> 4 -> 1), non-saturating losses, float64:
    grad L from the double backward against central differences of L = 1/2 ||v||^2 (v from first-order
    gradients) over every parameter element."""
    g = torch.Generator().manual_seed(0)
    z, x, *params = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in SHAPES)
    params_g, params_d = params[:2], params[2:]

    def losses(pg, pd):
        fake = z @ pg[0] + pg[1]
        d = lambda images: torch.tanh(images @ pd[0]) @ pd[1]  # noqa: E731
        real_logits, fake_logits = d(x), d(fake)
        loss_d = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        return F.softplus(-fake_logits).mean(), loss_d

    def regularizer(pg, pd) -> float:
        pg, pd = [p.clone().requires_grad_() for p in pg], [p.clone().requires_grad_() for p in pd]
        loss_g, loss_d = losses(pg, pd)
        return consensus_regularizer(
            torch.autograd.grad(loss_g, pg, retain_graph=True) + torch.autograd.grad(loss_d, pd)
        ).item()

    pg, pd = [p.clone().requires_grad_() for p in params_g], [p.clone().requires_grad_() for p in params_d]
    term, value = consensus_term(*losses(pg, pd), pg, pd, pg + pd)
    assert math.isclose(value.item(), regularizer(params_g, params_d), rel_tol=1e-12)
    eps = 1e-6
    for i, (p, grad) in enumerate(zip(params_g + params_d, term)):
        for j in range(p.numel()):
            shifted = []
            for sign in (1, -1):
                moved = [q.clone() for q in params_g + params_d]
                moved[i].view(-1)[j] += sign * eps
                shifted.append(regularizer(moved[:2], moved[2:]))
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            assert math.isclose(grad.view(-1)[j].item(), numeric, rel_tol=1e-6, abs_tol=1e-8), (i, j, numeric)
    plain_g, plain_d = consensus_gradients(*losses(pg, pd), pg, pd, 0.0)
    fixed_g, fixed_d = consensus_gradients(*losses(pg, pd), pg, pd, 10.0)
    for plain, fixed, grad in zip(plain_g + plain_d, fixed_g + fixed_d, term):
        torch.testing.assert_close(fixed, plain + 10.0 * grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the part in the trainer

BATCH = 16


def _cfg(data, run_dir, *extra):
    return load_config(REPO / "configs" / "biggan" / "digits32.yaml", [
        f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
        f"train.batch={BATCH}", "data.num_workers=0", "regularize.ortho.strength=0", *extra,
    ])  # fmt: skip


def _gradients_of_one_step(data, run_dir, network: str, *extra):
    """A fresh trainer's gradients of one main step of `network` (the optimizer step not taken), its
    buffers after it, and what the consensus part's side pass was given."""
    trainer = Trainer(_cfg(data, run_dir, *extra))
    trainer.backend.step = lambda which: None  # keep the gradients and the weights
    seen = []
    for part in trainer.objective.regularizers:
        side_pass = part.side_pass

        def recording(tools, loss, reals, g_inputs, last, side_pass=side_pass, network=part.network):
            seen.append((network, reals, g_inputs))
            return side_pass(tools, loss, reals, g_inputs, last)

        part.side_pass = recording
    if network == "d":
        trainer._d_step()
    else:
        trainer.D.requires_grad_(False)
        trainer._g_step([trainer._real()])
        trainer.D.requires_grad_(True)
    module = trainer.D if network == "d" else trainer.G
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    buffers = {f"{name}.{k}": b.clone() for name, m in (("G", trainer.G), ("D", trainer.D))
               for k, b in m.named_buffers()}  # fmt: skip
    return trainer, grads, buffers, seen


@pytest.mark.parametrize("network", ["d", "g"])
def test_the_part_adds_gamma_times_the_micro_batch_s_consensus_gradient(demo_shards, tmp_path, network):
    """One main step with gamma 2 against the same step off: the gradients differ by 2 grad L, L computed
    here on the modules themselves (not the part's parameter copies) from the micro-batch the side pass
    saw, with SN and BN frozen, and L = 1/2 ||v||^2 is the figure logged (`consensus_L_d`, `_g`); the side
    pass left every buffer (SN vectors, BN statistics) as it was.
    Measured: the difference is 2 grad L to 2.4e-8 (D) and 2.3e-9 (G) of the term's largest element (7.5e3
    and 1.8e3 at BigGAN's initialization): float32 rounding of (gradient + term) - gradient."""
    on, grads_on, buffers_on, seen = _gradients_of_one_step(
        demo_shards, tmp_path / "on", network, "regularize.consensus.gamma=2"
    )
    _, grads_off, buffers_off, _ = _gradients_of_one_step(demo_shards, tmp_path / "off", network)
    assert [n for n, *_ in seen] == [network], f"side passes {[n for n, *_ in seen]} in {network}'s step"
    for key, b in buffers_on.items():  # BN's batch counter, which enters nothing at momentum 0.1, counts on
        if not key.endswith("num_batches_tracked"):  # under frozen_state (as in the D step's G pass)
            assert torch.equal(b, buffers_off[key]), f"{key} moved in the side pass"
    (_, (x, y), (z, y_fake, kwargs)), G, D = seen[0], on.G, on.D
    D.requires_grad_(True)
    with frozen_state(G, batchnorm=True), frozen_state(D):
        fake = G(z, y_fake, **kwargs)
        real_logits, fake_logits = D(torch.cat([x, fake]), torch.cat([y, y_fake]), parts=2).split(len(x))
    params_g, params_d = list(G.parameters()), list(D.parameters())
    term, value = consensus_term(
        hinge_g(fake_logits), hinge_d(real_logits, fake_logits), params_g, params_d,
        params_d if network == "d" else params_g,
    )  # fmt: skip
    logged = on.objective.metrics()[f"consensus_L_{network}"]  # L of the step, logged
    assert math.isclose(logged, value.item(), rel_tol=1e-5), f"logged L {logged}, computed {value.item()}"
    names = [n for n, _ in (D if network == "d" else G).named_parameters()]
    scale = max(t.abs().max().item() for t in term)
    for name, t in zip(names, term):
        added = grads_on[name] - grads_off[name]
        torch.testing.assert_close(added, 2 * t, rtol=1e-5, atol=1e-6 * scale, msg=f"{network}: {name}")


def test_deepspeed_is_refused_with_one_sentence(demo_shards, tmp_path):
    with pytest.raises(ConfigError, match="regularize.consensus.gamma with dist.backend=deepspeed: ZeRO"):
        _cfg(demo_shards, tmp_path, "regularize.consensus.gamma=10", "dist.backend=deepspeed")
    with pytest.raises(ConfigError, match="regularize.consensus.gamma=-1.0 must be >= 0"):
        _cfg(demo_shards, tmp_path, "regularize.consensus.gamma=-1")


CONSENSUS = ["regularize.consensus.gamma=10", "optim.name=rmsprop", "optim.beta2=0.9", "optim.lr_g=1e-4",
             "optim.lr_d=1e-4", "loss.name=nonsat", "regularize.ortho.strength=0",
             "augment.diffaugment=color,translation,cutout"]  # fmt: skip
# G's conv biases that a BatchNorm follows: BN cancels them, so their gradient is rounding noise, which the
# consensus term (elements up to ~1e3) lifts above RMSProp's eps: each step moves them by about
# +-lr/sqrt(1 - 0.9) whatever the noise, in a direction that differs with the order of the sums.
CANCELLED_BY_BN = re.compile(r"^G(_ema)?\.blocks\.\d+\.(conv1|conv2|shortcut)\.bias$")


def test_two_ranks_end_identical_and_equal_one_process_with_accumulation(tmp_path):
    """Two torchrun ranks on gloo (tests/scripts/train_rank.py: per-slot data and latents), BigGAN on
    the digits with the paper's recipe (RMSProp, lr 1e-4, gamma 10, non-saturating loss), DiffAugment
    drawn per slot, 3 iterations: every tensor of G, D and G_ema is the same on both ranks. Against 1
    process with accum 2 (the same micro-batches: the term's mean over ranks is its mean over
    micro-batches): every parameter and SN vector within 1e-5 (measured: at most 1.5e-6), but for the biases
    BatchNorm cancels (above: up to 1.3e-3 apart, each within +-1e-3 of 0), and the probes' outputs within
    1e-4 (measured 8.6e-6 for G_ema's images, 2.9e-6 for D's logits up to 13.6)."""
    from test_dist import assert_ranks_equal_one_process, two_ranks_and_one_process

    r0, r1, single = two_ranks_and_one_process(tmp_path, 3, *CONSENSUS)
    assert any(CANCELLED_BY_BN.match(key) for key in r0), "no BN-cancelled bias: update the pattern"
    assert_ranks_equal_one_process(
        r0, r1, single, tolerance=1e-5, probe_tolerance=1e-4, skip=CANCELLED_BY_BN.match
    )
    for probe in ("G_ema", "D"):  # fixed inputs before and after: training moved both networks
        moved = (r0[f"probe.{probe}"] - r0[f"probe_start.{probe}"]).abs().max()
        assert moved > 1e-3, f"{probe} did not train (its probe moved by {moved:.3g})"
