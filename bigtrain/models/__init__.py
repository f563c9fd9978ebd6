"""Model registry: `model.name` -> a function building (G, D) from the config."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import ModelConfig
from . import biggan


def _build_biggan(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    g = biggan.Generator(
        m.resolution, m.ch, m.z_dim, m.shared_dim, m.hier, tuple(m.attn_res), num_classes, m.bn_eps, m.sn_eps
    )
    d = biggan.Discriminator(m.resolution, m.d_ch, tuple(m.attn_res), num_classes, m.sn_eps)
    return g, d


REGISTRY: dict[str, Callable[[ModelConfig, int], tuple[nn.Module, nn.Module]]] = {"biggan": _build_biggan}


def build_models(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model.name`; `num_classes` <= 1 builds the unconditional variant."""
    return REGISTRY[m.name](m, num_classes)
