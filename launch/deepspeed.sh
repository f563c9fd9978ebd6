#!/usr/bin/env bash
# Launch `bigtrain train` with the DeepSpeed launcher and the deepspeed backend (two engines, G and D).
#
#   launch/deepspeed.sh configs/biggan/imagenet128.yaml [dist.deepspeed_config=configs/deepspeed/zero1.json ...]
#
# Environment: NPROC_PER_NODE [GPUs on this node], HOSTFILE (multi-node: DeepSpeed's hostfile, one
# "host slots=N" line per node), MASTER_ADDR / MASTER_PORT [29500], PYTHON [.venv/bin/python or python3].
# Workers resume from the run's latest checkpoint when there is one. torchrun works as well:
# launch/torchrun.sh CONFIG dist.backend=deepspeed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}"
if [ $# -lt 1 ]; then
  echo "usage: launch/deepspeed.sh CONFIG.yaml [section.key=value ...]" >&2
  exit 2
fi
args=(--no_local_rank --master_port "${MASTER_PORT:-29500}")
[ -n "${NPROC_PER_NODE:-}" ] && args+=(--num_gpus "$NPROC_PER_NODE")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE")
[ -n "${MASTER_ADDR:-}" ] && args+=(--master_addr "$MASTER_ADDR")
exec "$PYTHON" -m deepspeed.launcher.runner "${args[@]}" --module bigtrain.cli train "$@" dist.backend=deepspeed --resume
