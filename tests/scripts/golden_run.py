"""3 iterations of a digits recipe from a fixed seed; writes every tensor of the resulting checkpoint
state, flattened to {dotted key: tensor}, to OUT (for tests/test_golden.py).

    python golden_run.py RECIPE DATA OUT

The checkpoint's config is left out (the golden values are the training's, not the config's layout),
and so is the global Python RNG state, which training neither seeds nor draws from.
"""

import sys

import torch

from bigtrain.config import load_config
from bigtrain.train.loop import Trainer


def flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu()
    elif isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[prefix] = torch.tensor(value, dtype=torch.float64)
        else:
            for i, v in enumerate(value):
                flatten(v, f"{prefix}.{i}", out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = torch.tensor(float(value), dtype=torch.float64)


def main() -> None:
    recipe, data, out = sys.argv[1:4]
    torch.set_num_threads(1)
    cfg = load_config(recipe, [f"data.path={data}", "train.run_dir=/tmp/bigtrain-golden-unused", "track.enabled=false",
                               "eval.every_kimg=0", "data.num_workers=0", "train.seed=7"])  # fmt: skip
    trainer = Trainer(cfg)
    for _ in range(3):
        trainer.train_step()
    state = trainer.state_dict()
    state.pop("config")
    state["rng"].pop("python")  # the global `random` state: restored on resume, never seeded or drawn from
    flat: dict[str, torch.Tensor] = {}
    flatten(state, "", flat)
    torch.save(flat, out)


if __name__ == "__main__":
    main()
