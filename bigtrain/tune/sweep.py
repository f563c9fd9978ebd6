"""The sweep file: a base recipe, a search space over dotted config keys, a scheduler, a metric.

    base: configs/biggan/digits32.yaml
    overrides: [train.total_kimg=2, eval.every_kimg=0.5]      # fixed for every trial
    space:
      optim.lr_d: {loguniform: [1.0e-4, 1.0e-3]}
      optim.lr_g: {uniform: [5.0e-5, 2.0e-4]}
      regularize.ortho.strength: {choice: [0.0, 1.0e-4]}
      train.batch: {grid: [16, 32]}                           # every value, x num_trials samples
    num_trials: 4
    scheduler: asha                                          # asha | pbt | fifo
    metric: ""                                               # "": the recipe's first eval metric
    resources: {cpus: 1, gpus: 0, workers: 1}                # workers > 1: a Ray Train job per trial

Everything is checked before Ray starts: an unknown key, or a value the config rejects (both ends
of a range, every choice), fails with the key named.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, _build, flatten, from_dict, read_yaml_mapping, to_dict

SPACE_KINDS = ("choice", "grid", "uniform", "loguniform")
SCHEDULERS = ("asha", "pbt", "fifo")


@dataclass
class Resources:
    cpus: float = 1.0  # per worker
    gpus: float = 0.0  # per worker
    workers: int = 1  # > 1: the trial is a Ray Train TorchTrainer job with this many ddp workers


@dataclass
class AshaSettings:
    grace_period_kimg: float = 0.0  # 0: a quarter of train.total_kimg
    reduction_factor: float = 2.0


@dataclass
class PbtSettings:
    perturbation_interval_kimg: float = 0.0  # 0: every evaluation
    quantile_fraction: float = 0.25


@dataclass
class SweepSpec:
    base: str = ""
    overrides: list[str] = field(default_factory=list)
    space: dict[str, Any] = field(default_factory=dict)
    num_trials: int = 4
    scheduler: str = "asha"
    asha: AshaSettings = field(default_factory=AshaSettings)
    pbt: PbtSettings = field(default_factory=PbtSettings)
    metric: str = ""
    mode: str = "min"
    resources: Resources = field(default_factory=Resources)
    name: str = ""  # "": the sweep file's name
    storage: str = "runs/tune"
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    max_failures: int = 0  # retries of a crashed trial
    seed: int = 0


def _value_text(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: the override parser reads it back exactly


def _candidates(key: str, spec: Any) -> tuple[str, list[Any]]:
    """(kind, the values to check) of one space entry, or a ConfigError naming the key."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise ConfigError(
            f"sweep space {key}: write one of {', '.join(f'{{{k}: ...}}' for k in SPACE_KINDS)}, got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"sweep space {key}: {kind} needs a non-empty list of values")
        return kind, args
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
        raise ConfigError(f"sweep space {key}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = (float(a) for a in args)
    if not low < high:
        raise ConfigError(f"sweep space {key}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"sweep space {key}: loguniform needs low > 0, got {low}")
    return kind, [low, high]


def load_sweep(path: str | Path) -> tuple[SweepSpec, dict[str, Any]]:
    """Read and check a sweep file; returns the spec and the base recipe (with the fixed overrides) as a
    dict. Paths in the recipe are made absolute: trials run in their own working directories."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file")
    spec = _build(SweepSpec, {k: v for k, v in data.items() if k != "space"}, "sweep.")
    spec.space = data.get("space") or {}
    spec.name = spec.name or path.stem
    if not spec.base:
        raise ConfigError(f"sweep file {path} must name a base recipe (base: configs/...yaml)")
    if spec.scheduler not in SCHEDULERS:
        raise ConfigError(f"sweep.scheduler={spec.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"sweep.mode={spec.mode!r} must be min or max")
    if spec.num_trials < 1 or spec.resources.workers < 1:
        raise ConfigError("sweep.num_trials and sweep.resources.workers must be at least 1")
    if not spec.space:
        raise ConfigError(f"sweep file {path} has an empty search space")

    base_path = Path(spec.base)
    if not base_path.is_file() and (path.parent / base_path).is_file():
        base_path = path.parent / base_path
    if not base_path.is_file():
        raise ConfigError(f"sweep base recipe {spec.base} does not exist")
    base_cfg = from_dict(read_yaml_mapping(base_path, "sweep base recipe"), spec.overrides)
    base_cfg.data.path = str(Path(base_cfg.data.path).resolve())
    base_cfg.dist.deepspeed_config = str(Path(base_cfg.dist.deepspeed_config).resolve())
    base = to_dict(base_cfg)
    check_space(spec, base)
    return spec, base


def check_space(spec: SweepSpec, base: dict[str, Any]) -> None:
    known = flatten(to_dict(Config()))
    for key, entry in spec.space.items():
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"sweep space key {key} is not a config key{hint}")
        _, values = _candidates(key, entry)
        for value in values:
            try:
                from_dict(base, [f"{key}={_value_text(value)}"])
            except ConfigError as e:
                raise ConfigError(f"sweep space {key}: the value {value!r} is rejected ({e})") from None


def trial_config(base: dict[str, Any], values: dict[str, Any], extra: list[str] | None = None) -> Config:
    """The base recipe with a trial's sampled values (and bookkeeping overrides) applied."""
    overrides = [f"{k}={_value_text(v)}" for k, v in values.items()] + list(extra or [])
    return from_dict(base, overrides)


def _ray_domain(entry: dict) -> Any:
    from ray import tune

    kind, args = next(iter(entry.items()))
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "uniform":
        return tune.uniform(*args)
    return tune.loguniform(*args)


def to_ray_space(spec: SweepSpec) -> dict[str, Any]:
    return {key: _ray_domain(entry) for key, entry in spec.space.items()}


def perturbation_space(spec: SweepSpec) -> dict[str, Any]:
    """PBT's explore step resamples from the same distributions (grid keys are not mutated)."""
    space = {}
    for key, entry in spec.space.items():
        kind, args = next(iter(entry.items()))
        if kind == "grid":
            continue
        space[key] = list(args) if kind == "choice" else _ray_domain(entry)
    return space
