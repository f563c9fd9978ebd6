"""Model registry: `model.name` -> a function building (G, D) from the config."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import ModelConfig
from . import biggan, progan, stylegan2


def _build_biggan(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    g = biggan.Generator(
        m.resolution, m.ch, m.z_dim, m.shared_dim, m.hier, tuple(m.attn_res), num_classes, m.bn_eps, m.sn_eps,
        m.init,
    )  # fmt: skip
    d = biggan.Discriminator(
        m.resolution, m.d_ch, tuple(m.attn_res), num_classes, m.sn_eps, m.init, **_d_heads(m, num_classes)
    )
    return g, d


def _d_heads(m: ModelConfig, num_classes: int) -> dict[str, int]:
    """What every family's D may add before or beside its output layer: minibatch discrimination's
    kernels B and their dimension C (0 kernels: off), and AC-GAN's auxiliary classifier over the
    dataset's classes (0: none)."""
    return {
        "minibatch_kernels": m.minibatch_kernels,
        "minibatch_kernel_dims": m.minibatch_kernel_dims,
        "aux_classes": _aux_classes(m, num_classes),
    }


def _aux_classes(m: ModelConfig, num_classes: int) -> int:
    """The classes of the auxiliary classifier: none without the head or without classes to tell apart
    (the objective then refuses regularize.aux_classifier, naming the keys)."""
    return num_classes if m.aux_classifier and num_classes > 1 else 0


def _build_progan(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Unconditional, as in the paper: class labels are ignored. With the auxiliary classifier, G takes
    the label as the paper's code does for AC-GAN (its only conditional form)."""
    g = progan.Generator(m.resolution, m.z_dim, m.fmap_base, m.fmap_max, _aux_classes(m, num_classes))
    return g, progan.Discriminator(m.resolution, m.fmap_base, m.fmap_max, **_d_heads(m, num_classes))


def _build_stylegan2(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Conditional when the data has classes (the label joins z in the mapping network; D projects)."""
    classes = num_classes if num_classes > 1 else 0
    g = stylegan2.Generator(
        m.resolution, m.z_dim, m.w_dim, classes, m.fmap_base, m.fmap_max, m.mapping_layers, m.conv_clamp
    )
    d = stylegan2.Discriminator(
        m.resolution, classes, m.fmap_base, m.fmap_max, m.mbstd_group,
        architecture=m.d_architecture, conv_clamp=m.conv_clamp, **_d_heads(m, classes),
    )  # fmt: skip
    return g, d


REGISTRY: dict[str, Callable[[ModelConfig, int], tuple[nn.Module, nn.Module]]] = {
    "biggan": _build_biggan,
    "progan": _build_progan,
    "stylegan2": _build_stylegan2,
}


def build_models(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model.name`; `num_classes` <= 1 builds the unconditional variant."""
    return REGISTRY[m.name](m, num_classes)
