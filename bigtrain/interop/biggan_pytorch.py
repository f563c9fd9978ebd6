"""ajbrock/BigGAN-PyTorch's weights folders into bigtrain's BigGAN, and back.

Its `utils.save_weights` writes state dicts (`G.pth`, `G_ema.pth`, `D.pth`, `G_optim.pth`, `D_optim.pth`)
and `state_dict.pth`: the iteration, epoch, best IS/FID and the run's whole argument dict (`config`),
which holds the architecture (G_ch, D_ch, dim_z, hier, G_shared, shared_dim, G_attn, D_attn, SN_eps,
BN_eps, resolution, n_classes) and the training settings. All of them load weights-only.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.biggan import from_biggan_pytorch
from .common import Imported, WeightsError

# Reference arguments that bigtrain's BigGAN implements with one value only (BigGAN-PyTorch's utils.py
# parser; a key the config lacks takes the parser's default, which is the allowed value).
FIXED = {
    "G_param": ("SN",),
    "D_param": ("SN",),
    "norm_style": ("bn",),
    "G_nl": ("relu", "inplace_relu"),
    "D_nl": ("relu", "inplace_relu"),
    "D_wide": (True,),
    "num_G_SVs": (1,),
    "num_D_SVs": (1,),
    "G_mixed_precision": (False,),
    "D_mixed_precision": (False,),
}
INITS = {"ortho": "ortho", "N02": "N02"}


def _attention(text: Any) -> list[int]:
    return sorted(int(a) for a in str(text).split("_") if a and a != "0")


def settings_from_config(config: dict[str, Any], where: str) -> tuple[dict, dict, list[str]]:
    """bigtrain settings from BigGAN-PyTorch's run config (its state_dict.pth `config`)."""
    for key, allowed in FIXED.items():
        if key in config and config[key] not in allowed:
            raise WeightsError(
                f"{where} config {key}={config[key]!r} has no bigtrain equivalent (its BigGAN implements "
                f"{' or '.join(repr(a) for a in allowed)})"
            )
    for key in ("resolution", "G_ch", "D_ch", "dim_z", "n_classes"):
        if not isinstance(config.get(key), int):
            raise WeightsError(f"{where} config has no integer {key}, which the architecture needs")
    if _attention(config.get("G_attn", "64")) != _attention(config.get("D_attn", "64")):
        raise WeightsError(
            f"{where} config has G_attn={config.get('G_attn')!r} and D_attn={config.get('D_attn')!r}; bigtrain "
            "puts self-attention at the same resolutions in G and D (model.biggan.attn_res)"
        )
    d_attention = _attention(config.get("D_attn", "64"))
    if (config["resolution"] == 32 and d_attention) or 4 in d_attention:
        raise WeightsError(
            f"{where} config has D_attn={config.get('D_attn')!r} at {config['resolution']}x{config['resolution']}: "
            "BigGAN-PyTorch's D_arch labels every block of its 32x32 D (and both 4x4 blocks of the others) with one "
            "resolution and attends after each of them, which bigtrain's D (one attention layer per resolution) "
            "does not build"
        )
    shared = config.get("G_shared", True)
    # BigGAN-PyTorch: `shared_dim if shared_dim > 0 else dim_z` when G_shared.
    shared_dim = (config.get("shared_dim", 0) or config["dim_z"]) if shared else 0
    s: dict[str, Any] = {
        "model.name": "biggan",
        "model.resolution": config["resolution"],
        "model.biggan.ch": config["G_ch"],
        "model.biggan.d_ch": config["D_ch"],
        "model.z_dim": config["dim_z"],
        "model.biggan.shared_dim": shared_dim,
        "model.biggan.hier": bool(config.get("hier", False)),
        "model.biggan.attn_res": _attention(config.get("G_attn", "64")),
        "model.num_classes": config["n_classes"],
        "model.biggan.sn_eps": float(config.get("SN_eps", 1e-8)),
        "model.biggan.bn_eps": float(config.get("BN_eps", 1e-5)),
    }
    o = {
        "model.name": "BigGAN-PyTorch's BigGAN.py (G.pth, D.pth)",
        "model.resolution": "config.resolution",
        "model.biggan.ch": "config.G_ch",
        "model.biggan.d_ch": "config.D_ch",
        "model.z_dim": "config.dim_z",
        "model.biggan.shared_dim": "config.G_shared, config.shared_dim (0: dim_z)",
        "model.biggan.hier": "config.hier",
        "model.biggan.attn_res": "config.G_attn (= D_attn)",
        "model.num_classes": "config.n_classes",
        "model.biggan.sn_eps": "config.SN_eps",
        "model.biggan.bn_eps": "config.BN_eps",
    }
    notes = []
    if config.get("G_init") in INITS:
        s["model.biggan.init"], o["model.biggan.init"] = (
            INITS[config["G_init"]],
            "config.G_init (for re-initialized layers only)",
        )
    # Training settings, as BigGAN-PyTorch's train.py uses them.
    batch = int(config.get("batch_size", 64)) * int(config.get("num_D_accumulations", 1))
    training = {
        "optim.lr_g": ("G_lr", float),
        "optim.lr_d": ("D_lr", float),
        "optim.beta1": ("G_B1", float),
        "optim.beta2": ("G_B2", float),
        "optim.eps": ("adam_eps", float),
        "train.n_disc_steps": ("num_D_steps", int),
        "regularize.ortho.strength": ("G_ortho", float),
    }
    for key, (name, kind) in training.items():
        if name in config and config[name] is not None:
            s[key], o[key] = kind(config[name]), f"config.{name}"
    if config.get("G_B1") != config.get("D_B1") or config.get("G_B2") != config.get("D_B2"):
        notes.append(
            f"D's Adam betas ({config.get('D_B1')}, {config.get('D_B2')}) differ from G's; bigtrain uses G's for both"
        )
    s["train.batch"], o["train.batch"] = batch, "config.batch_size x num_D_accumulations"
    if config.get("ema") and config.get("ema_decay"):
        decay = float(config["ema_decay"])  # per iteration: half-life = batch x ln 0.5 / ln decay images
        s["ema.halflife_kimg"] = round(batch * math.log(0.5) / math.log(decay) / 1000, 6)
        o["ema.halflife_kimg"] = "config.ema_decay per iteration x config batch"
        s["ema.start_kimg"] = round(int(config.get("ema_start", 0)) * batch / 1000, 6)
        o["ema.start_kimg"] = "config.ema_start (iterations) x batch"
    s["loss.name"], o["loss.name"] = "hinge", "BigGAN-PyTorch's losses.py (hinge)"
    return s, o, notes


def from_folder(files: dict[str, Any], source: str, digests: dict[str, str]) -> Imported:
    """`files`: the folder's state dicts loaded weights-only, by file name (G.pth, G_ema.pth, D.pth,
    state_dict.pth; any may be absent)."""
    if "G.pth" not in files and "G_ema.pth" not in files:
        raise WeightsError(f"{source} has neither G.pth nor G_ema.pth: not a BigGAN-PyTorch weights folder")
    run = files.get("state_dict.pth")
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise WeightsError(
            f"{source} has no state_dict.pth with the run's config, which names the architecture; pass "
            "--recipe with the model settings and import G_ema.pth or G.pth alone"
        )
    settings, origins, notes = settings_from_config(run["config"], f"{source}/state_dict.pth")
    for name in ("G.pth", "G_ema.pth", "D.pth"):
        if name in files and not isinstance(files[name], dict):
            raise WeightsError(f"{source}/{name} holds a {type(files[name]).__name__}, not a state dict")
    G_ema = files.get("G_ema.pth") or files["G.pth"]
    if "G_ema.pth" not in files:
        notes.append("the folder has no G_ema.pth (EMA was off): G_ema is G")
    if "D.pth" not in files:
        notes.append("the folder has no D.pth: a fine-tuning run starts D from scratch")
    imported = Imported(
        source, "biggan-pytorch", settings, origins,
        G=from_biggan_pytorch(files["G.pth"]) if "G.pth" in files else None,
        G_ema=from_biggan_pytorch(G_ema),
        D=from_biggan_pytorch(files["D.pth"]) if "D.pth" in files else None,
        notes=notes,
    )  # fmt: skip
    itr = int(run.get("itr", 0))
    c = run["config"]
    per_itr = (
        int(c.get("batch_size", 64)) * int(c.get("num_D_steps", 1)) * int(c.get("num_D_accumulations", 1))
    )
    imported.iteration, imported.kimg = itr, itr * per_itr / 1000
    imported.notes.append(
        f"itr {itr} (state_dict.pth) = {imported.kimg:g} kimg of reals shown to D; its optimizer files are not read"
    )
    imported.provenance = {
        "format": "BigGAN-PyTorch weights folder (utils.save_weights)",
        "files_sha256": digests,
        "itr": itr,
        "epoch": run.get("epoch"),
        "best_IS": run.get("best_IS"),
        "best_FID": run.get("best_FID"),
        "config": {k: v for k, v in c.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }
    return imported


# --------------------------------------------------------------------------- export


def _reference_module(parts: list[str]) -> list[str]:
    """bigtrain's module path -> BigGAN-PyTorch's (the inverse of models.biggan._renamed_module)."""
    if parts[0] == "blocks":
        return ["blocks", parts[1], "0", *("conv_sc" if p == "shortcut" else p for p in parts[2:])]
    if parts[0] == "attention":
        return ["blocks", parts[1], "1", *parts[2:]]
    if parts[0] == "out_bn":
        return ["output_layer", "0", *parts[1:]]
    if parts[0] == "out_conv":
        return ["output_layer", "2", *parts[1:]]
    return parts


def to_biggan_pytorch(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """bigtrain's BigGAN G or D state dict under BigGAN-PyTorch's names (spectral norm as `u0` and the
    sigma estimate `sv0`, BN statistics as stored_mean/var), and the tensors it has no place for (SN's
    v vectors, BN's batch counters), which bigtrain keeps beside the export so a round trip is exact."""
    out: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    sn = ".parametrizations.weight."
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked") or name.endswith(f"{sn}0._v"):
            extra[name] = value
            continue
        if sn in name:
            module = name.split(sn)[0]
            target = ".".join(_reference_module(module.split(".")))
            if name.endswith(f"{sn}original"):
                out[f"{target}.weight"] = value
            else:  # the left singular vector u, and sigma = u^T W v, the reference's last estimate
                weight = state_dict[f"{module}{sn}original"]
                v = state_dict[f"{module}{sn}0._v"]
                out[f"{target}.u0"] = value.reshape(1, -1)
                sigma = value @ (weight.reshape(weight.shape[0], -1) @ v)
                out[f"{target}.sv0"] = sigma.reshape(1)
            continue
        *module, leaf = name.split(".")
        if module and module[-1] == "bn" and leaf in ("running_mean", "running_var"):  # a CBN's statistics
            module = module[:-1]
        target = ".".join(_reference_module(module))
        if leaf in ("running_mean", "running_var"):
            leaf = "stored_mean" if leaf == "running_mean" else "stored_var"
        elif module == ["out_bn"] and leaf == "weight":
            leaf = "gain"
        elif leaf == "gamma":
            value = value.reshape(())
        out[f"{target}.{leaf}"] = value
    return out, extra


def export_config(cfg, num_classes: int) -> dict[str, Any]:
    """BigGAN-PyTorch's argument names for bigtrain's model and training settings (utils.py's parser)."""
    m, o = cfg.model, cfg.optim
    attn = "_".join(str(r) for r in m.biggan.attn_res) or "0"
    return {
        "resolution": m.resolution, "n_classes": num_classes, "G_ch": m.biggan.ch, "D_ch": m.biggan.d_ch, "dim_z": m.z_dim,
        "G_shared": m.biggan.shared_dim > 0, "shared_dim": m.biggan.shared_dim, "hier": m.biggan.hier, "G_attn": attn, "D_attn": attn,
        "SN_eps": m.biggan.sn_eps, "BN_eps": m.biggan.bn_eps, "G_init": m.biggan.init, "D_init": m.biggan.init, "G_param": "SN", "D_param": "SN",
        "norm_style": "bn", "G_nl": "relu", "D_nl": "relu", "D_wide": True, "G_lr": o.lr_g, "D_lr": o.lr_d,
        "G_B1": o.beta1, "D_B1": o.beta1, "G_B2": o.beta2, "D_B2": o.beta2, "adam_eps": o.eps,
        "num_D_steps": cfg.train.n_disc_steps, "batch_size": cfg.train.batch, "num_D_accumulations": 1,
        "num_G_accumulations": 1, "G_ortho": cfg.regularize.ortho.strength,
    }  # fmt: skip
