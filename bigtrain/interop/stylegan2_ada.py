"""stylegan2-ada-pytorch's (and stylegan3's `--cfg=stylegan2`) networks into bigtrain's StyleGAN2, and back.

The architecture is read from the constructor arguments each network stored beside its state
(`init_kwargs`); an argument it does not store takes the reference's default (`training/networks.py`).
Every argument is either mapped to a bigtrain key or must hold the one value bigtrain's networks
implement; any other value is refused in one sentence naming it, since a network built otherwise would
not be the file's network.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..models.stylegan2 import fir_filter, from_stylegan2_ada
from .common import Imported, WeightsError, sha256
from .nvlabs_pickle import PersistentObject

# The reference's defaults for the constructor arguments it may leave out (stylegan2-ada-pytorch,
# training/networks.py: Generator, MappingNetwork, SynthesisNetwork/Block/Layer, Discriminator,
# DiscriminatorBlock, DiscriminatorEpilogue).
G_DEFAULTS = {
    "img_channels": 3,
    "mapping_kwargs.num_layers": 8,
    "mapping_kwargs.embed_features": None,
    "mapping_kwargs.layer_features": None,
    "mapping_kwargs.activation": "lrelu",
    "mapping_kwargs.lr_multiplier": 0.01,
    "mapping_kwargs.w_avg_beta": 0.995,
    "synthesis_kwargs.channel_base": 32768,
    "synthesis_kwargs.channel_max": 512,
    "synthesis_kwargs.num_fp16_res": 0,
    "synthesis_kwargs.conv_clamp": None,
    "synthesis_kwargs.architecture": "skip",
    "synthesis_kwargs.resample_filter": [1, 3, 3, 1],
    "synthesis_kwargs.use_noise": True,
    "synthesis_kwargs.activation": "lrelu",
}
D_DEFAULTS = {
    "img_channels": 3,
    "architecture": "resnet",
    "channel_base": 32768,
    "channel_max": 512,
    "num_fp16_res": 0,
    "conv_clamp": None,
    "cmap_dim": None,
    "block_kwargs.activation": "lrelu",
    "block_kwargs.resample_filter": [1, 3, 3, 1],
    "block_kwargs.freeze_layers": 0,
    "mapping_kwargs.num_layers": 8,
    "mapping_kwargs.embed_features": None,
    "mapping_kwargs.layer_features": None,
    "mapping_kwargs.lr_multiplier": 0.01,
    "mapping_kwargs.activation": "lrelu",  # written by legacy.py's conversion of NVlabs' TF pickles
    "epilogue_kwargs.mbstd_group_size": 4,
    "epilogue_kwargs.mbstd_num_channels": 1,
    "epilogue_kwargs.activation": "lrelu",
}
# stylegan3's training/networks_stylegan2.py: the same networks, whose Generator takes the synthesis
# arguments flat (**synthesis_kwargs) and whose defaults turn on fp16 and clamping (its train.py unsets
# them only with --fp32).
SG3_DEFAULTS = {"synthesis_kwargs.num_fp16_res": 4, "synthesis_kwargs.conv_clamp": 256}
SG3_D_DEFAULTS = {"num_fp16_res": 4, "conv_clamp": 256}
G_TOP = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
# Arguments that change only speed or memory in the reference, never the function: read, not used.
SPEED_ONLY = ("fp16_channels_last", "fused_modconv_default", "channels_last")
REQUIRED = ("z_dim", "c_dim", "w_dim", "img_resolution")
# Reference arguments that bigtrain implements with one value only.
FIXED = {
    "img_channels": (3,),
    "mapping_kwargs.activation": ("lrelu",),
    "mapping_kwargs.lr_multiplier": (0.01,),
    "mapping_kwargs.w_avg_beta": (0.995,),
    "synthesis_kwargs.architecture": ("skip",),
    "synthesis_kwargs.resample_filter": ([1, 3, 3, 1],),
    "synthesis_kwargs.use_noise": (True,),
    "synthesis_kwargs.activation": ("lrelu",),
    "block_kwargs.activation": ("lrelu",),
    "block_kwargs.resample_filter": ([1, 3, 3, 1],),
    "epilogue_kwargs.mbstd_num_channels": (1,),
    "epilogue_kwargs.activation": ("lrelu",),
}
# ADA's augmentation pipelines by the transforms they switch on (stylegan2-ada's augpipe_specs).
BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
PIPELINES = {
    frozenset(BLIT + GEOM + COLOR): "bgc",
    frozenset(BLIT + GEOM): "bg",
    frozenset(BLIT): "b",
    frozenset(COLOR): "c",
}


def _flat(kwargs: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _arguments(net: PersistentObject, defaults: dict, which: str, unused: str = "") -> dict[str, Any]:
    """The network's constructor arguments, flattened, with the reference's defaults filled in. Those
    under `unused` (an unconditional D's label mapping, which it never builds) are not checked."""
    if net.init_args:
        raise WeightsError(
            f"{which} was built with positional arguments, which the reference's networks never take"
        )
    given = {k: v for k, v in _flat(net.init_kwargs).items() if not (unused and k.startswith(unused))}
    known = set(defaults) | set(REQUIRED)
    unknown = sorted(k for k in given if k not in known and k.rsplit(".", 1)[-1] not in SPEED_ONLY)
    if unknown:  # a network built otherwise would not be the file's network
        raise WeightsError(f"{which} has the constructor argument {unknown[0]}, which bigtrain does not know")
    args = {**defaults, **given}
    for key, allowed in FIXED.items():
        if key in args and args[key] not in allowed and not (unused and key.startswith(unused)):
            raise WeightsError(
                f"{which}'s {key}={args[key]!r} has no bigtrain equivalent (its StyleGAN2 implements "
                f"{' or '.join(repr(a) for a in allowed)})"
            )
    return args


def check_generator(G: PersistentObject, which: str = "G") -> None:
    """The reference's Generator (a StyleGAN3 generator never gets here: nvlabs_pickle refuses it)."""
    if G.class_name != "Generator":
        raise WeightsError(f"{which} is a {G.class_name}, not the reference's Generator")


def from_pickle(top: dict, source: str, data: bytes) -> Imported:
    """An NVlabs snapshot or published pickle -> bigtrain's settings and tensors."""
    for key in ("G_ema", "G", "D"):
        if key in top and not isinstance(top[key], PersistentObject):
            raise WeightsError(f"{source}: its {key} is a {type(top[key]).__name__}, not a saved network")
    G_ema = top.get("G_ema") or top.get("G")
    if G_ema is None:
        raise WeightsError(f"{source} has neither G_ema nor G: not a network pickle")
    check_generator(G_ema, "G_ema" if "G_ema" in top else "G")
    stylegan3_repo = "synthesis_kwargs" not in G_ema.init_kwargs
    if stylegan3_repo:  # its Generator takes the synthesis arguments flat
        flat = G_ema.init_kwargs
        nested = {k: v for k, v in flat.items() if k in G_TOP}
        nested["synthesis_kwargs"] = {k: v for k, v in flat.items() if k not in G_TOP}
        G_ema = PersistentObject(
            G_ema.class_name, G_ema.source_sha256, {**G_ema.state, "_init_kwargs": nested}
        )
    g = _arguments(G_ema, {**G_DEFAULTS, **(SG3_DEFAULTS if stylegan3_repo else {})}, "G_ema")
    settings = {
        "model.name": "stylegan2",
        "model.resolution": g["img_resolution"],
        "model.z_dim": g["z_dim"],
        "model.stylegan2.w_dim": g["w_dim"],
        "model.num_classes": g["c_dim"] if g["c_dim"] > 1 else 1,
        "model.stylegan2.mapping_layers": g["mapping_kwargs.num_layers"],
        "model.stylegan2.fmap_base": g["synthesis_kwargs.channel_base"],
        "model.stylegan2.fmap_max": g["synthesis_kwargs.channel_max"],
        "model.stylegan2.conv_clamp": float(g["synthesis_kwargs.conv_clamp"] or 0),
    }
    origins = {
        "model.name": f"G_ema's class {G_ema.class_name} (StyleGAN2)",
        "model.resolution": "G_ema.init_kwargs.img_resolution",
        "model.z_dim": "G_ema.init_kwargs.z_dim",
        "model.stylegan2.w_dim": "G_ema.init_kwargs.w_dim",
        "model.num_classes": "G_ema.init_kwargs.c_dim (0: unconditional, 1 here)",
        "model.stylegan2.mapping_layers": "G_ema.init_kwargs.mapping_kwargs.num_layers",
        "model.stylegan2.fmap_base": "G_ema.init_kwargs.synthesis_kwargs.channel_base",
        "model.stylegan2.fmap_max": "G_ema.init_kwargs.synthesis_kwargs.channel_max",
        "model.stylegan2.conv_clamp": "G_ema.init_kwargs.synthesis_kwargs.conv_clamp (None: 0, off)",
    }
    for key in ("mapping_kwargs.embed_features", "mapping_kwargs.layer_features"):
        if g[key] not in (None, g["w_dim"]):
            raise WeightsError(
                f"G_ema's {key}={g[key]} differs from w_dim={g['w_dim']}, which bigtrain's mapping network assumes"
            )
    notes = [
        f"G's num_fp16_res={g['synthesis_kwargs.num_fp16_res']} is not used: bigtrain's precision is train.precision"
    ]
    D = top.get("D")
    if D is not None:
        notes += _read_discriminator(D, g, settings, origins, SG3_D_DEFAULTS if stylegan3_repo else {})
    else:
        notes.append("the file has no D: a fine-tuning run starts D from scratch")
    fmt = "stylegan3 (training/networks_stylegan2.py)" if stylegan3_repo else "stylegan2-ada-pytorch"
    imported = Imported(source, fmt, settings, origins, None, {}, None, notes=notes)
    resolution = g["img_resolution"]
    imported.G_ema = from_stylegan2_ada(G_ema.state_dict(), resolution)
    if isinstance(top.get("G"), PersistentObject) and "G_ema" in top:
        check_generator(top["G"])
        imported.G = from_stylegan2_ada(top["G"].state_dict(), resolution)
    if D is not None:
        imported.D = from_stylegan2_ada(D.state_dict(), resolution)
    pipe = top.get("augment_pipe")
    if isinstance(pipe, PersistentObject):
        _read_augment_pipe(pipe, imported)
    data_kwargs = top.get("training_set_kwargs")
    if isinstance(data_kwargs, dict):
        if data_kwargs.get("xflip"):
            settings["data.hflip"] = True
            origins["data.hflip"] = "training_set_kwargs.xflip"
        imported.notes.append(f"the source was trained on {data_kwargs.get('path')!r}")
    match = re.search(r"network-snapshot-(\d+)\.pkl$", source)
    if match:
        imported.kimg = float(match.group(1))
        imported.notes.append(
            f"{imported.kimg:g} kimg, read from the file name (the pickle does not record it)"
        )
    imported.provenance = {
        "format": "NVlabs network pickle (torch_utils.persistence)",
        "file_sha256": sha256(data),
        "networks": {
            k: top[k].class_name
            for k in ("G", "G_ema", "D", "augment_pipe")
            if isinstance(top.get(k), PersistentObject)
        },
        # The embedded sources, by sha256: recorded, never executed.
        "module_sources_sha256": sorted(
            {
                obj.source_sha256
                for k in top
                if isinstance(top[k], PersistentObject)
                for _, obj in top[k].walk()
            }
        ),
        "init_kwargs": {
            k: _jsonable(top[k].init_kwargs)
            for k in ("G_ema", "D")
            if isinstance(top.get(k), PersistentObject)
        },
    }
    return imported


def _read_discriminator(
    D: PersistentObject, g: dict, settings: dict, origins: dict, defaults: dict
) -> list[str]:
    """D's settings into `settings` and `origins`; returns notes for the recipe's header."""
    if D.class_name != "Discriminator":
        raise WeightsError(f"D is a {D.class_name}, not the reference's Discriminator")
    conditional = bool(D.init_kwargs.get("c_dim"))
    d = _arguments(D, {**D_DEFAULTS, **defaults}, "D", unused="" if conditional else "mapping_kwargs.")
    for key, g_key in (("channel_base", "synthesis_kwargs.channel_base"), ("channel_max", "synthesis_kwargs.channel_max"),
                       ("conv_clamp", "synthesis_kwargs.conv_clamp"), ("c_dim", "c_dim"), ("img_resolution", "img_resolution")):  # fmt: skip
        if d[key] != g[g_key]:
            raise WeightsError(
                f"D's {key}={d[key]!r} differs from G's {g_key}={g[g_key]!r}; bigtrain builds both from one model setting"
            )
    if d["architecture"] not in ("resnet", "orig", "skip"):
        raise WeightsError(f"D's architecture={d['architecture']!r} is not resnet, orig or skip")
    cmap = min(d["channel_base"] // 4, d["channel_max"])
    if d["c_dim"] and d["cmap_dim"] not in (None, cmap):
        raise WeightsError(
            f"D's cmap_dim={d['cmap_dim']} differs from its 4x4 width {cmap}, which bigtrain's D uses"
        )
    if d["c_dim"] and d["mapping_kwargs.num_layers"] != 8:
        raise WeightsError(
            f"D's mapping_kwargs.num_layers={d['mapping_kwargs.num_layers']}; bigtrain's conditional D maps labels with 8 layers"
        )
    settings["model.stylegan2.d_architecture"] = d["architecture"]
    origins["model.stylegan2.d_architecture"] = "D.init_kwargs.architecture"
    settings["model.stylegan2.mbstd_group"] = d["epilogue_kwargs.mbstd_group_size"]
    origins["model.stylegan2.mbstd_group"] = "D.init_kwargs.epilogue_kwargs.mbstd_group_size"
    if d["block_kwargs.freeze_layers"]:
        return [
            f"the source froze D's first {d['block_kwargs.freeze_layers']} layers (--freezed); to fine-tune "
            "likewise set model.freeze_d, which counts blocks (see README)"
        ]
    return []


def _read_augment_pipe(pipe: PersistentObject, imported: Imported) -> None:
    buffers = pipe.state_dict()
    if "p" in buffers:
        imported.ada_p = float(buffers["p"].reshape(-1)[0])
        imported.notes.append(
            f"ADA's p was {imported.ada_p:.6g} (kept in the checkpoint as ada_p; a fine-tuning run starts "
            "p at augment.ada_p, as the reference's --resume does)"
        )
    on = frozenset(k for k, v in pipe.init_kwargs.items() if k in BLIT + GEOM + COLOR and v)
    name = PIPELINES.get(on)
    if name:
        imported.settings["augment.ada"] = name
        imported.origins["augment.ada"] = f"augment_pipe.init_kwargs ({', '.join(sorted(on))})"
    elif on:
        imported.notes.append(
            f"ADA's pipeline ({', '.join(sorted(on))}) is none of bgc, bg, b, c: augment.ada left off"
        )


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)


# --------------------------------------------------------------------------- export


def to_stylegan2_ada(state_dict: dict[str, torch.Tensor], resolution: int) -> tuple[dict, dict]:
    """bigtrain's G or D state dict under stylegan2-ada-pytorch's names, with the FIR filter buffers
    its modules keep; and the tensors it has no place for (none for StyleGAN2)."""
    top = int(math.log2(resolution))
    is_d = not any(k.startswith("synthesis.") for k in state_dict)
    out: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        if parts[0] == "mapping" and parts[1] == "layers":
            name = f"mapping.fc{parts[2]}.{'.'.join(parts[3:])}"
        elif not is_d and parts[0] == "synthesis":
            if parts[1] == "const":
                name = "synthesis.b4.const"
            elif parts[1] == "to_rgbs":
                name = f"synthesis.b{4 << int(parts[2])}.torgb.{'.'.join(parts[3:])}"
            else:  # convs: 0 is 4x4's conv1, then conv0/conv1 per resolution
                index = int(parts[2])
                level, conv = (
                    (0, "conv1") if index == 0 else ((index + 1) // 2, "conv0" if index % 2 else "conv1")
                )
                name = f"synthesis.b{4 << level}.{conv}.{'.'.join(parts[3:])}"
        elif is_d and parts[0] in ("conv", "fc", "out"):
            name = f"b4.{name}"
        elif is_d and parts[0] == "from_rgb":
            name = f"b{resolution}.fromrgb.{'.'.join(parts[1:])}"
        elif is_d and parts[0] == "from_rgbs":
            name = f"b{resolution >> int(parts[1])}.fromrgb.{'.'.join(parts[2:])}"
        elif is_d and parts[0] == "blocks":
            name = f"b{2 ** (top - int(parts[1]))}.{'.'.join(parts[2:])}"
        out[name] = value
    # The reference's modules keep the [1, 3, 3, 1] filter as a buffer: every conv layer, fromRGB and
    # skip, every synthesis block, and every D block above 4x4 (its epilogue has none).
    fir = fir_filter()
    for module in sorted({n.rsplit(".", 1)[0] for n in out}):
        if re.fullmatch(r"(synthesis\.)?b\d+\.(conv0|conv1|conv|fromrgb|skip)", module):
            out[f"{module}.resample_filter"] = fir.clone()
    for block in sorted(
        {re.match(r"(synthesis\.)?b\d+", n).group(0) for n in out if re.match(r"(synthesis\.)?b\d+\.", n)}
    ):
        if not is_d or block != "b4":
            out[f"{block}.resample_filter"] = fir.clone()
    return out, {}


def export_kwargs(cfg, num_classes: int) -> dict[str, dict]:
    """The reference's constructor arguments for bigtrain's model settings (training/networks.py)."""
    m = cfg.model
    c_dim = num_classes if num_classes > 1 else 0
    clamp = m.stylegan2.conv_clamp or None
    G = {
        "z_dim": m.z_dim, "c_dim": c_dim, "w_dim": m.stylegan2.w_dim, "img_resolution": m.resolution, "img_channels": 3,
        "mapping_kwargs": {"num_layers": m.stylegan2.mapping_layers},
        "synthesis_kwargs": {"channel_base": m.stylegan2.fmap_base, "channel_max": m.stylegan2.fmap_max, "num_fp16_res": 0, "conv_clamp": clamp},
    }  # fmt: skip
    D = {
        "c_dim": c_dim, "img_resolution": m.resolution, "img_channels": 3, "architecture": m.stylegan2.d_architecture,
        "channel_base": m.stylegan2.fmap_base, "channel_max": m.stylegan2.fmap_max, "num_fp16_res": 0, "conv_clamp": clamp,
        "epilogue_kwargs": {"mbstd_group_size": m.stylegan2.mbstd_group},
    }  # fmt: skip
    return {"G": G, "D": D}


def export_records(kwargs: dict, tensors: dict[str, dict]) -> dict[str, PersistentObject]:
    """What `bigtrain export --to stylegan2-ada` wrote (constructor arguments and state dicts), as the
    records the pickle reader gives, so one path reads both."""
    classes = {"G": "Generator", "G_ema": "Generator", "D": "Discriminator"}
    return {
        name: PersistentObject(
            classes[name], "", {"_init_kwargs": kwargs["D" if name == "D" else "G"], "_parameters": sd}
        )
        for name, sd in tensors.items()
    }
