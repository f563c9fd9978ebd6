"""Run under torchrun: trains several runs one after another in the same process group, each a recipe
with overrides, on the slot stream (slots.SlotLoader), and writes every rank's final G, D and G_ema
tensors, the objective's state and D's tensors before training to OUT/<name>/rank{r}.pt. One launch
checks many families and methods at the cost of one process start.

Args: OUT SPEC [overrides...]. SPEC: a JSON file {name: [recipe under configs/, [overrides...]]}; the
trailing overrides (e.g. the DeepSpeed backend) apply to every run. Each run: batch 8, 2 iterations.
"""

import json
import os
import sys

import torch
from slots import SlotLoader

from bigtrain.config import load_config
from bigtrain.train.loop import Trainer

torch.set_num_threads(1)
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BATCH, ITERATIONS = 8, 2

out, runs = sys.argv[1], json.loads(open(sys.argv[2]).read())
world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
trainer = None
for name, (recipe, overrides) in runs.items():
    cfg = load_config(os.path.join(REPO, "configs", recipe), [
        f"train.batch={BATCH}", "track.enabled=false", "eval.every_kimg=0", f"train.run_dir={out}/{name}/run",
        "train.ckpt_every_kimg=1000", "data.num_workers=0", *overrides, *sys.argv[3:],
    ])  # fmt: skip
    cfg.train.total_kimg = ITERATIONS * cfg.train.n_disc_steps * BATCH / 1000
    trainer = Trainer(cfg, loader=SlotLoader(BATCH // (world * cfg.train.accum), rank, world))
    start = {f"D_start.{k}": v.clone() for k, v in trainer.D.state_dict().items()}
    trainer.run()
    tensors = {
        f"{net}.{k}": v
        for net, m in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.ema.model))
        for k, v in m.state_dict().items()
    }
    objective = {
        f"objective.{k}": torch.as_tensor(v)
        for k, v in trainer.objective.state_dict().items()
        if isinstance(v, (torch.Tensor, int, float))  # a part's structured state is compared by its own tests
    }
    torch.save({**tensors, **objective, **start}, f"{out}/{name}/rank{rank}.pt")
if trainer is not None:
    trainer.backend.close()  # one process group for every run: closed after the last
