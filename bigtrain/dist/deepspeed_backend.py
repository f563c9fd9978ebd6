"""DeepSpeed: two engines, G and D, each with its own optimizer and a ZeRO stage 1 or 2 config
(`dist.deepspeed_config`, JSON in configs/deepspeed/). bigtrain fills in the batch sizes.

- bigtrain divides losses by `accum` itself, so `backward(scale_wrt_gas=False)`, and it marks the
  accumulation boundary (`set_gradient_accumulation_boundary`) so each engine steps once per step.
- D is frozen (requires_grad False) during the G step and called unwrapped: with two engines in one
  process, ZeRO 1 otherwise leaks D's gradients from the G backward into the next D step silently.
- bf16 is bigtrain's autocast; the engines keep fp32 parameters and optimizer states.
- ZeRO shards optimizer state over ranks: every rank writes its part into the checkpoint folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import Config, ConfigError
from .base import Backend

ENGINE_TAGS = {"g": "deepspeed_G", "d": "deepspeed_D"}


class DeepSpeedBackend(Backend):
    name = "deepspeed"
    supports_grad_hooks = False  # ZeRO reduces gradients into its own buffers during backward

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must precede the deepspeed import
        path = Path(cfg.dist.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"dist.deepspeed_config={path} does not exist (see configs/deepspeed/)")
        try:
            self.ds_config = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"dist.deepspeed_config={path} is not valid JSON: {e}") from None
        stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ConfigError(f"dist.deepspeed_config={path} asks for ZeRO stage {stage}; bigtrain supports 0, 1 and 2")
        import deepspeed

        self._deepspeed = deepspeed
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")

    def _engine_config(self) -> dict:
        t = self.cfg.train
        micro = t.batch // (self.world_size * t.accum)
        return {**self.ds_config, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": t.accum,
                "train_batch_size": t.batch}  # fmt: skip

    def wrap(self, G, D, opt_g, opt_d) -> None:
        super().wrap(G, D, opt_g, opt_d)
        config = self._engine_config()
        # The engines are the trained modules: train_module(which) is the G or D engine.
        self.g_train, *_ = self._deepspeed.initialize(model=G, optimizer=opt_g, config=config)
        self.d_train, *_ = self._deepspeed.initialize(model=D, optimizer=opt_d, config=config)

    def accumulating(self, which: str, last: bool):
        self.train_module(which).set_gradient_accumulation_boundary(last)
        return super().accumulating(which, last)

    def backward(self, loss, which: str) -> None:
        self.train_module(which).backward(loss, scale_wrt_gas=False)

    def step(self, which: str) -> None:
        self.train_module(which).step()

    def zero_grad(self, which: str) -> None:
        engine = self.train_module(which)
        engine.optimizer.zero_grad(set_to_none=True)  # ZeRO's own (partitioned) gradient buffers too
        engine.zero_grad()

    def optimizer_state(self) -> dict:
        return {}  # sharded: written by every rank in save_engine_state

    def load_optimizer_state(self, state: dict) -> None:
        pass

    def save_engine_state(self, folder: Path) -> None:
        for which, tag in ENGINE_TAGS.items():
            self.train_module(which).save_checkpoint(str(folder), tag=tag, save_latest=False)

    def load_engine_state(self, folder: Path) -> None:
        for which, tag in ENGINE_TAGS.items():
            path, _ = self.train_module(which).load_checkpoint(str(folder), tag=tag, load_optimizer_states=True)
            if path is None:
                raise ConfigError(f"checkpoint {folder} has no DeepSpeed state for {tag}; it was not written by dist.backend=deepspeed")
