"""NVlabs network pickles (stylegan2-ada-pytorch, stylegan3) read without running any of their code.

What such a file is: a plain pickle of a dict (`G`, `D`, `G_ema`, `augment_pipe`,
`training_set_kwargs`; the published ffhq.pkl and metfaces.pkl hold the networks only). Each network
is an instance of a class decorated by NVlabs' `torch_utils/persistence.py`, which pickles it as a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the class's module
**source code** (`module_src`), its `class_name` and the instance's `state` (the module's `__dict__`:
`_parameters`, `_buffers`, `_modules`, `_init_args`, `_init_kwargs`, ...). NVlabs' loader `exec`s that
source to rebuild the class, so opening such a file with `pickle.load` runs whatever code the file
carries. Tensors are pickled by torch as `torch._utils._rebuild_tensor_v2(storage, ...)`, each storage
as `torch.storage._load_from_bytes(blob)` with `blob` a (legacy-format) `torch.save` of the storage.

This reader follows the pickle protocol with its own `find_class`: a global resolves only if it is one
of the few names below, each to a function of bigtrain's that builds plain data. The persistent
objects become `PersistentObject` records (class name, the sha256 of their source, their state); the
source itself is never compiled or run. Storages load through `torch.load(weights_only=True)`. Any
other global (`os.system`, `builtins.eval`, an unknown class) stops the read with one sentence
naming it, before anything is written.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import pickletools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .common import WeightsError


@dataclass
class PersistentObject:
    """A network (or sub-network) of an NVlabs pickle, as data: never an instance of its class."""

    class_name: str
    source_sha256: str  # of the embedded module source, recorded in the provenance, never run
    state: dict[str, Any] = field(repr=False)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    def children(self) -> dict[str, PersistentObject]:
        modules = self.state.get("_modules") or {}
        return {name: m for name, m in modules.items() if isinstance(m, PersistentObject)}

    def walk(self, prefix: str = ""):
        """(dotted name, object) for this object and every persistent object inside it."""
        yield prefix, self
        for name, child in self.children().items():
            yield from child.walk(f"{prefix}{name}.")

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """What `module.state_dict()` would give: parameters, persistent buffers, then submodules."""
        out: dict[str, torch.Tensor] = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for kind in ("_parameters", "_buffers"):
            for name, value in (self.state.get(kind) or {}).items():
                if value is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise WeightsError(
                        f"{self.class_name} {prefix}{name} is a {type(value).__name__}, not a tensor"
                    )
                out[prefix + name] = value.detach()
        for name, module in (self.state.get("_modules") or {}).items():
            if module is None:
                continue
            if not isinstance(module, PersistentObject):
                raise WeightsError(
                    f"{prefix}{name} is a {type(module).__name__}, not a network saved by NVlabs' persistence"
                )
            out.update(module.state_dict(f"{prefix}{name}."))
        return out


class EasyDict(dict):
    """dnnlib.util.EasyDict, NVlabs' dict with attribute access, rebuilt as a plain dict."""


# --------------------------------------------------------------------------- the allowed globals


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise WeightsError("a persistent object in the pickle is not a saved class instance")
    source = meta.get("module_src")
    if not isinstance(source, str) or not isinstance(meta.get("class_name"), str):
        raise WeightsError("a persistent object in the pickle has no module source or class name")
    return PersistentObject(meta["class_name"], hashlib.sha256(source.encode()).hexdigest(), meta["state"])


def _load_from_bytes(blob: Any) -> torch.storage.TypedStorage:
    """A storage: the legacy `torch.save` blob torch puts in a plain pickle, read weights-only."""
    if not isinstance(blob, bytes):
        raise WeightsError("a tensor storage in the pickle is not a byte string")
    storage = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise WeightsError("a tensor storage in the pickle holds something else")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.storage.UntypedStorage)):
        raise WeightsError("a tensor in the pickle has no storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise WeightsError("a parameter in the pickle holds no tensor")
    return data  # a plain tensor: the parameters are copied into bigtrain's own modules


_NUMERIC_KINDS = "biuf"


class NumpyDtype:
    """Stands for a numeric numpy dtype named in a pickle (`numpy.dtype('f8', False, True)` and its
    byte-order state), so that the scalars built with it are plain numbers; other dtypes are refused."""

    def __init__(self, name=None, align=False, copy=False):
        dtype = np.dtype(name) if isinstance(name, str) and name[:1].isalpha() else None
        if dtype is None or dtype.kind not in _NUMERIC_KINDS:
            raise WeightsError(f"the file asks for numpy dtype {name!r}; only numeric scalars are read")
        self.dtype = dtype

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def numpy_scalar(dtype, data=None):
    """A numpy number (stylegan3's constructor arguments, BigGAN-PyTorch's best_IS): a Python number."""
    if not isinstance(dtype, NumpyDtype) or not isinstance(data, bytes):
        raise WeightsError("a numpy scalar in the file is not a plain number")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0].item()


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): NumpyDtype,
    ("numpy.core.multiarray", "scalar"): numpy_scalar,
    ("numpy._core.multiarray", "scalar"): numpy_scalar,
}


class RefusedGlobal(WeightsError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise WeightsError(
            "the pickle refers to outside objects (persistent ids), which a network pickle has none of"
        )


# Classes only StyleGAN3's alias-free generator has (stylegan3, training/networks_stylegan3.py).
STYLEGAN3_CLASSES = ("SynthesisInput",)


def _names_a_stylegan3_generator(data: bytes) -> bool:
    """Whether the pickle's strings name a StyleGAN3 synthesis class: read from the opcodes alone, so
    that file is refused as what it is, before the reader meets its numpy arrays."""
    try:
        return any(arg in STYLEGAN3_CLASSES for _, arg, _ in pickletools.genops(data) if isinstance(arg, str))
    except Exception:  # a damaged file: the unpickler below says so
        return False


def read_network_pickle(data: bytes, source: str) -> dict[str, Any]:
    """The top-level dict of an NVlabs network pickle, its networks as `PersistentObject`s."""
    if _names_a_stylegan3_generator(data):
        raise WeightsError(
            f"{source} holds a StyleGAN3 (alias-free) generator, which bigtrain does not implement; it imports "
            "StyleGAN2 generators (stylegan2-ada-pytorch, or stylegan3's --cfg=stylegan2)"
        )
    try:
        top = _RestrictedUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as e:
        raise WeightsError(
            f"{source} names {e}, which bigtrain refuses to load: an NVlabs network pickle holds only "
            "networks, tensors and plain values, so this file is not one or was altered (nothing was written)"
        ) from None
    except WeightsError as e:
        raise WeightsError(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, RuntimeError) as e:
        raise WeightsError(f"{source} is not a readable network pickle (truncated or damaged: {e})") from None
    if not isinstance(top, dict):
        raise WeightsError(
            f"{source} holds a {type(top).__name__}, not the dict of networks an NVlabs pickle has"
        )
    return top
