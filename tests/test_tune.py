"""`bigtrain tune`: real Ray (local, 2 CPUs), real training trials, a real MLflow server."""

import json
import subprocess

import mlflow
import pytest
import torch
import yaml

from bigtrain.config import ConfigError, load_config
from bigtrain.train.loop import Trainer
from bigtrain.tune.sweep import load_sweep, perturbation_space, space_bundles, to_ray_space, trial_config
from conftest import BIGTRAIN, REPO, cli_env
from test_techniques import BIGGAN_TECHNIQUES, TECHNIQUES

DIGITS_SWEEP = REPO / "configs" / "tune" / "biggan_digits.yaml"
TECHNIQUES_SWEEP = REPO / "configs" / "tune" / "techniques_digits.yaml"


def _sweep_file(tmp_path, demo_shards, name="sweep", source=DIGITS_SWEEP, **changes) -> str:
    spec = yaml.safe_load(source.read_text())
    spec["base"] = str(REPO / spec["base"])
    spec["overrides"] = [*spec["overrides"], f"data.path={demo_shards}"]
    spec["storage"] = str(tmp_path / "tune")
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _tune(sweep: str):
    proc = subprocess.run([BIGTRAIN, "tune", sweep, "--num-cpus", "2"], capture_output=True, text=True,
                          timeout=900, env=cli_env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_bad_search_space_fails_before_any_trial_with_the_key_named(tmp_path, demo_shards):
    unknown = _sweep_file(tmp_path, demo_shards, "unknown", space={"optim.lr_dd": {"uniform": [1e-4, 1e-3]}})
    with pytest.raises(ConfigError, match=r"optim\.lr_dd is not a config key \(did you mean optim\.lr_d\?\)"):
        load_sweep(unknown)
    rejected = _sweep_file(tmp_path, demo_shards, "rejected", space={"train.batch": {"choice": [16, 0]}})
    with pytest.raises(ConfigError, match=r"sweep space train\.batch: the value 0 is rejected"):
        load_sweep(rejected)
    negative = _sweep_file(
        tmp_path, demo_shards, "negative", space={"optim.lr_d": {"uniform": [-1e-3, 1e-3]}}
    )
    with pytest.raises(ConfigError, match=r"sweep space optim\.lr_d: the value -0\.001 is rejected"):
        load_sweep(negative)
    proc = subprocess.run(
        [BIGTRAIN, "tune", rejected], capture_output=True, text=True, timeout=120, env=cli_env()
    )
    assert proc.returncode == 2 and "train.batch" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "tune").exists(), (
        "work started before the check"
    )


def test_a_bad_bundle_fails_before_any_trial_with_the_bundle_and_key_named(tmp_path, demo_shards):
    def bundles(**named):
        return {"technique": {"grid": {"baseline": [], **named}}}

    cases = [
        (bundles(lecam=["regularize.lecam.wieght=0.3"]),
         r"sweep space technique: bundle lecam: regularize\.lecam\.wieght is not a config key "
         r"\(did you mean regularize\.lecam\.weight\?\)"),
        (bundles(clip=["loss.name=wgan", "optim.name=sgd"]),
         r"sweep space technique: bundle clip is rejected \(optim\.name='sgd' is not one of adam, rmsprop\)"),
        (bundles(lecam=["regularize.lecam.weight"]),
         r"sweep space technique: bundle lecam: override 'regularize\.lecam\.weight' must look like"),
        (bundles(**{"le cam": []}), r"sweep space technique: bundle le cam: a bundle's name is letters"),
        ({"optim.lr_d": {"choice": [1e-4]}, **bundles(wgan=["loss.name=wgan", "optim.lr_d=5e-5"])},
         r"sweep space: optim\.lr_d is set by both optim\.lr_d and technique \(bundle wgan\)"),
        ({"lr_d": {"uniform": [1e-4, 1e-3]}},
         r"sweep space lr_d is not a config key \(did you mean optim\.lr_d\?\); a plain name takes named bundles"),
    ]  # fmt: skip
    for i, (space, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            load_sweep(_sweep_file(tmp_path, demo_shards, f"bad{i}", space=space))
    proc = subprocess.run([BIGTRAIN, "tune", _sweep_file(tmp_path, demo_shards, "bad0", space=cases[0][0])],
                          capture_output=True, text=True, timeout=120, env=cli_env())  # fmt: skip
    last_line = proc.stderr.splitlines()[-1] if proc.stderr else ""
    assert proc.returncode == 2 and "bundle lecam: regularize.lecam.wieght" in last_line, (
        f"exit {proc.returncode}, last line {last_line!r}"
    )
    assert not (tmp_path / "tune").exists(), "work started before the check"


def test_the_techniques_sweep_holds_every_tested_technique_once_and_a_trial_gets_its_bundle(monkeypatch):
    monkeypatch.chdir(REPO)  # the sweep names its base recipe from the repository root
    spec, base = load_sweep(TECHNIQUES_SWEEP)  # every bundle applied to the base passes validation
    bundles = space_bundles(spec)["technique"]
    expected = {"baseline": [], "diffaugment": ["augment.diffaugment=color,translation,cutout"]}
    expected |= {name: overrides for name, (_, overrides) in {**TECHNIQUES, **BIGGAN_TECHNIQUES}.items()}
    assert bundles == expected, f"bundles {sorted(bundles)} vs tested techniques {sorted(expected)}"
    settings = (*spec.space["technique"], spec.num_trials, spec.scheduler)
    assert settings == ("grid", 1, "fifo"), f"each technique once, to the end: {settings}"

    wgan = trial_config(base, {"technique": "wgan_weight_clip"}, ["train.batch=16"], space_bundles(spec))
    got = (wgan.loss.name, wgan.regularize.weight_clip.value, wgan.optim.name, wgan.optim.lr_d)
    assert got == ("wgan", 0.01, "rmsprop", 5e-5) and wgan.train.batch == 16, (got, wgan.train.batch)
    assert to_ray_space(spec)["technique"] == {"grid_search": list(bundles)}, to_ray_space(spec)
    assert perturbation_space(spec) == {}, "PBT would switch a trial's technique under its checkpoint"


@pytest.mark.slow
def test_asha_sweep_logs_parent_and_children_to_mlflow_and_its_best_recipe_trains(
    tmp_path, demo_shards, mlflow_server
):
    sweep = _sweep_file(tmp_path, demo_shards, "asha")
    spec = yaml.safe_load(open(sweep))
    spec["overrides"].append(f"track.tracking_uri={mlflow_server}")
    spec["overrides"].append("track.experiment=tune-test")
    open(sweep, "w").write(yaml.safe_dump(spec))
    summary = _tune(sweep)
    assert summary["trials"] == 4 and summary["finished"] == 4 and summary["failed"] == 0, summary
    assert summary["stopped_early"] >= 1, f"ASHA stopped no trial early: {summary['trial_results']}"

    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.data.metrics["best_fd_digits"] == pytest.approx(summary["best"]["value"])
    assert parent.data.tags["best_trial"] == summary["best"]["trial_id"]
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["best.yaml"]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4, [c.info.run_name for c in children]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "fd_digits")
        assert len(history) >= 2, (child.info.run_name, [(m.step, m.value) for m in history])
        assert child.data.params["optim.lr_d"] and child.info.run_name.startswith("asha-")

    best = load_config(summary["best_yaml"], [f"train.run_dir={tmp_path / 'best'}", "track.enabled=false",
                                              "train.total_kimg=0.032", "eval.every_kimg=0"])  # fmt: skip
    assert best.optim.lr_d == pytest.approx(summary["best"]["values"]["optim.lr_d"])
    assert Trainer(best).run() == "finished"


@pytest.mark.slow
def test_a_trial_with_two_ray_train_workers_keeps_their_weights_identical(tmp_path, demo_shards):
    sweep = _sweep_file(tmp_path, demo_shards, "two", num_trials=1, scheduler="fifo",
                        resources={"cpus": 0.9, "gpus": 0, "workers": 2},
                        overrides=[*yaml.safe_load(DIGITS_SWEEP.read_text())["overrides"], f"data.path={demo_shards}",
                                   "train.total_kimg=0.08", "eval.every_kimg=0.04", "track.enabled=false"])  # fmt: skip
    summary = _tune(sweep)
    (trial,) = summary["trial_results"]
    assert trial["world_size"] == 2, trial
    assert trial["g_replica_spread"] == 0.0, (
        f"G differs across the two workers: checksum spread {trial['g_replica_spread']}"
    )
    assert trial["reports"] == 3 and trial["kimg"] == pytest.approx(0.08), trial


@pytest.mark.slow
def test_pbt_exploits_from_reported_checkpoints_and_every_trial_finishes(tmp_path, demo_shards):
    sweep = _sweep_file(tmp_path, demo_shards, "pbt", scheduler="pbt",
                        overrides=[*yaml.safe_load(DIGITS_SWEEP.read_text())["overrides"], f"data.path={demo_shards}",
                                   "train.total_kimg=0.32", "eval.every_kimg=0.08", "track.enabled=false"])  # fmt: skip
    proc = subprocess.run([BIGTRAIN, "tune", sweep, "--num-cpus", "2"], capture_output=True, text=True,
                          timeout=900, env=cli_env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["finished"] == 4 and all(
        t["kimg"] == pytest.approx(0.32) for t in summary["trial_results"]
    ), summary
    assert "[Exploit] Cloning trial" in proc.stdout + proc.stderr, "PBT never exploited a checkpoint"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing trial asks for a GPU this machine lacks")
def test_a_crashing_trial_is_reported_and_an_interrupted_sweep_resumes_to_the_end(tmp_path, demo_shards):
    import signal
    import time

    sweep = _sweep_file(tmp_path, demo_shards, "resumed", scheduler="fifo", num_trials=1, max_concurrent_trials=1,
                        space={"train.device": {"grid": ["cpu", "cuda", "cpu"]}},
                        overrides=[*yaml.safe_load(DIGITS_SWEEP.read_text())["overrides"], f"data.path={demo_shards}",
                                   "train.total_kimg=0.064", "eval.every_kimg=0.032", "track.enabled=false"])  # fmt: skip
    first = subprocess.Popen([BIGTRAIN, "tune", sweep, "--num-cpus", "2"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=cli_env())  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and "completed after" not in (line := first.stdout.readline()):
        assert line or first.poll() is None, "the sweep ended before its first trial completed"
    first.send_signal(signal.SIGINT)  # Tune saves the experiment state and stops
    first.communicate(timeout=120)

    proc = subprocess.run([BIGTRAIN, "tune", sweep, "--num-cpus", "2", "--resume"], capture_output=True, text=True,
                          timeout=900, env=cli_env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # The trial that asks for CUDA on this CPU machine fails and is reported; the others finish.
    assert summary["trials"] == 3 and summary["finished"] == 2 and summary["failed"] == 1, summary
    assert "no CUDA GPU" in summary["failures"][0]["error"], summary["failures"]
    assert all(t["kimg"] == pytest.approx(0.064) for t in summary["trial_results"]), summary["trial_results"]


@pytest.mark.slow
def test_a_technique_sweep_runs_each_bundle_once_as_an_mlflow_child_that_trained_with_it(
    tmp_path, demo_shards, mlflow_server
):
    recipe = yaml.safe_load(TECHNIQUES_SWEEP.read_text())
    chosen = ["baseline", "instance_noise", "wgan_weight_clip"]
    sweep = _sweep_file(tmp_path, demo_shards, "techniques", source=TECHNIQUES_SWEEP,
                        space={"technique": {"grid": {k: recipe["space"]["technique"]["grid"][k] for k in chosen}}},
                        overrides=[*recipe["overrides"], f"data.path={demo_shards}", "train.total_kimg=0.064",
                                   "eval.every_kimg=0.032", "eval.num_samples=200", "train.batch=16",
                                   "data.num_workers=1", "train.log_every=2", f"track.tracking_uri={mlflow_server}",
                                   "track.experiment=techniques-test"])  # fmt: skip
    summary = _tune(sweep)
    assert (summary["trials"], summary["finished"]) == (3, 3), summary
    assigned = {t["trial_id"]: t["values"]["technique"] for t in summary["trial_results"]}
    assert sorted(assigned.values()) == sorted(chosen), f"each technique once: {assigned}"

    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.run_name == "sweep-techniques" and parent.info.status == "FINISHED", parent.info
    assert all(name in parent.data.params["space.technique"] for name in chosen), parent.data.params
    assert parent.data.tags["best_trial"] in assigned, (parent.data.tags["best_trial"], assigned)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 3, [c.info.run_name for c in children]
    for child in children:
        technique = child.data.params["technique"]
        trial_id = child.info.run_name.rsplit("-", 1)[-1]
        assert assigned.get(trial_id) == technique, (
            f"{child.info.run_name}: param {technique}, Tune {assigned}"
        )
        assert child.info.run_name == f"techniques-{technique}-{trial_id}", child.info.run_name
        assert len(client.get_metric_history(child.info.run_id, "fd_digits")) >= 1, child.info.run_name
        # What the trainer did, not only what it was told: its optimizer's rate and D's input noise.
        params = child.data.params
        lr_d = sorted({m.value for m in client.get_metric_history(child.info.run_id, "lr_d")})
        noise = [m.value for m in client.get_metric_history(child.info.run_id, "instance_noise_sigma")]
        if technique == "wgan_weight_clip":
            assert (params["loss.name"], params["optim.name"]) == ("wgan", "rmsprop"), params
            assert lr_d == pytest.approx([5e-5]), f"{technique}: D's learning rate {lr_d}, not 5e-5"
        else:
            assert (params["loss.name"], params["optim.name"]) == ("hinge", "adam"), (technique, params)
            assert lr_d == pytest.approx([2e-4]), f"{technique}: D's learning rate {lr_d}, not 2e-4"
        if technique == "instance_noise":
            assert noise and all(0 < s <= 0.1 for s in noise), (
                f"instance noise sigma {noise}, not in (0, 0.1]"
            )
        else:
            assert not noise, f"{technique} logged instance noise sigma {noise}"
