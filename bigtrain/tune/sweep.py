"""The sweep file: a base recipe, a search space over dotted config keys, a scheduler, a metric.

    base: configs/biggan/digits32.yaml
    overrides: [train.total_kimg=2, eval.every_kimg=0.5]      # fixed for every trial
    space:
      optim.lr_d: {loguniform: [1.0e-4, 1.0e-3]}
      optim.lr_g: {uniform: [5.0e-5, 2.0e-4]}
      regularize.ortho.strength: {choice: [0.0, 1.0e-4]}
      train.batch: {grid: [16, 32]}                           # every value, x num_trials samples
      technique:                                              # a plain name: named override bundles
        grid:
          baseline: []
          lecam: [regularize.lecam.weight=0.3]
          wgan_clip: [loss.name=wgan, regularize.weight_clip.value=0.01, optim.name=rmsprop]
    num_trials: 4
    scheduler: asha                                          # asha | pbt | fifo
    metric: ""                                               # "": the recipe's first eval metric
    resources: {cpus: 1, gpus: 0, workers: 1}                # workers > 1: a Ray Train job per trial

A space key without a dot is not a config key but the name of a choice or grid among *bundles*:
named lists of `section.key=value` overrides applied together, for a technique that needs several
keys set at once. A trial's bundle name is its value under that name (in Tune's config, the summary,
the MLflow child run's params and its run name); its overrides are applied to the base recipe.

Everything is checked before Ray starts: an unknown key, or a value the config rejects (both ends
of a range, every choice, every bundle applied to the base), fails with the key (and bundle) named;
so does a config key set by two entries of the space, where one would silently win.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    Config,
    ConfigError,
    _build,
    flatten,
    from_dict,
    parse_override,
    read_yaml_mapping,
    to_dict,
)

SPACE_KINDS = ("choice", "grid", "uniform", "loguniform")
SCHEDULERS = ("asha", "pbt", "fifo")
BUNDLE_KINDS = ("choice", "grid")
BUNDLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # it goes into MLflow run names and Ray trial folders


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


def is_bundle_entry(key: str) -> bool:
    """A space key without a dot names a choice or grid among override bundles, not a config key."""
    return "." not in key


def space_bundles(spec: SweepSpec) -> dict[str, dict[str, list[str]]]:
    """{space name: {bundle name: its overrides}} for the space's bundle entries."""
    return {key: next(iter(entry.values())) for key, entry in spec.space.items() if is_bundle_entry(key)}


def _bundle_keys(name: str, spec: Any, known: dict[str, Any]) -> dict[str, set[str]]:
    """{bundle: the config keys it sets} of one bundle entry, or a ConfigError naming entry and bundle."""
    form = "{grid: {bundle: [section.key=value, ...], ...}} (or choice)"
    kind, bundles = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
    if kind not in BUNDLE_KINDS or not isinstance(bundles, dict) or not bundles:
        by_last_part = {k.rsplit(".", 1)[-1]: k for k in known}  # `lr_d` was probably meant as optim.lr_d
        near = difflib.get_close_matches(name, list(by_last_part), n=1)
        hint = f" (did you mean {by_last_part[near[0]]}?)" if near else ""
        raise ConfigError(f"sweep space {name} is not a config key{hint}; a plain name takes named bundles of "
                          f"overrides, {form}, got {spec!r}")  # fmt: skip
    keys = {}
    for bundle, overrides in bundles.items():
        where = f"sweep space {name}: bundle {bundle}"
        if not isinstance(bundle, str) or not BUNDLE_NAME.fullmatch(bundle):
            raise ConfigError(f"{where}: a bundle's name is letters, digits, _ . or - (it names trials)")
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{where} needs a list of section.key=value overrides, got {overrides!r}")
        keys[bundle] = set()
        for text in overrides:
            try:
                key, _ = parse_override(text)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"{where}: {key} is not a config key{hint}")
            keys[bundle].add(key)
    return keys


def check_space(spec: SweepSpec, base: dict[str, Any]) -> None:
    known = flatten(to_dict(Config()))
    setters: dict[str, tuple[str, str]] = {}  # config key -> (the space entry that sets it, as told)

    def claim(config_key: str, entry: str, told: str) -> None:
        first, first_told = setters.setdefault(config_key, (entry, told))
        if first != entry:
            raise ConfigError(
                f"sweep space: {config_key} is set by both {first_told} and {told} (one would silently win)"
            )

    for key, entry in spec.space.items():
        if is_bundle_entry(key):
            for bundle, keys in _bundle_keys(key, entry, known).items():
                for config_key in keys:
                    claim(config_key, key, f"{key} (bundle {bundle})")
                overrides = entry[next(iter(entry))][bundle]
                try:
                    from_dict(base, overrides)
                except ConfigError as e:
                    raise ConfigError(f"sweep space {key}: bundle {bundle} is rejected ({e})") from None
            continue
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"sweep space key {key} is not a config key{hint}")
        claim(key, key, key)
        _, values = _candidates(key, entry)
        for value in values:
            try:
                from_dict(base, [f"{key}={_value_text(value)}"])
            except ConfigError as e:
                raise ConfigError(f"sweep space {key}: the value {value!r} is rejected ({e})") from None


def trial_overrides(values: dict[str, Any], bundles: dict[str, dict[str, list[str]]]) -> list[str]:
    """A trial's sampled values as overrides: a bundle entry's value (a bundle name) becomes its list."""
    overrides = []
    for key, value in values.items():
        overrides += bundles[key][value] if key in bundles else [f"{key}={_value_text(value)}"]
    return overrides


def trial_config(
    base: dict[str, Any],
    values: dict[str, Any],
    extra: list[str] | None = None,
    bundles: dict[str, dict[str, list[str]]] | None = None,
) -> Config:
    """The base recipe with a trial's sampled values (bundles expanded) and bookkeeping overrides applied."""
    return from_dict(base, trial_overrides(values, bundles or {}) + list(extra or []))


def _ray_domain(entry: dict) -> Any:
    from ray import tune

    kind, args = next(iter(entry.items()))
    args = list(args)  # a bundle entry's mapping: its bundle names are the values
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
    """PBT's explore step resamples from the same distributions. Grid keys are not mutated, nor are
    bundles: one can change the networks or the objective's state, which an exploited checkpoint lacks."""
    space = {}
    for key, entry in spec.space.items():
        kind, args = next(iter(entry.items()))
        if kind == "grid" or is_bundle_entry(key):
            continue
        space[key] = list(args) if kind == "choice" else _ray_domain(entry)
    return space
