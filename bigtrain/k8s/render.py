"""Kubernetes manifests for training and sweeps, rendered from a recipe with the values filled in.

Kinds:
  pytorchjob  Kubeflow training-operator v1 PyTorchJob: N worker pods running launch/torchrun.sh with a
              c10d rendezvous on worker 0's Service, an elastic policy and restarts
  job         the same without an operator: an Indexed Job plus a headless Service for the rendezvous
  rayjob      a KubeRay RayJob whose entrypoint is `bigtrain tune` (head plus N GPU workers)
  mlflow      the tracking server: Deployment, Service and PersistentVolumeClaim (sqlite or Postgres)
  storage     the two ReadWriteMany claims the jobs mount: shards (/data) and runs (/runs)

Every pod: the same image and a ConfigMap holding the resolved recipe; non-root, no privilege
escalation; /dev/shm as a memory-backed emptyDir (NCCL, loader workers); GPU requests; a grace period
longer than the SIGTERM checkpoint; MLFLOW_TRACKING_URI pointing at the MLflow Service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, config_yaml, load_config, read_yaml_mapping, validate
from ..data.remote import is_url

KINDS = ("pytorchjob", "job", "rayjob", "mlflow", "storage")
RDZV_PORT = 29400
MLFLOW_PORT = 5000
APP_DIR = "/opt/bigtrain"  # where the Dockerfile puts the repository (launch/, configs/)
CONFIG_DIR = "/etc/bigtrain"
USER_ID = 1000


@dataclass
class RenderOptions:
    kind: str
    config: str
    image: str = ""
    nodes: int = 1
    gpus_per_node: int = 8
    name: str = ""
    namespace: str = "default"
    overrides: list[str] = field(default_factory=list)
    data_pvc: str = "bigtrain-data"
    runs_pvc: str = "bigtrain-runs"
    data_size: str = "1Ti"
    runs_size: str = "500Gi"
    storage_class: str = ""
    cpus_per_gpu: int = 8
    memory_per_gpu_gi: int = 64
    shm_gi: int = 32
    checkpoint_seconds: int = 300  # time a SIGTERM checkpoint may take: the grace period exceeds it
    max_restarts: int = 3
    mlflow_name: str = "bigtrain-mlflow"
    mlflow_backend: str = "sqlite"  # sqlite (on the PVC) | postgres (URI from a Secret)
    mlflow_secret: str = "bigtrain-mlflow-postgres"  # Secret with key `uri` (postgresql://...)
    data_url: str = ""  # shards streamed from a URL (s3://, gs://, https://): no data claim is mounted
    store_secret: str = ""  # Secret whose keys become the pods' environment (AWS_ACCESS_KEY_ID, ...)
    data_on_claim: bool = True  # set by check(): whether the shards are read from the data claim
    gpu: str = ""  # a GPU kind (h100, h200, a100): plan the job's per-GPU memory and refuse what cannot fit
    force: bool = False  # render a job the plan says cannot fit
    plan: str = ""  # set by check(): the plan's figures (JSON), recorded in an annotation


def _name_ok(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?", name))


def check(o: RenderOptions) -> str:
    """Refuse impossible values before anything is printed; returns the text that goes into the
    ConfigMap (the resolved recipe, or the sweep file; empty for kinds without one)."""
    if o.kind not in KINDS:
        raise ConfigError(f"--kind {o.kind!r} is not one of {', '.join(KINDS)}")
    if o.nodes < 1:
        raise ConfigError(f"--nodes {o.nodes} must be at least 1")
    if o.gpus_per_node < 0:
        raise ConfigError(f"--gpus-per-node {o.gpus_per_node} must be >= 0 (0: CPU pods)")
    if o.kind not in ("storage",) and not o.image:
        raise ConfigError("--image is required: the container image every pod runs (see the Dockerfile)")
    if o.kind in ("job", "pytorchjob", "rayjob") and not o.config:
        raise ConfigError(f"--config is required for --kind {o.kind} (a recipe, or a sweep file for rayjob)")
    if o.checkpoint_seconds < 1:
        raise ConfigError(f"--checkpoint-seconds {o.checkpoint_seconds} must be at least 1")
    if o.data_url and not is_url(o.data_url):
        raise ConfigError(f"--data-url {o.data_url!r} must be a URL (s3://, gs://, http(s)://)")
    if o.store_secret and not _name_ok(o.store_secret):
        raise ConfigError(f"--store-secret {o.store_secret!r} must be the name of a Secret (a DNS label)")
    if o.mlflow_backend not in ("sqlite", "postgres"):
        raise ConfigError(f"--mlflow-backend {o.mlflow_backend!r} must be sqlite or postgres")
    if not _name_ok(o.name):
        raise ConfigError(
            f"--name {o.name!r} must be a DNS label: lower-case letters, digits and '-', at most 52"
        )
    if o.kind == "rayjob":
        return _check_sweep(o)
    if o.kind in ("job", "pytorchjob"):
        cfg = load_config(o.config, [*o.overrides, f"train.run_dir=/runs/{o.name}"])
        if o.data_url:
            cfg.data.path = o.data_url
        o.data_on_claim = not is_url(cfg.data.path)
        if o.data_on_claim and not Path(cfg.data.path).is_absolute():  # shards on the claim, at /data
            cfg.data.path = f"/data/{Path(cfg.data.path).name}"
        world = o.nodes * max(o.gpus_per_node, 1)
        try:
            validate(cfg, world_size=world)
        except ConfigError as e:
            raise ConfigError(
                f"{o.nodes} nodes x {max(o.gpus_per_node, 1)} processes = world size {world}: {e}"
            ) from None
        if cfg.train.device == "cuda" and o.gpus_per_node == 0:
            raise ConfigError("the recipe sets train.device=cuda but --gpus-per-node is 0")
        if o.gpu:
            _check_plan(o, cfg, world)
        return config_yaml(cfg)
    return ""


def _check_plan(o: RenderOptions, cfg, world: int) -> None:
    """The plan of one rank (bigtrain plan): a per-GPU batch that cannot fit is refused unless --force."""
    import json

    from ..plan import make_plan

    p = make_plan(cfg, o.gpu, world)
    gib = 2**30
    o.plan = json.dumps({"gpu": p.gpu, "micro_batch": p.micro_batch, "accum": p.accum,
                         "predicted_gib": round(p.predicted / gib, 2), "usable_gib": round(p.usable / gib, 2),
                         "fits": p.fits, "s_per_iter": round(p.s_per_iter, 3), "img_per_s": round(p.img_per_s, 1),
                         "efficiency": p.efficiency})  # fmt: skip
    if not p.fits and not o.force:
        fit = (
            f"micro-batch {p.fit_micro_batch} with train.accum={p.fit_accum} would fit"
            if p.fit_micro_batch
            else "not even one image per GPU fits"
        )
        raise ConfigError(
            f"micro-batch {p.micro_batch} per GPU (train.batch={p.batch} over {world} GPUs x train.accum={p.accum}) "
            f"does not fit a {p.gpu_name}: predicted peak {p.predicted / gib:.1f} GiB, usable {p.usable / gib:.1f} GiB; "
            f"{fit} (bigtrain plan shows the breakdown; --force renders anyway)"
        )


def _check_sweep(o: RenderOptions) -> str:
    from ..tune.sweep import load_sweep

    spec, _ = load_sweep(o.config)  # every key and value of the space is checked here
    data = read_yaml_mapping(o.config, "sweep file")
    need = spec.resources.workers * spec.resources.gpus
    if need > o.nodes * o.gpus_per_node and need > 0:
        raise ConfigError(
            f"one trial needs {spec.resources.workers} workers x {spec.resources.gpus} GPUs = {need:g}, more than "
            f"{o.nodes} nodes x {o.gpus_per_node} GPUs"
        )
    data["storage"] = f"/runs/{o.name}"
    return yaml.safe_dump(data, sort_keys=False)


# ----------------------------------------------------------------------------- shared pieces


def _meta(o: RenderOptions, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": o.namespace,
        "labels": {"app.kubernetes.io/name": "bigtrain", "app.kubernetes.io/instance": o.name,
                   "app.kubernetes.io/component": component},
    }  # fmt: skip


def mlflow_uri(o: RenderOptions) -> str:
    return f"http://{o.mlflow_name}.{o.namespace}.svc.cluster.local:{MLFLOW_PORT}"


def grace_seconds(o: RenderOptions) -> int:
    return o.checkpoint_seconds + 60  # the checkpoint, plus time to flush logs and exit


def _resources(o: RenderOptions, gpus: int) -> dict[str, Any]:
    per = max(gpus, 1)
    requests = {"cpu": str(o.cpus_per_gpu * per), "memory": f"{o.memory_per_gpu_gi * per}Gi"}
    limits = {"memory": f"{o.memory_per_gpu_gi * per + o.shm_gi}Gi"}  # /dev/shm counts against memory
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def _container(
    o: RenderOptions, name: str, command: list[str], env: list[dict], gpus: int, ports=None
) -> dict:
    c = {
        "name": name,
        "image": o.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "workingDir": APP_DIR,
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri(o)}, {"name": "PYTHONUNBUFFERED", "value": "1"},
                *env],
        "resources": _resources(o, gpus),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *([{"name": "data", "mountPath": "/data"}] if o.data_on_claim else []),
            {"name": "runs", "mountPath": "/runs"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    if o.store_secret:  # the store's credentials, never in the recipe or the ConfigMap
        c["envFrom"] = [{"secretRef": {"name": o.store_secret}}]
    if ports:
        c["ports"] = ports
    return c


def _pod_spec(o: RenderOptions, containers: list[dict], restart_policy: str | None = None, **extra) -> dict:
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": grace_seconds(o),
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": f"{o.name}-config"}},
            *([{"name": "data", "persistentVolumeClaim": {"claimName": o.data_pvc}}] if o.data_on_claim else []),
            {"name": "runs", "persistentVolumeClaim": {"claimName": o.runs_pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{o.shm_gi}Gi"}},
        ],
        **extra,
    }  # fmt: skip
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return spec


def _config_map(o: RenderOptions, filename: str, text: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(o, f"{o.name}-config", "config"),
            "data": {filename: text}}  # fmt: skip


def _train_env(o: RenderOptions, rdzv_endpoint: str) -> list[dict]:
    return [
        {"name": "NNODES", "value": str(o.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(max(o.gpus_per_node, 1))},
        {"name": "RDZV_ENDPOINT", "value": rdzv_endpoint},
        {"name": "RDZV_ID", "value": o.name},
        {"name": "MAX_RESTARTS", "value": str(o.max_restarts)},
        {"name": "PYTHON", "value": "python3"},
    ]


def _train_command(o: RenderOptions) -> list[str]:
    return [f"{APP_DIR}/launch/torchrun.sh", f"{CONFIG_DIR}/config.yaml"]


# ----------------------------------------------------------------------------- kinds


def render_pytorchjob(o: RenderOptions, config_text: str) -> list[dict]:
    # The operator gives replica i of type Worker a Service named <job>-worker-<i>: worker 0 hosts the
    # c10d rendezvous (port 29400) that every node joins.
    endpoint = f"{o.name}-worker-0:{RDZV_PORT}"
    container = _container(o, "pytorch", _train_command(o), _train_env(o, endpoint), o.gpus_per_node,
                           ports=[{"name": "c10d", "containerPort": RDZV_PORT}])  # fmt: skip
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _meta(o, o.name, "train"),
        "spec": {
            "elasticPolicy": {"rdzvBackend": "c10d", "rdzvId": o.name, "rdzvPort": RDZV_PORT, "minReplicas": o.nodes,
                              "maxReplicas": o.nodes, "maxRestarts": o.max_restarts},
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": o.max_restarts * o.nodes},
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": o.nodes,
                    "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": _meta(o, o.name, "train")["labels"]},
                                 "spec": _pod_spec(o, [container])},
                }
            },
        },
    }  # fmt: skip
    return [_config_map(o, "config.yaml", config_text), job]


def render_indexed_job(o: RenderOptions, config_text: str) -> list[dict]:
    # Pods of an Indexed Job are named <job>-<index>; with `subdomain` set to the headless Service they
    # resolve as <job>-<index>.<service>: node 0 hosts the c10d rendezvous.
    service = o.name
    endpoint = f"{o.name}-0.{service}:{RDZV_PORT}"
    env = [*_train_env(o, endpoint),
           {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]  # fmt: skip
    container = _container(o, "train", _train_command(o), env, o.gpus_per_node,
                           ports=[{"name": "c10d", "containerPort": RDZV_PORT}])  # fmt: skip
    labels = _meta(o, o.name, "train")["labels"]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(o, service, "rendezvous"),
        "spec": {"clusterIP": "None", "selector": labels, "publishNotReadyAddresses": True,
                 "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": RDZV_PORT}]},
    }  # fmt: skip
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(o, o.name, "train"),
        "spec": {
            "completionMode": "Indexed",
            "completions": o.nodes,
            "parallelism": o.nodes,
            "backoffLimit": o.max_restarts * o.nodes,
            "template": {"metadata": {"labels": labels},
                         "spec": _pod_spec(o, [container], restart_policy="Never", subdomain=service)},
        },
    }  # fmt: skip
    return [_config_map(o, "config.yaml", config_text), headless, job]


def render_rayjob(o: RenderOptions, sweep_text: str) -> list[dict]:
    def group_template(name: str, gpus: int, command: list[str] | None = None) -> dict:
        container = _container(o, name, command or [], [], gpus)
        if not command:
            del container["command"]  # KubeRay supplies `ray start`
        return {"metadata": {"labels": _meta(o, o.name, "tune")["labels"]}, "spec": _pod_spec(o, [container])}

    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(o, o.name, "tune"),
        "spec": {
            "entrypoint": f"bigtrain tune {CONFIG_DIR}/sweep.yaml --address auto",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": {
                "headGroupSpec": {"rayStartParams": {"num-gpus": "0"}, "template": group_template("ray-head", 0)},
                "workerGroupSpecs": [
                    {"groupName": "gpu", "replicas": o.nodes, "minReplicas": o.nodes, "maxReplicas": o.nodes,
                     "rayStartParams": {}, "template": group_template("ray-worker", o.gpus_per_node)}
                ],
            },
        },
    }  # fmt: skip
    return [_config_map(o, "sweep.yaml", sweep_text), job]


def render_mlflow(o: RenderOptions) -> list[dict]:
    store = "sqlite:////mlflow/mlflow.db" if o.mlflow_backend == "sqlite" else "$(MLFLOW_BACKEND_STORE_URI)"
    env = [{"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"}]
    if o.mlflow_backend == "postgres":
        env.append({"name": "MLFLOW_BACKEND_STORE_URI",
                    "valueFrom": {"secretKeyRef": {"name": o.mlflow_secret, "key": "uri"}}})  # fmt: skip
    labels = _meta(o, o.mlflow_name, "mlflow")["labels"]
    container = {
        "name": "mlflow",
        "image": o.image,
        "command": ["mlflow", "server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT), "--workers", "2",
                    "--backend-store-uri", store, "--artifacts-destination", "/mlflow/artifacts"],
        "env": env,
        "ports": [{"name": "http", "containerPort": MLFLOW_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": MLFLOW_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": [{"name": "store", "mountPath": "/mlflow"}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    claim = f"{o.mlflow_name}-store"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(o, claim, "mlflow"),
         "spec": _claim_spec(o, "ReadWriteOnce", "50Gi")},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(o, o.mlflow_name, "mlflow"),
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"},  # one writer of the sqlite file
                  "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID,
                                                            "fsGroup": USER_ID,
                                                            "seccompProfile": {"type": "RuntimeDefault"}},
                                        "containers": [container],
                                        "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": claim}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(o, o.mlflow_name, "mlflow"),
         "spec": {"selector": labels, "ports": [{"name": "http", "port": MLFLOW_PORT, "targetPort": MLFLOW_PORT}]}},
    ]  # fmt: skip


def _claim_spec(o: RenderOptions, mode: str, size: str) -> dict:
    spec = {"accessModes": [mode], "resources": {"requests": {"storage": size}}}
    if o.storage_class:
        spec["storageClassName"] = o.storage_class
    return spec


def render_storage(o: RenderOptions) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(o, o.data_pvc, "data"),
         "spec": _claim_spec(o, "ReadWriteMany", o.data_size)},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(o, o.runs_pvc, "runs"),
         "spec": _claim_spec(o, "ReadWriteMany", o.runs_size)},
    ]  # fmt: skip


def render(o: RenderOptions) -> list[dict]:
    """The manifests of `o.kind`, after `check`."""
    if not o.name:
        o.name = Path(o.config).stem.replace("_", "-").lower() if o.config else "bigtrain"
    text = check(o)
    if o.kind in ("pytorchjob", "job"):
        docs = (render_pytorchjob if o.kind == "pytorchjob" else render_indexed_job)(o, text)
        if o.plan:  # the plan's figures beside the job, for whoever reads it in the cluster
            docs[-1]["metadata"]["annotations"] = {"bigtrain.io/plan": o.plan}
        return docs
    if o.kind == "rayjob":
        return render_rayjob(o, text)
    if o.kind == "mlflow":
        return render_mlflow(o)
    return render_storage(o)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the recipe in the ConfigMap) as readable literal blocks."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def to_yaml(docs: list[dict]) -> str:
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False) for d in docs)
