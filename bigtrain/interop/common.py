"""What every import and export shares: the error type, checked loading, and the run folder written."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

IMPORTED = "imported"  # the checkpoint's name in an imported run folder: OUT/checkpoints/imported


class WeightsError(ValueError):
    """A weights file or folder that bigtrain cannot read, or that does not match the network."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_checked(
    net: nn.Module, tensors: dict[str, torch.Tensor], what: str, optional: tuple[str, ...] = ()
) -> None:
    """Load `tensors` into `net` with every name and shape checked: a missing or extra tensor, or
    another shape, is one sentence naming it. Names ending in one of `optional` (state the reference
    does not keep, such as BatchNorm's num_batches_tracked) may be missing and keep their built value."""
    own = net.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith(optional)]
    extra = [k for k in tensors if k not in own]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{what} has no tensor for {missing[0]}{more}, which the network needs")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(
            f"{what} has a tensor {extra[0]}{more} that the network built from it does not have"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise WeightsError(
                f"{what}: tensor {name} has shape {list(value.shape)}, the network built from it needs "
                f"{list(own[name].shape)}"
            )
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in tensors.items()}})


@dataclass
class Imported:
    """What an import read: the networks' tensors under bigtrain's names and where each setting came from."""

    source: str
    format: str  # stylegan2-ada | stylegan3 | biggan-pytorch | bigtrain-export ...
    settings: dict[str, Any]  # dotted config keys -> values read from the file
    origins: dict[str, str]  # dotted config key -> where in the file its value was read
    G: dict[str, torch.Tensor] | None
    G_ema: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor] | None
    kimg: float = 0.0
    iteration: int = 0
    ada_p: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was read but not used, for the recipe header


def recipe_header(imported: Imported) -> str:
    lines = [
        f"# Imported by `bigtrain import` on {time.strftime('%Y-%m-%d %H:%M:%S')} from",
        f"#   {imported.source}",
        f"# ({imported.format}); nothing in it was executed. Values read from the file:",
    ]
    width = max((len(k) for k in imported.origins), default=0)
    for key, origin in imported.origins.items():
        lines.append(f"#   {key:<{width}} = {imported.settings[key]!r:<12} <- {origin}")
    lines += [f"# {note}" for note in imported.notes]
    lines.append(
        "# Everything else is bigtrain's default (or --recipe's). Sample: bigtrain sample OUT; fine-tune:"
    )
    lines.append("#   bigtrain train RECIPE train.init_from=OUT data.path=NEW_DATA [model.freeze_d=N]")
    return "\n".join(lines) + "\n"


def check_new_folder(out: Path, what: str) -> None:
    """OUT must not exist yet, or be an empty folder: an import or export never mixes with other files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WeightsError(f"{out} exists and is not an empty folder; choose a new folder for the {what}")


@contextlib.contextmanager
def staged_folder(out: Path, what: str):
    """A staging folder beside OUT, renamed to OUT when the block ends without error and removed when
    it does not: OUT appears whole or not at all."""
    staging = out.with_name(f".{out.name}.{what}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_run_folder(out: Path, cfg, imported: Imported, num_classes: int) -> Path:
    """OUT/recipe.yaml and OUT/checkpoints/imported (a weights-only checkpoint with checksums, that
    `latest` names), written in a staging folder and renamed into place: all or nothing."""
    from ..config import config_yaml, to_dict
    from ..train.checkpoint import begin_checkpoint, save_checkpoint

    state = {
        "G": imported.G if imported.G is not None else imported.G_ema,
        "G_ema": imported.G_ema,
        "num_classes": num_classes,
        "images": int(round(imported.kimg * 1000)),
        "iteration": imported.iteration,
        "config": to_dict(cfg),
        "imported": imported.provenance,
    }
    if imported.D is not None:
        state["D"] = imported.D
    if imported.ada_p is not None:
        state["ada_p"] = torch.tensor(float(imported.ada_p))
    with staged_folder(Path(out), "importing") as staging:
        begin_checkpoint(staging, IMPORTED)
        save_checkpoint(staging, IMPORTED, state, to_dict(cfg), keep=1)
        (staging / "recipe.yaml").write_text(recipe_header(imported) + config_yaml(cfg))
    return Path(out)
