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

from . import began, biggan, cgan, dcgan, ebgan, progan, sagan, sngan, stylegan2

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass(frozen=True)
class Family:
    section: type  # its config section, `model.<name>`
    build: Callable[..., tuple[nn.Module, nn.Module]]  # (model config, num_classes) -> (G, D)

    @classmethod
    def of(cls, module: ModuleType) -> Family:
        return cls(module.Section, module.build)


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


def build_models(m: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model.name`; `num_classes` <= 1 builds the unconditional variant."""
    return FAMILIES[m.name].build(m, num_classes)
