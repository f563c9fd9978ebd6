#!/usr/bin/env bash
# Launch `bigtrain train` on this node under torchrun; every worker resumes from the run's latest
# checkpoint if there is one, so a restarted group (--max-restarts) continues where it stopped.
#
#   launch/torchrun.sh configs/biggan/imagenet128.yaml [section.key=value ...]
#
# Environment (defaults in brackets):
#   NPROC_PER_NODE  processes on this node [number of GPUs, else 1]
#   NNODES          nodes in the job [1]; with 1 and no MASTER_ADDR/RDZV_ENDPOINT: --standalone
#   NODE_RANK       this node's rank [0]            (static rendezvous, with MASTER_ADDR/MASTER_PORT)
#   MASTER_ADDR     address of node 0               MASTER_PORT [29500]
#   RDZV_ENDPOINT   host:port of a c10d rendezvous (elastic; replaces MASTER_ADDR/NODE_RANK)
#   RDZV_ID         job id for the rendezvous [bigtrain]
#   MAX_RESTARTS    group restarts after a worker failure [3]
#   PYTHON          interpreter with bigtrain installed [python3, or .venv/bin/python if present]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${NPROC_PER_NODE:-0}" -ge 1 ] || NPROC_PER_NODE=1
fi
NNODES="${NNODES:-1}"
args=(--nproc-per-node "$NPROC_PER_NODE" --max-restarts "${MAX_RESTARTS:-3}")
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  args+=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-bigtrain}")
elif [ "$NNODES" = 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  args+=(--standalone)
else
  : "${MASTER_ADDR:?MASTER_ADDR, the address of node 0, is needed for NNODES=$NNODES without RDZV_ENDPOINT}"
  args+=(--nnodes "$NNODES" --node-rank "${NODE_RANK:-0}" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}")
fi
if [ $# -lt 1 ]; then
  echo "usage: launch/torchrun.sh CONFIG.yaml [section.key=value ...]" >&2
  exit 2
fi
# Restarted workers must not read the previous attempt's addresses from a rendezvous store shared with
# the training process (pytorch/pytorch#135712): without this, a group restart fails to connect.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
exec "$PYTHON" -m torch.distributed.run "${args[@]}" -m bigtrain.cli train "$@" --resume
