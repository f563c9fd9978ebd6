import pytest
import torch

from bigtrain.config import ConfigError, load_config
from bigtrain.models import build_models
from bigtrain.models.biggan import ARCHITECTURES, Discriminator, Generator
from bigtrain.models.layers import SelfAttention, sn_conv2d, sn_linear

Z_FOR = {32: 120, 64: 120, 128: 120, 256: 140, 512: 128}  # divisible by blocks + 1


@pytest.mark.parametrize("resolution", ARCHITECTURES)
def test_every_architecture_has_the_right_shapes(resolution):
    torch.manual_seed(0)
    attn = (min(64, resolution // 2),)  # BigGAN puts attention at 64 (at 16 for 32x32)
    G = Generator(resolution, ch=8, z_dim=Z_FOR[resolution], shared_dim=16, attn_res=attn, num_classes=5)
    D = Discriminator(resolution, ch=8, attn_res=attn, num_classes=5)
    z, y = torch.randn(2, Z_FOR[resolution]), torch.tensor([0, 4])
    x = G(z, y)
    assert x.shape == (2, 3, resolution, resolution)
    assert float(x.detach().abs().max()) <= 1.0
    assert D(x, y).shape == (2,)
    assert len(G.attention) == 1 and len(D.attention) == 1


def test_unconditional_variant_and_wrong_input_shape():
    G = Generator(32, ch=8, z_dim=120, num_classes=1, attn_res=())
    D = Discriminator(32, ch=8, num_classes=1, attn_res=())
    assert G.shared is None and D.embed is None
    x = G(torch.randn(3, 120), torch.zeros(3, dtype=torch.long))
    assert D(x, torch.zeros(3, dtype=torch.long)).shape == (3,)
    with pytest.raises(ValueError, match=r"expected shape \(None, 3, 32, 32\), got \(3, 3, 16, 16\)"):
        D(torch.zeros(3, 3, 16, 16), torch.zeros(3, dtype=torch.long))


def test_z_dim_must_split_into_chunks_and_resolution_must_exist():
    with pytest.raises(ConfigError, match="model.z_dim=100"):
        Generator(128, ch=8, z_dim=100)
    with pytest.raises(ConfigError, match="model.resolution=16"):
        build_models(load_config(None, ["model.resolution=16"]).model, 10)


def test_projection_discriminator_uses_the_label():
    torch.manual_seed(0)
    D = Discriminator(32, ch=8, attn_res=(), num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    a, b = D(x, torch.tensor([0, 1, 2, 3])), D(x, torch.tensor([5, 6, 7, 8]))
    assert (a - b).abs().min() > 1e-4, "D's output does not depend on y"
    # ... and only through <embed(y), phi(x)>: with the embedding zeroed, labels stop mattering.
    D.embed = torch.nn.Embedding(10, D.embed.weight.shape[1])
    torch.nn.init.zeros_(D.embed.weight)
    assert torch.allclose(D(x, torch.tensor([0, 1, 2, 3])), D(x, torch.tensor([5, 6, 7, 8])))


def test_generator_uses_the_label():
    torch.manual_seed(0)
    G = Generator(32, ch=8, z_dim=120, shared_dim=16, num_classes=10, attn_res=()).eval()
    z = torch.randn(2, 120)
    assert not torch.allclose(G(z, torch.tensor([1, 1])), G(z, torch.tensor([2, 2])))


def test_spectral_norm_bounds_the_top_singular_value():
    torch.manual_seed(0)
    for layer in (sn_linear(64, 32), sn_conv2d(16, 32, 3)):
        with torch.no_grad():
            layer.parametrizations.weight.original.mul_(25.0)  # far from unit norm before SN
        layer.train()
        for _ in range(30):  # power iterations converge over forward passes
            layer(torch.randn(2, 64) if isinstance(layer, torch.nn.Linear) else torch.randn(2, 16, 8, 8))
        layer.eval()
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        sigma = torch.linalg.matrix_norm(w, ord=2).item()
        assert abs(sigma - 1.0) < 1e-3, f"top singular value {sigma:.5f}, expected 1"


def test_self_attention_matches_the_explicit_softmax_form():
    torch.manual_seed(0)
    attn = SelfAttention(16).eval()
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    x = torch.randn(2, 16, 8, 8)
    theta = attn.theta(x).flatten(2)  # (B, C/8, HW)
    phi = torch.nn.functional.max_pool2d(attn.phi(x), 2).flatten(2)
    g = torch.nn.functional.max_pool2d(attn.g(x), 2).flatten(2)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, HW, HW/4), SAGAN: no scaling
    o = (g @ beta.transpose(1, 2)).view(2, 8, 8, 8)
    expected = x + 0.7 * attn.o(o)
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_every_up_block_learns_its_shortcut():
    """BigGAN-PyTorch's GBlock: learnable_sc = in != out or upsample, so every G block has a 1x1 conv."""
    G = Generator(32, ch=8, z_dim=128, hier=False, shared_dim=0, num_classes=10, attn_res=())
    assert all(isinstance(block.shortcut, torch.nn.Conv2d) for block in G.blocks)


def test_without_a_shared_embedding_each_bn_has_its_own_class_embeddings():
    torch.manual_seed(0)
    G = Generator(
        32, ch=8, z_dim=128, hier=False, shared_dim=0, num_classes=10, attn_res=(), init="N02"
    ).eval()
    assert G.shared is None and isinstance(G.blocks[0].bn1.gain, torch.nn.Embedding)
    assert G.blocks[0].bn1.gain.weight.std().item() == pytest.approx(0.02, rel=0.2), "N(0, 0.02) init"
    z = torch.randn(2, 128)
    assert not torch.allclose(G(z, torch.tensor([1, 1])), G(z, torch.tensor([2, 2])))
    with pytest.raises(ConfigError, match="model.biggan.hier=true needs a shared class embedding"):
        Generator(32, ch=8, z_dim=120, hier=True, shared_dim=0, num_classes=10)


@pytest.mark.parametrize("config", ["shared_hier_attn", "cifar"])
def test_biggan_pytorch_weights_map_one_to_one(config):
    """Every tensor of BigGAN-PyTorch's G and D (names and shapes recorded from its BigGAN.py in
    tests/data) has its place in bigtrain's networks with the same shape, and nothing is left over."""
    import json

    from bigtrain.models.biggan import from_biggan_pytorch
    from conftest import REPO

    recorded = json.loads((REPO / "tests" / "data" / "biggan_pytorch_state_dict_keys.json").read_text())[
        "configs"
    ][config]
    kw = recorded["kwargs"]
    attn = tuple(int(a) for a in kw["G_attn"].split("_") if a != "0")
    shared = kw["shared_dim"] if kw["G_shared"] else 0
    G = Generator(kw["resolution"], kw["G_ch"], kw["dim_z"], shared, kw["hier"], attn, kw["n_classes"])
    D = Discriminator(kw["resolution"], kw["D_ch"], attn, kw["n_classes"])
    for net, names in ((G, recorded["G"]), (D, recorded["D"])):
        reference = {k: torch.rand(shape) for k, shape in names.items()}
        result = net.load_state_dict(from_biggan_pytorch(reference), strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result.missing_keys


def test_minibatch_discrimination_by_hand_and_its_invariance_to_batch_order():
    from bigtrain.models.layers import MinibatchDiscrimination

    layer = MinibatchDiscrimination(in_features=2, kernels=1, kernel_dims=1)
    with torch.no_grad():
        layer.T.copy_(torch.tensor([[1.0], [0.0]]))  # M_i = the first feature
    f = torch.tensor([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0]])
    # o(x_0) = e^-1 + e^-3, o(x_1) = e^-1 + e^-2, o(x_2) = e^-3 + e^-2: the other samples only
    e = torch.exp(-torch.tensor([1.0, 2.0, 3.0]))
    want = torch.stack([e[0] + e[2], e[0] + e[1], e[2] + e[1]]).unsqueeze(1)
    out = layer(f)
    assert out.shape == (3, 3) and torch.equal(out[:, :2], f) and torch.allclose(out[:, 2:], want), out
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(16, kernels=10, kernel_dims=4)
    f = torch.randn(8, 16)
    order = torch.randperm(8)
    assert torch.allclose(layer(f)[order], layer(f[order]), atol=1e-6), "not equivariant to batch order"
    two_sets = layer(torch.cat([f, f + 100.0]), parts=2)
    assert torch.allclose(two_sets[:8, 16:], layer(f)[:, 16:], atol=1e-6), "a set saw the other set"


@pytest.mark.parametrize("family", ["biggan", "progan", "stylegan2"])
def test_minibatch_discrimination_joins_every_family_s_d(family):
    from conftest import REPO

    recipe = {
        "biggan": "biggan/digits32.yaml",
        "progan": "progan/digits32.yaml",
        "stylegan2": "stylegan2/digits32.yaml",
    }
    cfg = load_config(REPO / "configs" / recipe[family], ["model.minibatch_kernels=20"])
    _, D = build_models(cfg.model, num_classes=10)
    _, plain = build_models(load_config(REPO / "configs" / recipe[family]).model, num_classes=10)
    extra = sum(p.numel() for p in D.parameters()) - sum(p.numel() for p in plain.parameters())
    width = D.minibatch.T.shape[0]
    assert extra == width * 20 * 5 + 20 * (D.cmap_dim if family == "stylegan2" else 1), (family, extra)
    x, y = torch.randn(4, 3, cfg.model.resolution, cfg.model.resolution), torch.zeros(4, dtype=torch.long)
    assert D(x, y, parts=2).shape == (4,)


RECIPES = {
    "biggan": "biggan/digits32.yaml",
    "progan": "progan/digits32.yaml",
    "stylegan2": "stylegan2/digits32.yaml",
}


@pytest.mark.parametrize("family", RECIPES)
def test_every_family_s_d_declares_its_features_and_an_optional_class_head(family):
    """`all_outputs=True` returns the logits of the plain call, the features its output layer reads
    (before minibatch discrimination: F wide, not F + B) and, with model.aux_classifier, C class logits
    from a linear head of F x C weights and C biases. Off by default: no head, no parameter added."""
    from conftest import REPO

    plain_cfg = load_config(REPO / "configs" / RECIPES[family], ["model.minibatch_kernels=4"])
    cfg = load_config(REPO / "configs" / RECIPES[family], ["model.minibatch_kernels=4", "model.aux_classifier=true",
                                                           "regularize.aux_classifier.weight=1"])  # fmt: skip
    torch.manual_seed(0)
    plain_G, plain = build_models(plain_cfg.model, num_classes=10)
    torch.manual_seed(0)
    G, D = build_models(cfg.model, num_classes=10)
    assert plain.classifier is None and D.classifier is not None
    width = D.minibatch.T.shape[0]  # F: what minibatch discrimination reads
    extra = sum(p.numel() for p in D.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == width * 10 + 10, f"{family}: the head adds {extra} parameters, not {width} x 10 + 10"
    x, y = torch.randn(4, 3, cfg.model.resolution, cfg.model.resolution), torch.tensor([0, 3, 5, 9])
    D.eval(), plain.eval()  # no SN power iteration between the calls compared
    out = D(x, y, parts=2, all_outputs=True)
    assert torch.equal(out.logits, D(x, y, parts=2)), f"{family}: the declared logits are not D's logits"
    shapes = (tuple(out.features.shape), tuple(out.classes.shape))
    assert shapes == ((4, width), (4, 10)), f"{family}: features and class logits {shapes}"
    assert plain(x, y, all_outputs=True).classes is None
    # ProGAN's G takes the label only with the head (AC-GAN, its paper's code's conditional form)
    g_extra = sum(p.numel() for p in G.parameters()) - sum(p.numel() for p in plain_G.parameters())
    assert g_extra == (10 * G.input.weight.shape[0] if family == "progan" else 0), (family, g_extra)


def test_progan_conditional_generator_reads_the_one_hot_label_beside_z():
    """As G_paper with label_size: pixel norm of [z, onehot(y)], so a label changes the image."""
    from bigtrain.models.progan import Generator as ProGenerator

    torch.manual_seed(0)
    G = ProGenerator(8, z_dim=16, fmap_base=32, fmap_max=16, num_classes=10)
    z = torch.randn(2, 16)
    assert G.input.weight.shape[1] == 16 + 10
    a, b = G(z, torch.tensor([1, 1])), G(z, torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-4, "the conditional ProGAN G ignores its label"
    unconditional = ProGenerator(8, z_dim=16, fmap_base=32, fmap_max=16)
    assert unconditional.input.weight.shape[1] == 16, "the paper's G changed"
