"""What only a GPU can show: `pytest -m cuda` (run by bench/gpu_check.py on a lent GPU machine).

Skipped where CUDA is absent, so CI lists them as skipped. On a GPU they run the trainer's bf16,
channels_last and compiled paths for each family, count the step's real host syncs, exercise NCCL
with one process, and compare DALI's GPU ("mixed") decoder with the CPU loader.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.distributed as dist
from torch._dynamo.utils import counters

from bigtrain.data import ShardLoader, StreamSpec
from bigtrain.train.loop import Trainer
from conftest import free_port, image_id
from test_gpu_paths import FAMILIES, HostSyncCounter, _config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.py runs these)"
    ),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_bf16_channels_last_training_on_cuda(family, demo_shards, tmp_path):
    """The GPU defaults (bf16 autocast, channels_last) with torch.compile: three iterations with no
    graph break and finite fp32 weights, then a step that waits for the device once per optimizer step."""
    torch._dynamo.reset()
    counters.clear()
    cfg = _config(
        family, demo_shards, tmp_path, "train.device=cuda", "train.compile=true", "train.total_kimg=0.024"
    )
    trainer = Trainer(cfg)
    assert trainer.amp_dtype == torch.bfloat16 and trainer.channels_last, (
        "bf16 and channels_last are the CUDA defaults"
    )
    assert trainer.run() == "finished" and trainer.iteration == 3
    breaks = {str(k).splitlines()[0]: v for k, v in counters["graph_break"].items()}
    assert not breaks, f"{family}: graph breaks on CUDA: {breaks}"
    params = [p for net in (trainer.G, trainer.D) for p in net.parameters()]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    with HostSyncCounter() as counter:
        trainer.train_step()
    assert len(counter.calls) == 2, (
        f"{family}: {len(counter.calls)} host syncs in one CUDA iteration: {counter.calls}"
    )


def test_nccl_collectives_with_one_process(monkeypatch):
    """The process group bigtrain opens on GPUs, at world size 1: all-reduce, broadcast, barrier."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)
        dist.broadcast(t, src=0)
        dist.barrier()
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="DALI is not installed")
def test_dali_gpu_decoder_equals_the_cpu_loader(id_shards):
    """fn.decoders.image(device="mixed") on PNG shards: the same pixels and labels as PIL."""
    from bigtrain.data.dali import DaliLoader

    cpu = ShardLoader(StreamSpec(id_shards, 25, 8, shuffle_buffer=0), num_workers=0)
    gpu = DaliLoader(StreamSpec(id_shards, 25, 8, device="cuda", shuffle_buffer=0), num_threads=2)
    cpu_x = torch.cat([cpu.next_uint8()[0] for _ in range(8)])
    gpu_batches = [gpu.next_uint8() for _ in range(8)]
    gpu_x = torch.cat([x.cpu() for x, _ in gpu_batches])
    by_id_cpu = dict(zip(image_id(cpu_x), cpu_x))
    by_id_gpu = dict(zip(image_id(gpu_x), gpu_x))
    assert sorted(by_id_gpu) == sorted(by_id_cpu) == list(range(200))
    assert all(torch.equal(by_id_gpu[i], by_id_cpu[i]) for i in range(200)), (
        "GPU-decoded pixels differ from PIL's"
    )
