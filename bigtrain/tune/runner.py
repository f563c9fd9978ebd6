"""`bigtrain tune`: a Ray Tune sweep in which every trial is a real bigtrain training run.

- One worker per trial: a function trainable runs the Trainer in the trial's actor.
- Several workers: the trial launches a Ray Train `TorchTrainer` (ddp on gloo or NCCL); rank 0's
  metrics reach Tune through `TuneReportCallback`.
- Every evaluation reports the trial's metrics (plus kimg) to Tune, so ASHA stops poor trials early and
  PBT exploits from the checkpoint reported with them.
- MLflow: one parent run per sweep; each trial's training run is its child (tag mlflow.parentRunId).
  At the end the parent holds the best trial, its values and `best.yaml`, a ready-to-run recipe.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, config_yaml
from ..data.manifest import load_manifest
from ..eval.metrics import logged_names, parse_metric
from ..track import open_experiment
from .sweep import SweepSpec, load_sweep, perturbation_space, space_bundles, to_ray_space, trial_config

log = logging.getLogger(__name__)

REPORT_KEYS_SKIPPED = ("eval_seconds",)


# ----------------------------------------------------------------------------- inside a trial


def _run_trainer(config: dict[str, Any], run_dir: Path, report) -> None:
    """Train one trial in this process; `report(metrics, checkpoint_dir_or_None)` after each evaluation."""
    from ..train.loop import Trainer

    values, extra, bundles = config["values"], config["extra"], config["bundles"]
    cfg = trial_config(
        config["base"],
        values,
        [*extra, f"train.run_dir={run_dir}", f"track.run_name={config['trial_name']}"],
        bundles,
    )
    chosen_bundles = {key: values[key] for key in bundles}  # MLflow params, so the UI can group by them
    resume = (run_dir / "checkpoints" / "latest").is_file()  # restored or exploited
    trainer = Trainer(cfg, resume=resume, run_params=chosen_bundles)
    wants_checkpoints = config["scheduler"] == "pbt"

    def on_evaluate(t: Trainer, metrics: dict[str, float]) -> None:
        ckpt = t.save() if wants_checkpoints else None
        spread = _replica_spread(t)
        clean = {k: v for k, v in metrics.items() if k not in REPORT_KEYS_SKIPPED}
        report({**clean, "kimg": t.kimg, "world_size": t.world_size, "g_replica_spread": spread}, ckpt)

    trainer.on_evaluate.append(on_evaluate)
    trainer.run()


def _trial_name(config: dict[str, Any], trial_id: str) -> str:
    """<sweep>-<bundle names>-<trial id>: the MLflow child run's name (sorting by it groups a technique)."""
    return "-".join([config["sweep"], *(str(config["values"][key]) for key in config["bundles"]), trial_id])


def _replica_spread(trainer) -> float:
    """max - min over ranks of a float64 checksum of G: 0 when the replicas hold the same weights."""
    total = float(sum(p.detach().double().sum() for p in trainer.G.parameters()))
    values = trainer.backend.all_gather_object(total)
    return max(values) - min(values)


def _restore_into(run_dir: Path, checkpoint) -> None:
    """PBT exploit (or a restored trial): the reported checkpoint becomes this trial's only one; its own
    earlier checkpoints belong to the branch that was replaced."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        root = run_dir / "checkpoints"
        if root.is_dir():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        name = Path(folder).name
        shutil.copytree(folder, root / name)
        (root / "latest").write_text(name + "\n")


def single_worker_trial(config: dict[str, Any]) -> None:
    from ray import tune

    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    _restore_into(run_dir, tune.get_checkpoint())
    config = {**config, "trial_name": _trial_name(config, tune.get_context().get_trial_id())}

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt)) if ckpt else None
        tune.report(metrics, checkpoint=checkpoint)

    _run_trainer(config, run_dir, report)


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ddp environment from Ray's context, then the same Trainer."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ.update(
        RANK=str(ctx.get_world_rank()),
        WORLD_SIZE=str(ctx.get_world_size()),
        LOCAL_RANK=str(ctx.get_local_rank()),
    )

    def report(metrics: dict, ckpt: Path | None) -> None:
        checkpoint = (
            ray.train.Checkpoint.from_directory(str(ckpt)) if ckpt and ctx.get_world_rank() == 0 else None
        )
        ray.train.report(metrics, checkpoint=checkpoint)  # every worker reports; Tune sees rank 0's

    _run_trainer(config, Path(config["run_dir"]), report)


def multi_worker_trial(config: dict[str, Any]) -> None:
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_dir = Path(tune.get_context().get_trial_dir())
    res = config["resources"]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            **config,
            "run_dir": str(trial_dir / "run"),
            "trial_name": _trial_name(config, tune.get_context().get_trial_id()),
        },
        torch_config=TorchConfig(backend="nccl" if res["gpus"] > 0 else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=res["workers"],
            use_gpu=res["gpus"] > 0,
            resources_per_worker={"CPU": res["cpus"], **({"GPU": res["gpus"]} if res["gpus"] > 0 else {})},
        ),
        run_config=RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=str(trial_dir / "ray_train"),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


# ----------------------------------------------------------------------------- the sweep


class SweepTracker:
    """The sweep's MLflow parent run (created before the trials so they can nest under it)."""

    def __init__(self, base: dict[str, Any], spec: SweepSpec, sweep_dir: Path, parent_run_id: str = ""):
        track = base["track"]
        self.client, self.uri, experiment_id = open_experiment(
            track["tracking_uri"], track["experiment"], sweep_dir
        )
        if parent_run_id:
            self.run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=f"sweep-{spec.name}", tags={"bigtrain.sweep": spec.name}
            )
            self.run_id = run.info.run_id
            params = {"sweep.base": spec.base, "sweep.scheduler": spec.scheduler, "sweep.num_trials": spec.num_trials,
                      "sweep.metric": spec.metric, "sweep.mode": spec.mode,
                      **{f"space.{k}": str(v) for k, v in spec.space.items()}}  # fmt: skip
            for k, v in params.items():
                self.client.log_param(self.run_id, k, str(v)[:6000])

    def finish(self, best: dict[str, Any] | None, best_yaml: Path | None, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            self.client.log_metric(self.run_id, k, float(v))
        if best:
            self.client.set_tag(self.run_id, "best_trial", best["trial_id"])
            self.client.log_metric(self.run_id, f"best_{best['metric']}", best["value"])
            for k, v in best["values"].items():
                self.client.log_param(self.run_id, f"best.{k}", str(v))
        if best_yaml:
            self.client.log_artifact(self.run_id, str(best_yaml))
        self.client.set_terminated(self.run_id, "FINISHED" if best else "FAILED")


def default_metric(base: dict[str, Any]) -> str:
    """The logged name of the recipe's first eval metric (fd -> fd_<dataset>)."""
    metrics = base["eval"]["metrics"]
    if not metrics or base["eval"]["every_kimg"] <= 0:
        raise ConfigError(
            "the sweep's base recipe must evaluate (eval.every_kimg > 0 and eval.metrics) to be tuned"
        )
    return logged_names(parse_metric(metrics[0]), load_manifest(base["data"]["path"]).name)[0]


def run_sweep(
    sweep_file: str | Path, address: str | None = None, resume: bool = False, num_cpus: int | None = None
) -> dict:
    """Run (or resume) a sweep; returns a summary with the best trial and the best recipe's path."""
    spec, base = load_sweep(sweep_file)
    metric = spec.metric or default_metric(base)
    sweep_dir = (Path(spec.storage) / spec.name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)

    import ray
    from ray import tune

    parent_file = sweep_dir / "mlflow_parent_run_id"
    tracker = None
    if base["track"]["enabled"]:
        previous = parent_file.read_text().strip() if resume and parent_file.is_file() else ""
        tracker = SweepTracker(base, spec, sweep_dir, previous)
        parent_file.write_text(tracker.run_id + "\n")
    extra = ["track.parent_run_id=" + (tracker.run_id if tracker else "")]
    if tracker:
        extra.append(f"track.tracking_uri={tracker.uri}")

    if not ray.is_initialized():
        init = {"address": address} if address else {"num_cpus": num_cpus, "object_store_memory": 256 * 2**20}
        ray.init(**init, include_dashboard=False, log_to_driver=False)
    res = spec.resources
    fixed = {"base": base, "extra": extra, "bundles": space_bundles(spec), "scheduler": spec.scheduler,
             "sweep": spec.name, "resources": {"cpus": res.cpus, "gpus": res.gpus, "workers": res.workers}}  # fmt: skip
    if res.workers > 1:
        # The trial's own actor only drives the Train job (a sliver of a CPU); its workers hold the resources.
        trainable = tune.with_resources(multi_worker_trial, {"cpu": 0.01})
    else:
        trainable = tune.with_resources(single_worker_trial, {"cpu": res.cpus, "gpu": res.gpus})
    param_space = {**fixed, "values": to_ray_space(spec)}
    scheduler = _scheduler(spec, base, metric)
    run_config = tune.RunConfig(
        name=spec.name,
        storage_path=str(sweep_dir.parent),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        verbose=1,
    )
    experiment_dir = sweep_dir.parent / spec.name
    started = time.time()
    if resume and tune.Tuner.can_restore(str(experiment_dir)):
        tuner = tune.Tuner.restore(
            str(experiment_dir), trainable, resume_errored=False, restart_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                num_samples=spec.num_trials,
                scheduler=scheduler,
                max_concurrent_trials=spec.max_concurrent_trials or None,
                search_alg=_seeded_search(spec),
                reuse_actors=res.workers
                == 1,  # a new trial skips the imports (torch, bigtrain) of a fresh actor
            ),
            run_config=run_config,
        )
    results = tuner.fit()
    return _summarize(results, spec, base, metric, sweep_dir, tracker, time.time() - started)


def _seeded_search(spec: SweepSpec):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.seed)


def _scheduler(spec: SweepSpec, base: dict[str, Any], metric: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    total = float(base["train"]["total_kimg"])
    if spec.scheduler == "asha":
        return ASHAScheduler(
            time_attr="kimg", metric=metric, mode=spec.mode, max_t=total,
            grace_period=spec.asha.grace_period_kimg or total / 4, reduction_factor=spec.asha.reduction_factor,
        )  # fmt: skip
    if spec.scheduler == "pbt":
        interval = spec.pbt.perturbation_interval_kimg or float(base["eval"]["every_kimg"])
        return PopulationBasedTraining(
            time_attr="kimg", metric=metric, mode=spec.mode, perturbation_interval=interval,
            hyperparam_mutations={"values": perturbation_space(spec)}, quantile_fraction=spec.pbt.quantile_fraction,
        )  # fmt: skip
    return FIFOScheduler()


def _summarize(results, spec: SweepSpec, base, metric: str, sweep_dir: Path, tracker, seconds: float) -> dict:
    trials, failed = [], []
    for result in results:
        trial_id = Path(result.path).name if result.path else "?"
        if result.error is not None:
            lines = [line for line in str(result.error).splitlines() if line.strip()]
            failed.append(
                {"trial": trial_id, "error": (lines[-1] if lines else repr(result.error))[:300]}
            )  # the exception
            log.warning("trial %s failed: %s", trial_id, failed[-1]["error"])
            continue
        history = result.metrics_dataframe
        values = result.config["values"]
        if history is None or metric not in history:
            failed.append({"trial": trial_id, "error": f"reported no {metric}"})
            continue
        final = float(history[metric].iloc[-1])
        trials.append({"trial_id": result.metrics.get("trial_id", trial_id), "values": values, "value": final,
                       "kimg": float(history["kimg"].iloc[-1]), "reports": len(history),
                       "world_size": int(history["world_size"].iloc[-1]),
                       "g_replica_spread": float(history["g_replica_spread"].max())})  # fmt: skip
    best = None
    best_yaml = None
    if trials:
        # Among the trials that trained longest: a trial ASHA stopped early is not judged by an early value.
        furthest = max(t["kimg"] for t in trials)
        pick = min if spec.mode == "min" else max
        chosen = pick([t for t in trials if t["kimg"] == furthest], key=lambda t: t["value"])
        best = {**chosen, "metric": metric}
        cfg = trial_config(
            base,
            chosen["values"],
            [f"train.run_dir=runs/{spec.name}-best", "track.parent_run_id="],
            space_bundles(spec),
        )
        best_yaml = sweep_dir / "best.yaml"
        header = f"# best of sweep {spec.name}: {metric} = {chosen['value']:.5g} at {chosen['kimg']:g} kimg\n"
        best_yaml.write_text(header + config_yaml(cfg))
    total_kimg = float(base["train"]["total_kimg"])
    summary = {
        "trials": len(trials) + len(failed),
        "finished": len(trials),
        "failed": len(failed),
        "stopped_early": sum(t["kimg"] < total_kimg for t in trials),
        "seconds": seconds,
    }
    if tracker is not None:
        tracker.finish(best, best_yaml, summary)
    return {**summary, "best": best, "best_yaml": str(best_yaml) if best_yaml else None, "failures": failed,
            "trial_results": trials, "mlflow_parent_run_id": tracker.run_id if tracker else None,
            "tracking_uri": tracker.uri if tracker else None}  # fmt: skip
