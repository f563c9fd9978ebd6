"""f-GAN (Nowozin et al. 2016; bigtrain/objective/fgan.py): every divergence's variational bound on two
known discrete distributions, the output activations' range, the losses' numerics at extreme logits,
the Lambert W the Jeffrey row needs, the config keys, and the bound logged by a trainer."""

import math

import pytest
import torch

from bigtrain.config import FGAN_DIVERGENCES, ConfigError, LossConfig, load_config
from bigtrain.objective.adversarial import SMOOTHABLE, build_loss, nonsat_d, nonsat_g
from bigtrain.objective.fgan import DIVERGENCES, BoundMeter, wright_omega
from conftest import REPO

# Two distributions on 5 outcomes, every probability > 0 (double precision throughout).
P = torch.tensor([0.1, 0.4, 0.2, 0.25, 0.05], dtype=torch.float64)
Q = torch.tensor([0.3, 0.1, 0.2, 0.15, 0.25], dtype=torch.float64)


def _kl(p, q):
    return (p * (p / q).log()).sum()


def _jsd(p, q):
    m = (p + q) / 2
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


# D_f(P || Q) in closed form, each written from its definition (not from the module's f). Tables 1 and 2's
# generators give these; `js`'s f gives 2 JSD (Table 1 writes JS with a factor 1/2 that its f lacks) and
# `gan`'s gives 2 JSD - log 4 (Goodfellow et al.'s criterion).
CLOSED_FORM = {
    "total_variation": lambda p, q: 0.5 * (p - q).abs().sum(),
    "kl": _kl,
    "reverse_kl": lambda p, q: _kl(q, p),
    "pearson": lambda p, q: ((p - q) ** 2 / q).sum(),
    "neyman": lambda p, q: ((p - q) ** 2 / p).sum(),
    "hellinger": lambda p, q: ((p.sqrt() - q.sqrt()) ** 2).sum(),
    "jeffrey": lambda p, q: ((p - q) * (p / q).log()).sum(),
    "js": lambda p, q: 2 * _jsd(p, q),
    "gan": lambda p, q: 2 * _jsd(p, q) - math.log(4),
}
# dom f* of Table 2, written out here.
DOMAIN = {
    "total_variation": lambda t: t.abs() <= 0.5,
    "kl": lambda t: torch.isfinite(t),
    "reverse_kl": lambda t: t < 0,
    "pearson": lambda t: torch.isfinite(t),
    "neyman": lambda t: t < 1,
    "hellinger": lambda t: t < 1,
    "jeffrey": lambda t: torch.isfinite(t),
    "js": lambda t: t < math.log(2),
    "gan": lambda t: t < 0,
}


def _bound(divergence, t):
    """E_P[T] - E_Q[f*(T)] for T given on each outcome."""
    return (P * t).sum(-1) - (Q * divergence.conjugate(t)).sum(-1)


def test_every_divergence_of_the_paper_and_only_those():
    assert set(DIVERGENCES) == set(CLOSED_FORM) == set(DOMAIN)
    assert FGAN_DIVERGENCES == tuple(DIVERGENCES), "loss.divergence's choices and fgan.DIVERGENCES differ"


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_the_bound_at_t_star_equals_the_closed_form_divergence(name):
    """T*(x) = f'(p(x) / q(x)) (eq. 4) lies in dom f* and makes E_P[T] - E_Q[f*(T)] the divergence."""
    divergence = DIVERGENCES[name]
    t_star = divergence.f_prime(P / Q)
    assert DOMAIN[name](t_star).all(), f"{name}: T* = {t_star} leaves dom f*"
    want, got = CLOSED_FORM[name](P, Q).item(), _bound(divergence, t_star).item()
    assert abs(got - want) <= 1e-6, f"{name}: bound at T* {got:.9f}, closed form {want:.9f}"
    generator = (Q * divergence.f(P / Q)).sum().item()  # E_Q[f(p / q)] with the module's f (eq. 1)
    assert abs(generator - want) <= 1e-6, f"{name}: E_Q[f(p/q)] {generator:.9f}, closed form {want:.9f}"
    f_1, same = divergence.f(torch.ones((), dtype=torch.float64)).item(), CLOSED_FORM[name](Q, Q).item()
    assert abs(f_1 - same) < 1e-12, f"{name}: f(1) = {f_1}, D_f(Q || Q) = {same} (0 but for GAN's -log 4)"
    f_prime_1 = divergence.f_prime(torch.ones((), dtype=torch.float64)).item()
    assert abs(f_prime_1 - divergence.f_prime_at_1) < 1e-12, (name, f_prime_1, divergence.f_prime_at_1)


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_random_t_give_at_most_the_divergence(name):
    """Fenchel-Young: any T with values in dom f* (here g_f of random V) bounds D_f from below; T* moved
    by 1e-3 per outcome stays within 1e-2 of it (first order for total variation, whose T* lies on the
    edge of dom f*; second order for the others)."""
    divergence = DIVERGENCES[name]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2000, 5, generator=g, dtype=torch.float64) * 3
    t = divergence.activation(v)
    assert DOMAIN[name](t).all()
    bounds, want = _bound(divergence, t), CLOSED_FORM[name](P, Q).item()
    assert bounds.max().item() <= want + 1e-12, (
        f"{name}: a random T gave {bounds.max().item():.9f} > {want:.9f}"
    )
    t_star = divergence.f_prime(P / Q)
    near = t_star + 1e-3 * torch.randn(200, 5, generator=g, dtype=torch.float64)
    near = near[DOMAIN[name](near).all(-1)]
    gap = want - _bound(divergence, near)
    assert (gap >= -1e-12).all() and gap.max() < 1e-2, (
        f"{name}: near T* the gap is in [{gap.min()}, {gap.max()}]"
    )


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_the_activation_maps_every_logit_in_minus_30_30_into_dom_f_star(name):
    """g_f(v) in dom f* for v in [-30, 30] (float64, where 1 - exp(-30) < 1 is representable), and the
    loss's closed form of f*(g_f(v)) equals f* applied to g_f(v) where the latter is accurate (|v| <= 10)."""
    divergence = DIVERGENCES[name]
    v = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    t = divergence.activation(v)
    assert torch.isfinite(t).all() and DOMAIN[name](t).all(), (
        f"{name}: g_f leaves dom f* at v = {v[~DOMAIN[name](t)]}"
    )
    moderate = v[v.abs() <= 10]
    fused, composed = (
        divergence.conjugate_of_activation(moderate),
        divergence.conjugate(divergence.activation(moderate)),
    )
    err = ((fused - composed).abs() / (1 + composed.abs())).max().item()
    assert err < 1e-9, f"{name}: f*(g_f(v)) in closed form and composed differ by {err:.3g}"


@pytest.mark.parametrize("name", list(CLOSED_FORM))
def test_losses_and_gradients_are_finite_in_float32_at_extreme_logits(name):
    """D's and G's losses with every logit in [-30, 30], as reals and as fakes, in float32 (the training
    dtype): finite, with finite gradients (where 1 - exp(-v) rounds to 1, Neyman's and Hellinger's f* of
    the rounded t would be infinite; JS's and GAN's logs of 0 likewise)."""
    loss = build_loss(LossConfig("fgan", divergence=name))
    v = torch.linspace(-30, 30, 601, dtype=torch.float32)
    for real, fake in ((v, v.flip(0)), (v, torch.full_like(v, 30.0)), (torch.full_like(v, -30.0), v)):
        real, fake = real.clone().requires_grad_(), fake.clone().requires_grad_()
        d, g = loss.d(real, fake), loss.g(fake, None)
        grads = torch.autograd.grad(d + g, (real, fake))
        assert torch.isfinite(d) and torch.isfinite(g), f"{name}: D loss {d.item()}, G loss {g.item()}"
        assert all(torch.isfinite(x).all() for x in grads), f"{name}: non-finite gradient"


def test_the_gan_row_is_the_non_saturating_loss_and_js_is_it_shifted():
    """GAN row: F = E_P[log sigmoid(V)] + E_Q[log(1 - sigmoid(V))], so L_D = nonsat's D loss, and G's
    -E_Q[g_f(V)] = E_Q[-log sigmoid(V)] is the non-saturating G loss (section 3's choice). JS: g_f and
    f*(g_f) are GAN's plus log 2 each, so L_D is GAN's - log 4 and L_G GAN's - log 2 (same gradients)."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(64, generator=g) * 5, torch.randn(64, generator=g) * 5
    gan, js = (build_loss(LossConfig("fgan", divergence=d)) for d in ("gan", "js"))
    torch.testing.assert_close(gan.d(real, fake), nonsat_d(real, fake), rtol=0, atol=1e-6)
    torch.testing.assert_close(gan.g(fake, None), nonsat_g(fake), rtol=0, atol=1e-6)
    torch.testing.assert_close(js.d(real, fake), gan.d(real, fake) - math.log(4), rtol=0, atol=1e-5)
    torch.testing.assert_close(js.g(fake, None), gan.g(fake, None) - math.log(2), rtol=0, atol=1e-5)


def test_g_maximizes_the_activation_of_its_fakes():
    """L_G = -E_Q[g_f(V(G(z)))] for every row (section 3, practical considerations), not the saddle
    point's -E_Q[f*(g_f(V))]: its gradient in V is -g_f'(V) / n, negative (G raises V) everywhere."""
    v = torch.linspace(-5, 5, 11, dtype=torch.float64)
    for name, divergence in DIVERGENCES.items():
        loss = build_loss(LossConfig("fgan", divergence=name))
        fake = v.clone().requires_grad_()
        torch.testing.assert_close(loss.g(fake, None), -divergence.activation(v).mean())
        (grad,) = torch.autograd.grad(loss.g(fake, None), fake)
        assert (grad < 0).all(), f"{name}: G's gradient in V {grad}"


def test_wright_omega_is_lambert_w_of_exp_with_its_derivatives():
    """omega(x) = W(e^x) solves w + log w = x: W(1) = Omega = 0.5671432904097838, W(e) = 1; the residual
    over [-80, 1000] is at float64 rounding (2.2e-16 measured), float32 agrees with float64 to 2e-6 relative
    over [-80, 80] (measured 7.5e-7 with ATEN_CPU_CAPABILITY=avx2, 7.9e-7 with default: float32's own
    rounding of x near |x| = 80);
    first and second derivatives pass gradcheck; and the Jeffrey conjugate's slope at t = f'(u) is u
    (f*' = (f')^-1)."""
    omega = wright_omega(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert abs(omega[0].item() - 0.5671432904097838) < 1e-15 and abs(omega[1].item() - 1.0) < 1e-15
    x = torch.linspace(-80, 1000, 20001, dtype=torch.float64)
    w = wright_omega(x)
    residual = ((w + w.log() - x).abs() / x.abs().clamp(min=1)).max().item()
    assert residual < 1e-14, residual
    x32 = torch.linspace(-80, 80, 4001)
    rel = ((wright_omega(x32).double() - wright_omega(x32.double())).abs() / wright_omega(x32.double())).max()
    assert rel < 2e-6, f"float32 omega off by {rel:.3g} relative (tolerance 2e-6)"
    points = torch.tensor(
        [-20.0, -3.0, 0.0, 0.5, 1.0, 2.0, 7.0, 40.0], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(wright_omega, (points,))
    assert torch.autograd.gradgradcheck(wright_omega, (points,))
    jeffrey = DIVERGENCES["jeffrey"]
    u = torch.tensor([0.05, 0.5, 1.0, 3.0, 40.0], dtype=torch.float64)
    t = jeffrey.f_prime(u).requires_grad_()
    (slope,) = torch.autograd.grad(jeffrey.conjugate(t).sum(), t)
    torch.testing.assert_close(slope, u, rtol=1e-10, atol=0)


def test_the_bound_meter_averages_f_since_the_last_log_point():
    meter = BoundMeter(DIVERGENCES["pearson"])
    assert meter.metrics() == {}
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    meter.observe(real, fake)  # E[v] - E[v^2 / 4 + v] = 2 - (0 + (1 - 2)) / 2 = 2.5
    meter.observe(real + 1, fake)  # 3.5
    assert meter.metrics() == {"fgan_bound": 3.0} and meter.metrics() == {}


def _cfg(*overrides):
    return load_config(REPO / "configs/biggan/digits32.yaml", list(overrides))


def test_config_keys_and_their_errors():
    assert _cfg("loss.name=fgan").loss.divergence == "gan"
    assert build_loss(_cfg("loss.name=fgan", "loss.divergence=jeffrey").loss).name == "fgan"
    with pytest.raises(ConfigError, match="loss.divergence='chi2' is not one of total_variation, kl"):
        _cfg("loss.name=fgan", "loss.divergence=chi2")
    with pytest.raises(ConfigError, match="loss.divergence=kl is f-GAN's: it applies to loss.name=fgan"):
        _cfg("loss.divergence=kl")
    assert "fgan" not in SMOOTHABLE  # label smoothing has no target to move in F
    with pytest.raises(ConfigError, match="loss.real_label=0.9 smooths a target that loss.name=fgan"):
        _cfg("loss.name=fgan", "loss.real_label=0.9")


def test_a_trainer_logs_the_bound_it_trains_d_on(demo_shards, tmp_path):
    """One iteration of the BigGAN digits recipe with the Pearson row: the logged `fgan_bound` is F of
    the D step's micro-batch, i.e. -loss_d (no D regularizer in the recipe)."""
    from bigtrain.train.loop import Trainer

    cfg = load_config(REPO / "configs/biggan/digits32.yaml", [
        f"data.path={demo_shards}", f"train.run_dir={tmp_path}", "track.enabled=false", "eval.every_kimg=0",
        "train.batch=16", "data.num_workers=0", "train.total_kimg=0.016", "loss.name=fgan",
        "loss.divergence=pearson",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    trainer.train_step()
    metrics = trainer.log_metrics(elapsed=1.0, images=16)
    assert math.isfinite(metrics["fgan_bound"]), metrics
    assert abs(metrics["fgan_bound"] + metrics["loss_d"]) < 1e-5 * max(1.0, abs(metrics["loss_d"])), (
        metrics["fgan_bound"],
        metrics["loss_d"],
    )


def test_accumulation_trains_with_every_divergence_s_losses_finite(demo_shards, tmp_path):
    """train.accum=2 (micro-batches of 4) for one iteration with the rows whose conjugates grow fastest
    (KL's exp, Jeffrey's Lambert W) and Pearson: the bound and both losses stay finite and G moves."""
    from bigtrain.train.loop import Trainer

    for divergence in ("kl", "jeffrey", "pearson"):
        cfg = load_config(REPO / "configs/biggan/digits32.yaml", [
            f"data.path={demo_shards}", f"train.run_dir={tmp_path / divergence}", "track.enabled=false",
            "eval.every_kimg=0", "train.batch=8", "train.accum=2", "data.num_workers=0", "train.total_kimg=0.008",
            "loss.name=fgan", f"loss.divergence={divergence}",
        ])  # fmt: skip
        trainer = Trainer(cfg)
        before = [p.detach().clone() for p in trainer.G.parameters()]
        trainer.train_step()
        metrics = trainer.log_metrics(elapsed=1.0, images=8)
        figures = (metrics["fgan_bound"], metrics["loss_d"], metrics["loss_g"])
        assert trainer.micro_batch == 4 and all(map(math.isfinite, figures)), (divergence, figures)
        assert trainer.skipped_steps == 0, f"{divergence}: {trainer.skipped_steps} steps skipped"
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.parameters())), (
            f"{divergence}: G did not move"
        )
