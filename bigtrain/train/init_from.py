"""Fine-tuning from existing weights (`train.init_from`): a new run whose G, D and G_ema start from a
checkpoint's, as stylegan2-ada's `--resume` copies a pickle's networks into freshly built ones.

Only the weights are taken (parameters and buffers: BN statistics, spectral norm's vectors, w_avg);
optimizers, kimg, RNG, data position and ADA's p start fresh in the trainer. Every tensor of the new
networks must be in the source with the same shape and the source must have no other. One exception:
when the source was trained with another number of classes, the tensors a network declares as
class-conditioning (`class_tensors` of models/roles.py) that differ are kept as built (with the other
tensors of their module, see `_matched`), named in one warning.
A source without D (an imported generator) leaves D as built.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..checksums import file_digest
from ..config import ConfigError
from .checkpoint import STATE_FILE, CheckpointError, load_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)

KEY = "train.init_from"


def init_networks(
    path: str, networks: dict[str, nn.Module], num_classes: int, model_name: str
) -> dict[str, str]:
    """Copy the weights of checkpoint `path` (a checkpoint folder, its state.pt, or a run folder) into
    `networks` ({"G": G, "D": D, "G_ema": G_ema}, built for this run with `num_classes` classes).
    Returns what the run records of its source: {"path": the checkpoint folder, "sha256": of its state.pt}.
    Raises ConfigError naming the key and the tensor when the networks do not match."""
    if not Path(path).exists():
        raise ConfigError(
            f"{KEY}={path} does not exist (give a checkpoint folder, its {STATE_FILE}, or a run folder)"
        )
    try:
        ckpt = resolve_checkpoint(path)
        state = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise ConfigError(f"{KEY}={path}: {e}") from None
    missing = [name for name in ("G", "G_ema") if state.get(name) is None]
    if missing:
        raise ConfigError(f"{KEY}={path}: {ckpt / STATE_FILE} has no {' or '.join(missing)} weights")
    source_model = state.get("config", {}).get("model", {}).get("name", model_name)
    if source_model != model_name:
        raise ConfigError(
            f"{KEY}={path} holds a {source_model} model and this run builds {model_name} (model.name)"
        )
    source_classes = int(state.get("num_classes", num_classes))
    classes_differ = source_classes != num_classes

    loads, kept_fresh, dropped = {}, [], []
    for name, net in networks.items():
        if state.get(name) is None:
            log.info("%s=%s has no %s weights: %s starts as built", KEY, path, name, name)
            continue
        loads[name], fresh, extra = _matched(path, name, net, state[name], classes_differ)
        kept_fresh += [f"{name}.{k}" for k in fresh]
        dropped += [f"{name}.{k}" for k in extra]
    for name, merged in loads.items():
        networks[name].load_state_dict(merged)
    if kept_fresh or dropped:
        log.warning(
            "%s: the source was trained with %d classes and this run has %d: the class-conditioning "
            "tensors %s start as built%s",
            KEY, source_classes, num_classes, ", ".join(kept_fresh) or "(none)",
            f" (the source's {', '.join(dropped)} are not used)" if dropped else "",
        )  # fmt: skip
    record = {"path": str(ckpt.resolve()), "sha256": file_digest(ckpt / STATE_FILE)}
    log.info(
        "%s: G, G_ema%s from %s (sha256 %s)", KEY, ", D" * ("D" in loads), record["path"], record["sha256"]
    )
    return record


def _matched(
    path: str, name: str, net: nn.Module, source: dict[str, torch.Tensor], classes_differ: bool
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(the state dict to load into `net`, its keys kept as built, the source's keys left unused).

    With `classes_differ`, what a `class_tensors` pattern matches at the start of a key names its group
    (`embed.`: the embedding's weight and spectral norm's vectors): a group with any tensor missing on
    one side or shaped differently is kept as built as a whole; every other tensor must match."""
    own = net.state_dict()
    patterns = [re.compile(p) for p in type(net).class_tensors] if classes_differ else []

    def group(key: str) -> str | None:
        return next((m.group(0) for m in (p.match(key) for p in patterns) if m), None)

    rebuilt = set()
    for key, tensor in own.items():
        theirs = source.get(key)
        if theirs is not None and tuple(theirs.shape) == tuple(tensor.shape):
            continue
        if group(key) is not None:
            rebuilt.add(group(key))
        elif theirs is None:
            raise ConfigError(
                f"{KEY}={path} has no {name}.{key}, which this run's model has (shape {tuple(tensor.shape)})"
            )
        else:
            raise ConfigError(
                f"{KEY}={path}: {name}.{key} has shape {tuple(theirs.shape)} there and {tuple(tensor.shape)} "
                "in this run's model (the model section must build the same network)"
            )
    extra = [key for key in source if key not in own]
    for key in extra:
        if group(key) is None:
            raise ConfigError(
                f"{KEY}={path} has {name}.{key} (shape {tuple(source[key].shape)}), which this run's model lacks"
            )
        rebuilt.add(group(key))
    fresh = [key for key in own if group(key) in rebuilt]
    merged = {key: tensor if key in fresh else source[key] for key, tensor in own.items()}
    return merged, fresh, extra
