"""Run in one process or under torchrun: trains a tiny BigGAN on a deterministic in-memory data stream
and writes every rank's final weights and probe outputs to OUT/rank{r}.pt.

Args: OUT ACCUM ITERATIONS [overrides...]; RESUME=1 continues OUT/run from its latest checkpoint. The
data stream (slots.SlotLoader) is sliced by slot like the trainer's latents, so 1 process x accum 2
sees exactly what 2 processes x accum 1 see. Probes are saved before (`probe_start.*`) and after
(`probe.*`) training.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slots import SlotLoader  # noqa: E402

from bigtrain.config import load_config  # noqa: E402
from bigtrain.models.layers import frozen_state  # noqa: E402
from bigtrain.train.loop import Trainer  # noqa: E402

torch.set_num_threads(1)


out, accum, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
world = int(os.environ.get("WORLD_SIZE", 1))
cfg = load_config(
    os.path.join(os.path.dirname(__file__), "..", "..", "configs", "biggan", "digits32.yaml"),
    ["train.batch=16", f"train.accum={accum}", "track.enabled=false", "eval.every_kimg=0", f"train.run_dir={out}/run",
     f"train.total_kimg={iterations * 16 / 1000}", "train.ckpt_every_kimg=1000", *sys.argv[4:]],
)  # fmt: skip
micro = cfg.train.batch // (world * accum)
resume = os.environ.get("RESUME") == "1"  # continue OUT/run from its latest checkpoint
trainer = Trainer(cfg, resume=resume, loader=SlotLoader(micro, int(os.environ.get("RANK", 0)), world))
# Probes: outputs on fixed inputs (BN on the probe batch's statistics, no state change).
probe = torch.Generator().manual_seed(7)
z, y = torch.randn(32, cfg.model.z_dim, generator=probe), torch.randint(0, 10, (32,), generator=probe)
images = torch.rand(32, 3, 32, 32, generator=probe) * 2 - 1
if trainer.G.codes is not None:  # InfoGAN's latent codes join z after the noise
    z = torch.cat([z, trainer.G.codes.draw(32, probe, "cpu")], dim=1)


def probes(prefix: str) -> dict:
    with torch.no_grad(), frozen_state(trainer.ema.model, batchnorm=True), frozen_state(trainer.D):
        trainer.ema.model.train()
        return {f"{prefix}.G_ema": trainer.ema.model(z, y), f"{prefix}.D": trainer.D(images, y)}


before = probes("probe_start")  # where this process started: the update is probe - probe_start
trainer.run()
weights = {
    f"{name}.{k}": v
    for name, m in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.ema.model))
    for k, v in m.state_dict().items()
}


def flat(prefix: str, value) -> dict:
    """Nested state (an encoder's state_dict, its optimizer's) as prefix.key -> tensor; the numbers and
    tensors only (an optimizer's None and string settings are left out)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(f"{prefix}.{key}", item).items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in flat(f"{prefix}.{i}", item).items()}
    return {prefix: torch.as_tensor(value)} if isinstance(value, (torch.Tensor, int, float)) else {}


# The objective's state (e.g. LeCam's anchors, MRGAN's encoder), which every rank must hold alike.
objective = flat("objective", trainer.objective.state_dict())
torch.save({**weights, **objective, **before, **probes("probe")}, f"{out}/rank{trainer.rank}.pt")
trainer.backend.close()
