"""Bring your weights: `bigtrain import` and `bigtrain export`.

import: an NVlabs network pickle (stylegan2-ada-pytorch, stylegan3 with a StyleGAN2 generator), a
BigGAN-PyTorch weights folder, a folder that `bigtrain export` wrote, or one state dict (G_ema.pth,
G.pth) with `--recipe` naming the architecture -> a run folder every command accepts: OUT/recipe.yaml
and OUT/checkpoints/imported. Nothing from the file is executed (see nvlabs_pickle.py).

export: a bigtrain checkpoint -> the reference's state dicts under its names, plus a JSON of its
constructor arguments, which the reference's own classes and `load_state_dict` accept.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, from_dict, read_yaml_mapping
from ..data.remote import ShardUnreadable, basename, is_url, join, read_bytes
from ..models import build_models
from ..models.biggan import from_biggan_pytorch
from ..models.stylegan2 import from_stylegan2_ada
from . import biggan_pytorch, stylegan2_ada
from .common import (
    Imported,
    WeightsError,
    check_new_folder,
    load_checked,
    sha256,
    staged_folder,
    write_run_folder,
)
from .nvlabs_pickle import NumpyDtype, numpy_scalar, read_network_pickle

log = logging.getLogger(__name__)

__all__ = ["WeightsError", "export_checkpoint", "import_weights"]

EXPORT_FORMATS = ("biggan-pytorch", "stylegan2-ada")
SG2_KWARGS = "stylegan2_ada_kwargs.json"  # what `bigtrain export --to stylegan2-ada` writes beside its .pth
BIGGAN_KWARGS = "biggan_pytorch_config.json"
EXTRA = (
    "bigtrain_extra.pth"  # tensors the reference has no place for (SN's v, BN counters): round trips exact
)
BIGGAN_FILES = ("G.pth", "G_ema.pth", "D.pth", "state_dict.pth")


def _read(path: str | Path) -> bytes:
    if is_url(path) and not _exists(path):
        raise WeightsError(f"{path} does not exist")
    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except ShardUnreadable as e:  # a URL still unreadable after the retries
        raise WeightsError(str(e)) from None
    except IsADirectoryError:
        raise WeightsError(f"{path} is a folder, not a file") from None


def _exists(path: str | Path) -> bool:
    if is_url(path):
        from ..data.remote import filesystem

        return filesystem(str(path)).exists(str(path))
    return Path(path).is_file()


class _Activation:
    """Stands for the nn.ReLU object BigGAN-PyTorch's train.py leaves in its saved config
    (G_activation, D_activation): a name, never a module built from the file."""


# Names a weights-only load may meet in the references' files, each resolved to inert data.
STAND_INS = [
    (_Activation, "torch.nn.modules.activation.ReLU"),
    (NumpyDtype, "numpy.dtype"),  # numpy scalars, e.g. BigGAN-PyTorch's best_IS after an evaluation
    (numpy_scalar, "numpy.core.multiarray.scalar"),
    (numpy_scalar, "numpy._core.multiarray.scalar"),
]


def _load_pth(data: bytes, where: str) -> Any:
    """A .pth file, weights-only: tensors and plain values, never arbitrary objects."""
    try:
        with torch.serialization.safe_globals(STAND_INS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that names classes weights-only refuses
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        if named:
            raise WeightsError(
                f"{where} names {named.group(1)}, which bigtrain refuses to load (it reads tensors and plain "
                "values only; nothing was written)"
            ) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{where} cannot be read weights-only (truncated or damaged: {first[:200]})"
        ) from None


def _is_folder(src: str) -> bool:
    return src.endswith("/") or (not is_url(src) and Path(src).is_dir())


def read_source(src: str, recipe: dict | None) -> Imported:
    """Recognise SRC's format and read it into bigtrain's names."""
    if not is_url(src) and not Path(src).exists():
        raise WeightsError(f"{src} does not exist")
    if _is_folder(src):
        folder = src.rstrip("/")
        if _exists(join(folder, SG2_KWARGS)):
            return _read_stylegan2_export(folder)
        files, digests = {}, {}
        for name in BIGGAN_FILES:
            path = join(folder, name)
            if _exists(path):
                data = _read(path)
                files[name], digests[name] = _load_pth(data, f"{folder}/{name}"), sha256(data)
        if not files:
            raise WeightsError(
                f"{src} holds none of {', '.join(BIGGAN_FILES)} or {SG2_KWARGS}: not a BigGAN-PyTorch weights "
                "folder nor a bigtrain export"
            )
        imported = biggan_pytorch.from_folder(files, folder, digests)
        _restore_extra(imported, folder)
        return imported
    data = _read(src)
    if src.endswith(".pkl"):
        return stylegan2_ada.from_pickle(read_network_pickle(data, src), src, data)
    if src.endswith((".pth", ".pt")):
        return _read_state_dict(_load_pth(data, src), src, data, recipe)
    raise WeightsError(f"{src}: bigtrain imports .pkl (NVlabs), .pth (a state dict) or a weights folder")


def _read_state_dict(sd: Any, src: str, data: bytes, recipe: dict | None) -> Imported:
    """One generator state dict (a G_ema.pth or G.pth) in the reference format that --recipe's family names."""
    if recipe is None:
        raise WeightsError(f"{src} is a bare state dict, which does not say its architecture: pass --recipe")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{src} is not a state dict of tensors")
    family = (recipe.get("model") or {}).get("name", "biggan")
    if family == "biggan":
        tensors = from_biggan_pytorch(sd)
    elif family == "stylegan2":
        tensors = from_stylegan2_ada(sd, int((recipe.get("model") or {}).get("resolution", 32)))
    else:
        raise WeightsError(
            f"--recipe's model.name={family}: bigtrain imports BigGAN and StyleGAN2 state dicts"
        )
    return Imported(
        src, f"{family} state dict", {}, {}, None, tensors, None,
        provenance={"format": f"a {family} generator state dict", "file_sha256": sha256(data)},
        notes=["the architecture is --recipe's; the file held one generator, used as G and G_ema"],
    )  # fmt: skip


def _read_stylegan2_export(folder: str) -> Imported:
    kwargs = json.loads(_read(join(folder, SG2_KWARGS)))
    tensors, data = {}, b""
    for name in ("G", "G_ema", "D"):
        path = join(folder, f"{name}.pth")
        if _exists(path):
            raw = _read(path)
            data += raw
            tensors[name] = _load_pth(raw, f"{folder}/{name}.pth")
    top = stylegan2_ada.export_records(kwargs, tensors)
    imported = stylegan2_ada.from_pickle(top, folder, data)
    imported.format = "stylegan2-ada state dicts (bigtrain export)"
    progress = kwargs.get("progress") or {}
    imported.kimg, imported.iteration = float(progress.get("kimg", 0)), int(progress.get("iteration", 0))
    if "augment_p" in kwargs:
        imported.ada_p = float(kwargs["augment_p"])
    _restore_extra(imported, folder)
    return imported


def _restore_extra(imported: Imported, folder: str) -> None:
    """Tensors an export kept beside the reference's files: bigtrain's own, restored exactly."""
    path = join(folder, EXTRA)
    if not _exists(path):
        return
    extra = _load_pth(_read(path), f"{folder}/{EXTRA}")
    for name in ("G", "G_ema", "D"):
        target = getattr(imported, name)
        if target is not None and name in extra:
            target.update(extra[name])


def _build_config(imported: Imported, recipe: dict | None, overrides: list[str]):
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in (recipe or {}).items()}
    for key, value in imported.settings.items():
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    try:
        return from_dict(tree, overrides)
    except ConfigError as e:
        raise WeightsError(
            f"the settings read from {imported.source} do not make a valid recipe: {e}"
        ) from None


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}  # the network's G is loaded next, in place


def import_weights(
    src: str, out: str | Path, recipe: str | None = None, overrides: list[str] | None = None
) -> Path:
    """Read SRC, build bigtrain's equal networks, load every tensor checked, write the run folder OUT."""
    out = Path(out)
    check_new_folder(out, "import")
    base = read_yaml_mapping(recipe, "recipe") if recipe else None
    imported = read_source(str(src), base)
    cfg = _build_config(imported, base, overrides or [])
    num_classes = cfg.model.num_classes or 1
    G, D = build_models(cfg.model, num_classes)
    what = basename(imported.source)
    for name, net in (("G_ema", G), ("G", G), ("D", D)):  # G_ema and G share one network: copies kept
        if getattr(imported, name) is not None:
            load_checked(net, getattr(imported, name), f"{what} ({name})", optional=("num_batches_tracked",))
            setattr(imported, name, _copy(net.state_dict()))
    imported.provenance = {"source": str(src), **imported.provenance, "reader": "bigtrain.interop"}
    return write_run_folder(out, cfg, imported, num_classes)


# --------------------------------------------------------------------------- export


def export_checkpoint(checkpoint: str, to: str, out: str | Path) -> Path:
    """A bigtrain checkpoint (or run folder) -> OUT with the reference's state dicts and arguments."""
    from ..train.checkpoint import load_checkpoint

    if to not in EXPORT_FORMATS:
        raise WeightsError(f"--to {to!r} is not one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    check_new_folder(out, "export")
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    family = {"biggan-pytorch": "biggan", "stylegan2-ada": "stylegan2"}[to]
    if cfg.model.name != family:
        raise WeightsError(f"{checkpoint} holds a {cfg.model.name} model; --to {to} exports {family} only")
    if cfg.model.vbn:  # models/vbn.py
        raise WeightsError(
            f"{checkpoint}'s G uses virtual batch normalization (model.vbn={cfg.model.vbn}), which {to}'s G "
            "does not have: its BatchNorm would normalize with other statistics"
        )
    if cfg.regularize.info.categorical or cfg.regularize.info.continuous:  # models/codes.py
        raise WeightsError(
            f"{checkpoint}'s G reads InfoGAN's latent codes beside z (regularize.info) and its D has a Q head, "
            f"which {to}'s networks do not have"
        )
    num_classes = int(state["num_classes"])
    files: dict[str, Any] = {}
    extra: dict[str, dict] = {}
    for name in ("G", "G_ema", "D"):
        if name not in state:
            continue
        if family == "biggan":
            files[f"{name}.pth"], extra[name] = biggan_pytorch.to_biggan_pytorch(state[name])
        else:
            files[f"{name}.pth"], extra[name] = stylegan2_ada.to_stylegan2_ada(
                state[name], cfg.model.resolution
            )
    itr = int(state.get("iteration", 0))
    if family == "biggan":
        config = biggan_pytorch.export_config(cfg, num_classes)
        biggan_pytorch.settings_from_config(
            config, f"{checkpoint}'s model, as BigGAN-PyTorch's"
        )  # it can build it
        files["state_dict.pth"] = {"itr": itr, "epoch": 0, "save_num": 0, "save_best_num": 0,
                                   "best_IS": 0.0, "best_FID": 999999.0, "config": config}  # fmt: skip
        arguments, kwargs_file = config, BIGGAN_KWARGS
    else:
        arguments, kwargs_file = stylegan2_ada.export_kwargs(cfg, num_classes), SG2_KWARGS
        # Beside the constructor arguments: the progress and ADA's p, which its pickles keep elsewhere.
        arguments["progress"] = {"kimg": int(state.get("images", 0)) / 1000, "iteration": itr}
        if "ada_p" in state:
            arguments["augment_p"] = float(state["ada_p"])
    with staged_folder(out, "exporting") as staging:
        for name, value in files.items():
            torch.save(value, staging / name)
        if any(extra.values()):
            torch.save({k: v for k, v in extra.items() if v}, staging / EXTRA)
        (staging / kwargs_file).write_text(json.dumps(arguments, indent=1) + "\n")
    return out
