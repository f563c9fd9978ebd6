"""Distributed backends behind one interface: `dist.backend` picks one."""

from __future__ import annotations

from ..config import Config
from .base import Backend, launch_env, pick_device
from .ddp import DDPBackend

__all__ = ["Backend", "DDPBackend", "launch_env", "make_backend", "pick_device"]


def make_backend(cfg: Config) -> Backend:
    if cfg.dist.backend == "ddp":
        return DDPBackend(cfg)
    if cfg.dist.backend == "accelerate":
        from .accelerate_backend import AccelerateBackend  # imported only when chosen

        return AccelerateBackend(cfg)
    if cfg.dist.backend == "deepspeed":
        from .deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(cfg)
    raise AssertionError(f"unhandled dist.backend {cfg.dist.backend}")  # CHOICES in config.py rule it out
