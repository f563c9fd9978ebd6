import torch

from bigtrain.losses import (
    add_orthogonal_grad_,
    hinge_d,
    hinge_g,
    nonsat_d,
    nonsat_g,
    ortho_parameters,
    orthogonal_penalty,
    orthogonal_penalty_grad,
)
from bigtrain.models.biggan import Generator


def test_hinge_and_nonsaturating_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert torch.isclose(hinge_d(real, fake), torch.tensor((0 + 0.5) / 2 + (0 + 1) / 2))
    assert torch.isclose(hinge_g(fake), torch.tensor(1.0))
    sp = torch.nn.functional.softplus
    assert torch.isclose(nonsat_d(real, fake), sp(-real).mean() + sp(fake).mean())
    assert torch.isclose(nonsat_g(fake), sp(-fake).mean())


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
