"""The families: `model.name` -> its config section (`model.<name>`) and the function building (G, D).

A family is its model file, which defines `Section` (the knobs only it reads, a dataclass; a field's
`metadata={"choices": ...}` is checked at load, its optional `check(key, m)` raises a ConfigError naming
the key) and `build(m, num_classes)`, plus its line here. `m` is the `model` config: the common keys
(name, resolution, z_dim, ...) and every family's section; `num_classes` <= 1 builds the unconditional
variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ConfigError
from . import began, biggan, cgan, dcgan, ebgan, progan, sagan, sngan, stylegan2
from .codes import LatentCodes
from .vbn import use_virtual_batch_norm

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class Family:
    section: type  # its config section, `model.<name>`
    build: Callable[..., tuple[nn.Module, nn.Module]]  # (model config, num_classes[, codes]) -> (G, D)
    # Its build takes InfoGAN's latent codes (models/codes.py): G's z widened, a Q head on D's features
    # (the module's LATENT_CODES = True).
    latent_codes: bool = False

    @classmethod
    def of(cls, module: ModuleType) -> Family:
        return cls(module.Section, module.build, getattr(module, "LATENT_CODES", False))


FAMILIES: dict[str, Family] = {
    "biggan": Family.of(biggan),
    "progan": Family.of(progan),
    "stylegan2": Family.of(stylegan2),
    "dcgan": Family.of(dcgan),
    "sngan": Family.of(sngan),
    "sagan": Family.of(sagan),
    "cgan": Family.of(cgan),
    "ebgan": Family.of(ebgan),
    "began": Family.of(began),
}


def build_models(
    m: ModelConfig, num_classes: int, codes: LatentCodes | None = None
) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model.name`; `num_classes` <= 1 builds the unconditional variant. With `model.vbn`,
    G's BatchNorms are virtual (models/vbn.py), its reference batch drawn after both networks' weights.
    `codes`: InfoGAN's latent codes (regularize.info): G's z takes them after the noise and declares them
    (G.codes), D has a Q head; only families with `latent_codes` take them."""
    family = FAMILIES[m.name]
    if codes is None:
        G, D = family.build(m, num_classes)
    elif not family.latent_codes:
        takes = ", ".join(name for name, f in FAMILIES.items() if f.latent_codes)
        raise ConfigError(f"model.name={m.name} takes no InfoGAN latent codes (regularize.info): {takes} do")
    else:
        G, D = family.build(m, num_classes, codes)
        G.codes = codes
    if getattr(m, "vbn", 0):
        G = use_virtual_batch_norm(G, m, num_classes)
    return G, D
