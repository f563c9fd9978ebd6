"""One real training iteration of a recipe, traced: live tensor bytes over time and the operators run.

The Trainer is built from the recipe as `bigtrain train` builds it (a random loader instead of the
shards, no tracking, no evaluation schedule) and `Trainer.train_step` runs under a dispatch mode that
counts the bytes of every live tensor storage and records each operator's FLOPs and bytes moved. With
`fake=True` every tensor is a FakeTensor on the CPU device (torch's FakeTensorMode): shapes, dtypes and
strides are real, nothing is allocated or computed, so a batch of thousands traces in seconds. With
`fake=False` the same iteration runs on real CPU tensors, which is how tests measure the planner.

The iteration traced is the steady state: optimizer state and the gradients that outlive their step
exist before it starts; every lazy regularizer is due in it (stylegan2-ada's Dreg/Greg
phases), then G_ema sampling at `eval.batch` as the evaluation does. A phased recipe (ProGAN) traces
each phase at the middle of its fade-in, where both resolutions' layers run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

from ..config import Config, ConfigError
from ..data.manifest import Manifest

#: Operators whose FLOPs run on tensor cores (matmul, convolution, attention): the roofline's compute part.
MATMUL_OPS = frozenset(flop_registry)


@dataclass
class OpRecord:
    """One operator call: its FLOPs (0 for elementwise and copies), bytes read and written, dtype."""

    name: str
    flops: int
    bytes: int
    dtype: torch.dtype


@dataclass
class PhaseTrace:
    """What one phase of the iteration did: the most live bytes in it and at its start, its operators."""

    name: str
    peak_bytes: int = 0
    start_bytes: int = 0
    ops: list[OpRecord] = field(default_factory=list)
    network: str = ""  # "d" or "g": whose step (its gradients are DDP's buckets)
    interval: int = 1  # a lazy regularizer's step comes every this many iterations


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages: each operator's outputs are added when first seen and
    subtracted when their storage is freed (a weak reference's callback), as torch's MemTracker does.
    Tensors made before the mode was entered are counted by `register`. Also records each operator's
    FLOPs (torch's flop formulas) and the bytes of its tensor inputs and outputs for the roofline."""

    def __init__(self):
        super().__init__()
        self._storages = WeakIdKeyDictionary()  # storage -> its bytes
        self.live = 0
        self.peak = 0
        self.phase: PhaseTrace | None = None

    def register(self, *tensors: torch.Tensor | None) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._track(t)

    def _track(self, t: torch.Tensor) -> None:
        for st in get_untyped_storages(t):
            if st in self._storages:
                continue
            nbytes = st.nbytes()
            self._storages[st] = (nbytes, weakref.finalize(st, self._free, nbytes))
            self.live += nbytes
            if self.live > self.peak:
                self.peak = self.live
            if self.phase is not None and self.live > self.phase.peak_bytes:
                self.phase.peak_bytes = self.live

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live

    @contextlib.contextmanager
    def in_phase(self, phase: PhaseTrace) -> Iterator[PhaseTrace]:
        outer, self.phase = self.phase, phase
        phase.start_bytes = phase.peak_bytes = self.live
        try:
            yield phase
        finally:
            self.phase = outer
            if outer is not None:
                outer.peak_bytes = max(outer.peak_bytes, phase.peak_bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        for t in outputs:
            self._track(t)
        if outputs and self.phase is not None:  # not metadata queries (prim.device)
            self.phase.ops.append(_op_record(func, args, kwargs, out, outputs))
        return out


def _op_record(func, args, kwargs, out, outputs: list[torch.Tensor]) -> OpRecord:
    inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    packet = func._overloadpacket
    flops = 0
    if packet in flop_registry:
        try:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
        except Exception:  # a formula that does not take these arguments: count the op as memory-bound
            flops = 0
    moved = 0 if func.is_view else sum(t.nbytes for t in inputs) + sum(t.nbytes for t in outputs)
    dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
    return OpRecord(str(packet), flops, moved, dtype)


@contextlib.contextmanager
def fake_tensors() -> Iterator[torch._subclasses.fake_tensor.FakeTensorMode]:
    """FakeTensorMode on the CPU device, with two adjustments this torch build needs to build a Trainer
    under it: fresh fake tensors are not memoized (the memo's weak reference stops `Module.to` from
    swapping a fake parameter), and a fake tensor can be deep-copied (G_ema is a deep copy of G)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    def deepcopy_fake(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        with torch.no_grad():
            new = self.clone(memory_format=torch.preserve_format)
        if getattr(self, "_is_param", False):
            new = torch.nn.Parameter(new, self.requires_grad)
        else:
            new.requires_grad_(self.requires_grad)
        memo[id(self)] = new
        return new

    mode = FakeTensorMode()
    mode.fake_tensor_converter.set_tensor_memo = lambda t, v: None
    had = "__deepcopy__" in FakeTensor.__dict__
    previous = FakeTensor.__dict__.get("__deepcopy__")
    FakeTensor.__deepcopy__ = deepcopy_fake
    try:
        with mode:
            yield mode
    finally:
        if had:
            FakeTensor.__deepcopy__ = previous
        else:
            del FakeTensor.__deepcopy__


class RandomLoader:
    """Random images in [-1, 1] and labels, a new batch at every call, at the phase's size."""

    def __init__(self, batch: int, resolution: int, num_classes: int):
        self.manifest = Manifest("plan", resolution, "png", [str(i) for i in range(num_classes)], [])
        self.batch, self.resolution, self.num_classes = batch, resolution, num_classes
        self.skipped_corrupt = self.read_retries = self.skipped_shards = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(self.batch, 3, self.resolution, self.resolution) * 2 - 1
        return x, torch.randint(0, self.num_classes, (self.batch,))

    def reconfigure(self, resolution: int | None = None, batch_size: int | None = None) -> None:
        self.resolution = resolution or self.resolution
        self.batch = batch_size or self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class IterationTrace:
    """The traced iteration of one training phase (the only one without progressive growing)."""

    resolution: int
    micro_batch: int
    peak_bytes: int  # most live bytes in the iteration (sampling included)
    phases: list[PhaseTrace]
    params: dict[str, int]  # bytes of G, D, G_ema parameters and buffers
    grads: dict[str, int]  # bytes of G's and D's gradients (trainable parameters)
    optimizer: dict[str, int]  # bytes of G's and D's optimizer state
    num_params: dict[str, int]


@dataclass
class Trace:
    """Every phase's iteration of a recipe (one entry without progressive growing)."""

    iterations: list[IterationTrace]
    precision: str
    channels_last: bool
    world_size: int
    accum: int  # the recipe's micro-batches per step
    traced_accum: int  # the micro-batches per step traced (at most 2)
    batch: int  # global images per step (the last phase's where phased)
    n_disc_steps: int

    @property
    def peak(self) -> IterationTrace:
        return max(self.iterations, key=lambda it: it.peak_bytes)


def trace_config(cfg: Config, gpu: bool, world_size: int) -> Config:
    """The recipe as the traced process runs it: one process on the CPU device holding one rank's
    micro-batch, the GPU run's precision and memory format where `gpu`, no tracking or evaluation."""
    cfg = copy.deepcopy(cfg)
    t = cfg.train
    t.device = "cpu"
    if gpu:  # what `auto` picks on CUDA
        t.precision = "bf16" if t.precision == "auto" else t.precision
        t.channels_last = "on" if t.channels_last == "auto" else t.channels_last
    # One rank's micro-batches; two of them show what accumulation keeps alive (the gradients of the
    # first), more would only repeat the second: the roofline counts the rest.
    accum = min(t.accum, 2)
    t.batch = t.batch // (world_size * t.accum) * accum
    for phase in t.phases:
        phase.batch = phase.batch // (world_size * t.accum) * accum
    t.accum = accum
    t.check_finite = False  # its flag is read on the host: no value exists under fake tensors
    t.compile = False
    t.plan_check = False  # the traced Trainer does not plan itself
    t.init_from = ""
    t.run_dir = tempfile.mkdtemp(prefix="bigtrain-plan-")
    cfg.track.enabled = False
    cfg.eval.every_kimg = 0.0
    cfg.dist.backend = "ddp"  # one process: no wrapper; ZeRO's partitions are applied by the planner
    cfg.dist.sync_bn = False
    return cfg


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        _tensor_bytes([v for v in state.values() if isinstance(v, torch.Tensor)])
        for state in opt.state.values()
    )


def trace(
    cfg: Config, gpu: bool = True, world_size: int = 1, fake: bool = True, sample: bool = True
) -> Trace:
    """Trace one steady-state iteration of each training phase of `cfg` for one of `world_size` ranks.
    `gpu`: in the GPU run's precision (bf16 autocast, channels_last unless the recipe says otherwise)."""
    from ..train.loop import Trainer  # the planner follows the trainer's code, step for step

    tcfg = trace_config(cfg, gpu, world_size)
    num_classes = cfg.model.num_classes or 10
    first = tcfg.train.phases[0] if tcfg.train.phases else None
    micro = (first.batch if first else tcfg.train.batch) // tcfg.train.accum
    tracker = LiveBytes()
    context = fake_tensors() if fake else contextlib.nullcontext()
    with context, torch.random.fork_rng(), _one_process():
        loader = RandomLoader(micro, first.resolution if first else cfg.model.resolution, num_classes)
        try:
            trainer = Trainer(tcfg, loader=loader)
        except (ConfigError, ValueError):
            raise
        except Exception as e:  # the recipe does not build: one sentence, not the traceback
            raise ConfigError(f"the recipe does not build a trainer: {type(e).__name__}: {e}") from None
        nets = {"G": trainer.G, "D": trainer.D, "G_ema": trainer.ema.model}
        with tracker:
            for net in nets.values():
                tracker.register(*net.parameters(), *net.buffers())
            tracker.register(trainer._sums)
            iterations = []
            for start_images in _phase_starts(tcfg):
                iterations.append(_trace_phase(trainer, tracker, start_images, sample))
    return Trace(
        iterations,
        precision="bf16" if trainer.amp_dtype is not None else "fp32",
        channels_last=trainer.channels_last,
        world_size=world_size,
        accum=cfg.train.accum,
        traced_accum=tcfg.train.accum,
        batch=cfg.train.phases[-1].batch if cfg.train.phases else cfg.train.batch,
        n_disc_steps=cfg.train.n_disc_steps,
    )


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """The traced Trainer is one process even inside a launched job (train.plan_check under torchrun)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _phase_starts(cfg: Config) -> list[int]:
    """The image count at which each phase is traced: the middle of its fade-in (its start without one)."""
    if not cfg.train.phases:
        return [int(cfg.ema.start_kimg * 1000)]  # G_ema averaging, not copying
    starts, kimg = [], 0.0
    for phase in cfg.train.phases:
        starts.append(int((kimg + phase.fade_kimg / 2) * 1000))
        kimg += phase.fade_kimg + phase.stable_kimg
    return starts


def _warm_up(trainer) -> None:
    """What every iteration after the first starts with: each network's gradients (kept from its last
    step until the next zero_grad) and its optimizer state, made by one optimizer step on zero
    gradients instead of a whole iteration (half the trace's time)."""
    for net, opt in ((trainer.G, trainer.opt_g), (trainer.D, trainer.opt_d)):
        for p in net.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        opt.step()


def _trace_phase(trainer, tracker: LiveBytes, images: int, sample: bool) -> IterationTrace:
    """The iteration at `images` with every lazy regularizer due, after a warm-up; then sampling."""
    trainer.images, trainer.iteration = images, 0  # the phase; every lazy step due
    if trainer.schedule:
        trainer._enter_phase()
    _warm_up(trainer)
    phases: list[PhaseTrace] = []
    originals = {}

    def labelled(method_name: str, label):
        method = getattr(trainer, method_name)
        originals[method_name] = method

        def run(*args, **kwargs):
            name, network, interval = label(*args)
            with tracker.in_phase(PhaseTrace(name, network=network, interval=interval)) as phase:
                result = method(*args, **kwargs)
            phases.append(phase)
            return result

        setattr(trainer, method_name, run)

    labelled("_d_step", lambda: ("D step", "d", 1))
    labelled("_g_step", lambda reals: ("G step", "g", 1))
    labelled("_lazy_step", lambda reg, reals: (f"{reg.title} step", reg.network, reg.interval))
    tracker.reset_peak()
    try:
        trainer.train_step()
    finally:
        for name in originals:
            delattr(trainer, name)  # the class's methods again
    if sample:
        n = trainer.cfg.eval.batch
        with tracker.in_phase(PhaseTrace("eval sampling", interval=0)) as phase:
            generator = torch.Generator().manual_seed(0)
            images_out = trainer.evaluator.sampler.stream(generator)(n)
            del images_out
        phases.append(phase)
    nets = {"G": trainer.G, "D": trainer.D, "G_ema": trainer.ema.model}
    resolution = trainer.phase.resolution if trainer.phase is not None else trainer.cfg.model.resolution
    return IterationTrace(
        resolution=resolution,
        micro_batch=trainer.micro_batch,
        peak_bytes=tracker.peak,
        phases=phases,
        params={k: _tensor_bytes([*n.parameters(), *n.buffers()]) for k, n in nets.items()},
        grads={k: _tensor_bytes([p for p in nets[k].parameters() if p.requires_grad]) for k in ("G", "D")},
        optimizer={"G": _optimizer_bytes(trainer.opt_g), "D": _optimizer_bytes(trainer.opt_d)},
        num_params={k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()},
    )
