"""The training loop: `n_disc_steps` D steps then one G step (each over `accum` micro-batches),
TTUR learning rates, orthogonal regularization of G, EMA of G. Schedules, evaluation, checkpoints and
tracking are called from `run`, not inlined in the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..augment import parse_policy
from ..augment.ada import AdaptiveAugment
from ..config import Config, ConfigError, to_dict, validate
from ..data import make_loader
from ..dist import make_backend, pick_device
from ..eval.evaluator import Evaluator, Sampler
from ..eval.suite import MetricSuite
from ..models import build_models
from ..models.layers import frozen_state
from ..objective import DView, GInputs, PassTools, Regularizer, build_objective, latent_codes, split_scores
from ..objective.views import instance_noise_sigma
from ..plan import planned_peak
from ..seeds import seed_for
from ..track import make_tracker
from .checkpoint import (
    CheckpointError,
    begin_checkpoint,
    fetch_from_store,
    intact_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    staging_dir,
    upload_checkpoint,
)
from .ema import EMA, ema_beta
from .init_from import init_networks
from .phases import PhaseSchedule, PhaseState

log = logging.getLogger(__name__)


__all__ = ["NonFiniteLoss", "Trainer", "pick_device", "seed_for"]


class NonFiniteLoss(RuntimeError):
    """Training stopped after too many consecutive non-finite losses."""


class GracefulStop:
    """Turns SIGTERM (preemption, Kubernetes eviction) into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False

    def __enter__(self) -> GracefulStop:
        # Only the main thread may install handlers; elsewhere (a trial thread) the host owns signals.
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


def make_optimizer(optim, params, lr: float, lazy_ratio: float) -> torch.optim.Optimizer:
    """Adam (fused on CUDA and CPU: one kernel per step, its step count never leaves the device) or
    RMSProp, with lr and the moving averages' decays scaled for lazy regularization (StyleGAN2 app. B)."""
    if optim.name == "rmsprop":
        return torch.optim.RMSprop(params, lr * lazy_ratio, alpha=optim.beta2**lazy_ratio, eps=optim.eps)
    betas = (optim.beta1**lazy_ratio, optim.beta2**lazy_ratio)
    return torch.optim.Adam(params, lr * lazy_ratio, betas, optim.eps, fused=optim.fused or None)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        loader=None,
        recipe: str = "",
        run_params: dict[str, str] | None = None,
    ):
        """`loader` replaces the shard loader (benchmarks feed random data); it needs `manifest`,
        `__next__`, `state_dict`, `load_state_dict` and `skipped_corrupt` like ShardLoader.
        `recipe`: the recipe's name (its file name), for the MLflow run name.
        `run_params`: MLflow params beside the config's (a sweep trial's bundle names)."""
        self.backend = backend = make_backend(cfg)
        self.rank, self.world_size, self.device = backend.rank, backend.world_size, backend.device
        validate(cfg, world_size=self.world_size)
        t = cfg.train
        self.cfg = cfg
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if t.precision == "bf16" or (t.precision == "auto" and on_cuda) else None
        )
        self.channels_last = t.channels_last == "on" or (t.channels_last == "auto" and on_cuda)
        self.run_dir = Path(t.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_from = self._checkpoint_to_resume() if resume else None
        # Progressive growing: the phase at the current kimg sets resolution, fade-in, batch and lr.
        self.schedule = PhaseSchedule(t.phases) if t.phases else None
        self.phase: PhaseState | None = None
        self.batch = self.schedule.at(0.0).batch if self.schedule else t.batch  # global images per step
        self.micro_batch = self.batch // (self.world_size * t.accum)

        self.loader = loader or make_loader(cfg, self.micro_batch, self.device, self.rank, self.world_size)
        manifest = self.loader.manifest
        self.num_classes = cfg.model.num_classes or max(manifest.num_classes, 1)
        if manifest.num_classes and self.num_classes != manifest.num_classes:
            raise ConfigError(
                f"model.num_classes={self.num_classes} but {cfg.data.path} has {manifest.num_classes} classes"
            )
        self.dataset_name = manifest.name

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        G, D = build_models(cfg.model, self.num_classes, latent_codes(cfg))  # codes: InfoGAN's, or None
        G = backend.convert(G)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(self.device, memory_format=memory_format).train()
        self.D = D.to(self.device, memory_format=memory_format).train()
        self.ema = EMA(self.G)
        # Fine-tuning: the source's weights (its path and sha256 recorded); a checkpoint to resume wins.
        self.init_from: dict[str, str] | None = None
        if t.init_from and resume_from is None:
            networks = {"G": self.G, "D": self.D, "G_ema": self.ema.model}
            self.init_from = init_networks(t.init_from, networks, self.num_classes, cfg.model.name)
            if cfg.ema.rampup > 0:
                log.info("train.init_from: EMA ramp-up off (ema.rampup=%g is not used)", cfg.ema.rampup)
        # FreezeD: before the optimizer and the distributed wrappers, which then leave the blocks out.
        frozen = [p for block in self.D.freeze_input_blocks(cfg.model.freeze_d) for p in block.parameters()]
        if frozen:
            log.info(
                "model.freeze_d=%d: D's first blocks are frozen (%d of its %d weights)", cfg.model.freeze_d,
                sum(p.numel() for p in frozen), sum(p.numel() for p in self.D.parameters()),
            )  # fmt: skip
        # The adversarial loss and the regularizers that are on (bigtrain/objective/).
        self.objective = build_objective(
            cfg, self.G, backend.supports_grad_hooks, self.device, backend.all_mean, self.D, self.num_classes,
            rank=self.rank, gather=backend.gather_rows,
        )  # fmt: skip
        self.lazy_ratio = {
            which: self.objective.lazy_ratio(which, getattr(cfg.optim, f"{which}_reg_interval"))
            for which in ("g", "d")
        }
        self.opt_g, self.opt_d = (
            make_optimizer(
                cfg.optim, [p for p in net.parameters() if p.requires_grad], lr, self.lazy_ratio[which]
            )
            for which, net, lr in (("g", self.G, cfg.optim.lr_g), ("d", self.D, cfg.optim.lr_d))
        )  # FreezeD's frozen blocks are not trained
        backend.wrap(self.G, self.D, self.opt_g, self.opt_d)
        # Passes whose loss takes a gradient of a gradient (R1, WGAN-GP, path length) call the eager
        # modules: AOTAutograd, which torch.compile trains through, has no double backward.
        self.g_train_eager = backend.g_train
        self.g_train = torch.compile(backend.g_train) if t.compile else backend.g_train
        self.d_train = torch.compile(backend.d_train) if t.compile else backend.d_train
        self.g_inputs = GInputs(
            self.G, t.seed, cfg.model.z_dim, self.num_classes, self.rank, self.world_size, self.device,
            hooks=self.objective.regularizers,  # zCR's D part also reads the D step's latents
        )  # fmt: skip
        a = cfg.augment
        self.ada = (  # ADA's p and its controller (Karras et al. 2020)
            AdaptiveAugment(
                a.ada, a.ada_p, a.ada_target, a.ada_interval, a.ada_kimg, self.device, backend.all_mean
            )
            if a.ada
            else None
        )
        self.d_view = DView(
            self.D,
            self.d_train,
            backend.d_train,
            parse_policy(a.diffaugment),
            self.g_inputs.generator,
            self.ada,
            self.objective.d_logits,  # None: D's own logit
        )

        self.images = 0  # real images shown to D, all ranks together: the kimg counter
        self.iteration = 0
        self._sums = torch.zeros(4, device=self.device)  # loss_d, loss_g, D(real), D(fake) since last log
        self._sum_steps = 0
        self.last_metrics: dict[str, float] = {}
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss
        self._bad_in_a_row = {"d": 0, "g": 0}  # consecutive skipped steps per network
        self.stop = GracefulStop()
        self._stop_agreed = False
        suite = MetricSuite(
            cfg.eval.metrics,
            cfg.data.path,
            manifest,
            self.device,
            cfg.eval.num_samples,
            cfg.eval.reference_images,
        )
        sampler = Sampler(
            self.ema.model,
            cfg.model.z_dim,
            self.num_classes,
            self.device,
            cfg.eval.truncation_cutoff,
            self._autocast,
        )
        self.evaluator = Evaluator(
            sampler, suite, cfg.eval, self.run_dir, f"{cfg.model.name}{cfg.model.resolution} on {self.dataset_name}",
            stats_batch=self.micro_batch, stats_batches=cfg.ema.standing_stats_batches, rank=self.rank,
            save_best=lambda: self.save(name="best"), network_metrics=self.objective.eval_metrics,
        )  # fmt: skip
        # Called on every rank after each recorded evaluation with its metrics (sweeps report from here).
        self.on_evaluate: list = []
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from))
            self.backend.load_engine_state(resume_from)
            log.info("resumed from %s at %.3f kimg", resume_from, self.kimg)
        if self.schedule:
            self._enter_phase()
        model = f"{cfg.model.name}{cfg.model.resolution}"
        run_name = cfg.track.run_name or f"{recipe or model}-{self.dataset_name}" + (
            f"-{model}" if recipe else ""
        )
        self.tracker = make_tracker(cfg, self.run_dir, self.rank, run_name, run_params)
        self.evaluator.tracker = self.tracker
        if self.init_from is not None:
            self.tracker.set_tags({f"bigtrain.init_from.{k}": v for k, v in self.init_from.items()})
        self.planned_peak = planned_peak(cfg, self.device, self.world_size) if t.plan_check else None

    def _checkpoint_to_resume(self) -> Path | None:
        """`--resume`: the run folder's newest intact checkpoint (fetched from train.checkpoint_store
        first where set), or None for a new run."""
        t = self.cfg.train
        if t.checkpoint_store:
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # one download per node
                fetched = fetch_from_store(t.checkpoint_store, self.run_dir)
                if fetched:
                    log.info("fetched %s from %s", ", ".join(fetched), t.checkpoint_store)
            self.backend.barrier()
        ckpt, passed_over = intact_checkpoint(self.run_dir)
        for bad, problem in passed_over:
            log.warning("checkpoint %s is damaged (%s); passing over it", bad, problem)
        if ckpt is None and passed_over:
            raise CheckpointError(
                f"no intact checkpoint in {self.run_dir}: "
                + "; ".join(f"{bad.name}: {problem}" for bad, problem in passed_over)
            )
        if ckpt is None:
            log.info("no checkpoint in %s: starting a new run", self.run_dir)
        elif passed_over:
            log.warning("resuming from %s instead of %s", ckpt, passed_over[0][0])
        if ckpt is not None and t.init_from:
            log.info("resuming from %s: train.init_from=%s is not used", ckpt, t.init_from)
        return ckpt

    # ------------------------------------------------------------------ the step

    @property
    def kimg(self) -> float:
        return self.images / 1000.0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _real(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def train_step(self) -> None:
        """One iteration: n_disc_steps D steps, then one G step, then the EMA update. A lazy regularizer
        takes its own optimizer step after every interval-th step of its network, as in stylegan2-ada's
        phases.

        A network's state (SN power iterations, BN statistics) advances only in its own step, once per
        step whatever the accumulation: the D step does not touch G, nor the G step D."""
        t = self.cfg.train
        if self.schedule:
            self._enter_phase()
        if self.cfg.optim.lr_decay == "linear":
            self._decay_learning_rates()
        a = self.cfg.augment
        self.d_view.noise_sigma = instance_noise_sigma(a.instance_noise, a.instance_noise_kimg, self.kimg)
        for k in range(t.n_disc_steps):
            loss_d, real_logits, fake_logits, reals = self._d_step()
            for regularizer in self.objective.lazy("d"):
                if regularizer.due(self.iteration * t.n_disc_steps + k):
                    self._lazy_step(regularizer, reals)
        self.D.requires_grad_(False)  # frozen D in the G step: no D gradients computed or all-reduced
        loss_g = self._g_step(reals)
        for regularizer in self.objective.lazy("g"):
            if regularizer.due(self.iteration):
                self._lazy_step(regularizer, [None] * t.accum)
        self.D.requires_grad_(True)  # the trainable part: FreezeD's blocks stay frozen (models/roles.py)

        self.images += t.n_disc_steps * self.batch
        e = self.cfg.ema
        rampup = 0.0 if self.init_from is not None else e.rampup  # fine-tuning: no ramp-up (stylegan2-ada)
        beta = 0.0 if self.kimg < e.start_kimg else ema_beta(self.batch, e.halflife_kimg, self.kimg, rampup)
        self.ema.update(self.G, beta)
        self.iteration += 1
        # Metrics stay on the device until a log point.
        losses = [
            loss_d.detach() * t.accum,
            loss_g.detach() * t.accum,
            real_logits.detach().mean(),
            fake_logits.detach().mean(),
        ]
        self._sums += torch.stack(losses)
        self._sum_steps += 1

    def _d_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """D's main optimizer step over `accum` micro-batches: one D pass over the reals, the fakes and
        any set a regularizer adds (WGAN-GP's interpolates). Returns the last loss and logits, and each
        micro-batch's reals (a lazy D regularizer reuses them, as stylegan2-ada's Dreg phase does)."""
        t, b, objective = self.cfg.train, self.backend, self.objective
        tools, side = self._pass_tools(), None  # side: the side passes' figure (consensus optimization)
        b.zero_grad("d")
        reals = []
        for i in range(t.accum):
            x, y = self._real()
            reals.append((x, y))
            z, y_fake, g_kwargs = self.g_inputs(self.micro_batch)
            with torch.no_grad(), frozen_state(self.G, batchnorm=True), self._autocast():
                fake = self.G(z, y_fake, **g_kwargs)  # plain G: no gradients, no communication
                fake, y_d = objective.d_fakes(fake, y_fake, self.g_inputs.generator)  # what D scores (replay)
            with b.accumulating("d", last=i == t.accum - 1), self._first_only(self.D, i), self._autocast():
                extra = objective.extra_d_sets(x, y, fake, y_d, self.g_inputs.generator)
                sets = [(x, y), (fake, y_d), *(images_labels for _, images_labels in extra)]
                all_images = torch.cat([images for images, _ in sets])
                out = self.d_view(
                    all_images,
                    torch.cat([labels for _, labels in sets]),
                    parts=all_images.shape[0] // self.micro_batch,  # a set may hold several micro-batches
                    double_backward=objective.d_double_backward,
                    all_outputs=objective.d_outputs("d"),
                )
                real, fake_scores, *extra_scores = split_scores(sets, out)
                if self.ada is not None:  # ADA's overfitting heuristic: the sign of D on (augmented) reals
                    self.ada.observe(real.logits)
                extra_scored = [(r, scores) for (r, _), scores in zip(extra, extra_scores)]
                loss_d = objective.d_loss(real, fake_scores, extra_scored) / t.accum
                b.backward(loss_d, "d")
                side = objective.side_passes("d", tools, (x, y), (z, y_fake, g_kwargs), i == t.accum - 1)
        objective.after_backward("d")
        if self._guarded_step("d", loss_d if side is None else loss_d + side):
            objective.after_step("d")  # not after a skipped step: the parameters did not move
        if self.ada is not None:
            self.ada.after_d_step(self.batch)
        return loss_d, real.logits, fake_scores.logits, reals

    def _g_step(self, reals: list) -> torch.Tensor:
        """G's main optimizer step over `accum` micro-batches, with the G regularizers of the main pass.
        `reals`: the last D step's micro-batches, which a relativistic G loss compares with."""
        t, b, objective = self.cfg.train, self.backend, self.objective
        tools, side = self._pass_tools(), None
        b.zero_grad("g")
        for i in range(t.accum):
            z, y_fake, g_kwargs = self.g_inputs(self.micro_batch, training_g=True)
            last = i == t.accum - 1
            with (
                b.accumulating("g", last=last),
                self._first_only(self.G, i),
                frozen_state(self.D),
                self._autocast(),
            ):
                fake = self.g_train(z, y_fake, **g_kwargs)
                d_params = objective.d_params_for_g(self.d_view, reals[i], (fake, y_fake))  # None: D's own
                outputs = objective.d_outputs("g")
                real = None
                if objective.needs_reals:  # D's view of the D step's reals (relativistic, feature matching)
                    with torch.no_grad() if d_params is None else contextlib.nullcontext():  # unrolled: on G
                        scored = self.d_view(*reals[i], train=False, all_outputs=outputs, params=d_params)
                    (real,) = split_scores([reals[i]], scored)
                scored = self.d_view(fake, y_fake, train=False, all_outputs=outputs, params=d_params)
                (fake_scores,) = split_scores([(fake, y_fake)], scored)
                loss_g = objective.loss.g(fake_scores.logits, None if real is None else real.logits) / t.accum
                # The paper's feature matching trains G on its term alone: the adversarial loss is then
                # only reported.
                total = loss_g if objective.adversarial_g else torch.zeros_like(loss_g)
                for penalty in objective.g_penalties(fake_scores, real, last, tools, reals[i]):
                    total = total + penalty
                b.backward(total, "g")
                side = objective.side_passes("g", tools, reals[i], (z, y_fake, g_kwargs), last)
        objective.after_backward("g")
        if self._guarded_step("g", total if side is None else total + side, check_stop=True):
            objective.after_step("g")
        return loss_g

    def _lazy_step(self, regularizer: Regularizer, reals: list) -> None:
        """A lazy regularizer's own optimizer step of its network over `accum` micro-batches, the penalty
        weighted by the interval (StyleGAN2 appendix B; stylegan2-ada's Dreg and Greg phases)."""
        t, b, which = self.cfg.train, self.backend, regularizer.network
        tools = self._pass_tools()
        b.zero_grad(which)
        for i in range(t.accum):
            last = i == t.accum - 1
            with (
                b.accumulating(which, last=last),
                frozen_state(self.G if which == "g" else self.D),
                self._autocast(),
            ):
                penalty, zero_term = regularizer.lazy_penalty(tools, reals[i])
                penalty = penalty * regularizer.interval / t.accum
                b.backward(penalty + zero_term, which)
        self._guarded_step(which, penalty, phase=regularizer.title)

    def _pass_tools(self) -> PassTools:
        """What a regularizer's own pass may call in this step (a lazy step, a side pass)."""
        return PassTools(
            d=self.d_view,
            g=self.g_train_eager,
            g_inputs=lambda batch: self.g_inputs(batch, training_g=True),
            generator=self.g_inputs.generator,
            all_mean=self.backend.all_mean,
            micro_batch=self.micro_batch,
        )

    def _enter_phase(self) -> None:
        """Follow the schedule: on a new phase, the loader's resolution and batch, the learning rates
        and fresh optimizer moments for the grown networks (as the paper's code resets Adam for each new
        resolution); at every step, the fade-in alpha of G, D and G_ema."""
        state = self.schedule.at(self.kimg)
        if self.phase is None or state.index != self.phase.index:
            if self.phase is not None:  # a phase boundary crossed in training (not a resume)
                for opt in (self.opt_g, self.opt_d):
                    opt.state.clear()
            self.batch = state.batch
            self.micro_batch = state.batch // (self.world_size * self.cfg.train.accum)
            self.loader.reconfigure(state.resolution, self.micro_batch)
            self._set_learning_rates(state.lr_g, state.lr_d)
            if self.rank == 0:
                log.info(
                    "phase %d at %.2f kimg: %dx%d, fade-in over %.0f kimg, batch %d",
                    state.index, self.kimg, state.resolution, state.resolution,
                    self.schedule.phases[state.index].fade_kimg, state.batch,
                )  # fmt: skip
        self.phase = state
        for model in (self.G, self.D, self.ema.model):
            model.set_phase(state.resolution, state.alpha)

    def _set_learning_rates(self, lr_g: float, lr_d: float) -> None:
        """The optimizers' learning rates, scaled for lazy regularization as at construction."""
        for opt, lr, which in ((self.opt_g, lr_g, "g"), (self.opt_d, lr_d, "d")):
            for group in opt.param_groups:
                group["lr"] = lr * self.lazy_ratio[which]

    def _decay_learning_rates(self) -> None:
        """optim.lr_decay=linear: the rates (the phase's, else optim's) times 1 - kimg / total_kimg, a
        function of kimg alone, so a resumed run follows the same schedule."""
        o, p = self.cfg.optim, self.phase
        factor = max(0.0, 1.0 - self.kimg / self.cfg.train.total_kimg)
        lr_g, lr_d = (p.lr_g, p.lr_d) if p is not None else (o.lr_g, o.lr_d)
        self._set_learning_rates(lr_g * factor, lr_d * factor)

    @staticmethod
    def _first_only(module: torch.nn.Module, micro_batch: int):
        """SN power iteration on the first micro-batch of a step only."""
        return frozen_state(module) if micro_batch > 0 else contextlib.nullcontext()

    def _guarded_step(
        self, which: str, loss: torch.Tensor, check_stop: bool = False, phase: str = ""
    ) -> bool:
        """Optimizer step, unless the loss is non-finite on any rank (then every rank skips it); whether
        it stepped.
        The G step's collective also carries the SIGTERM flag, so all ranks stop at the same step.
        `phase`: a regularization step's name ("R1", "path length"), for messages."""
        check_finite = self.cfg.train.check_finite
        wants_stop = check_stop and self.stop.requested
        if check_finite or (check_stop and self.world_size > 1):  # one small collective, one host sync
            bad, stop = self.backend.flags_any(check_finite and ~torch.isfinite(loss.detach()), wants_stop)
        else:
            bad, stop = False, wants_stop
        self._stop_agreed = self._stop_agreed or stop
        if not bad:
            self.backend.step(which)
            self._bad_in_a_row[which] = 0
            return True
        self.backend.zero_grad(which)
        self.skipped_steps += 1
        self._bad_in_a_row[which] += 1
        in_a_row = self._bad_in_a_row[which]
        what = f"{which.upper()} {phase}".strip()
        log.warning("non-finite %s loss at %.3f kimg: step skipped (%d in a row)", what, self.kimg, in_a_row)
        if in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteLoss(
                f"{in_a_row} consecutive non-finite {what} losses (train.max_nonfinite_steps); training "
                f"stopped at {self.kimg:.3f} kimg, last good checkpoint: {latest_checkpoint(self.run_dir) or 'none yet'}"
            )
        return False

    # ------------------------------------------------------------------ around the step

    @property
    def metric_history(self) -> list[dict[str, float]]:
        return self.evaluator.metric_history

    @property
    def best(self) -> dict[str, float]:
        return self.evaluator.best

    def evaluate(self, truncation: float | None = None, record: bool = True) -> dict[str, float]:
        """The evaluator's metrics of G_ema now (see Evaluator.evaluate); a recorded evaluation also
        updates `last_metrics` and is passed to the `on_evaluate` callbacks."""
        resolution = self.phase.resolution if self.phase is not None else None
        metrics = self.evaluator.evaluate(self.kimg, self.images, truncation, record, resolution)
        if record:
            self.last_metrics.update(metrics)
            for callback in self.on_evaluate:
                callback(self, metrics)
        return metrics

    def truncation_sweep(self) -> list[dict[str, float]]:
        """The metrics at each `eval.truncation_sweep` threshold (see Evaluator.truncation_sweep)."""
        resolution = self.phase.resolution if self.phase is not None else None
        return self.evaluator.truncation_sweep(
            self.cfg.eval.truncation_sweep, self.kimg, self.images, resolution
        )

    def log_metrics(self, elapsed: float, images: int) -> dict[str, float]:
        sums = (self._sums / max(self._sum_steps, 1)).tolist()  # the host sync, once per log point
        self._sums.zero_()
        self._sum_steps = 0
        metrics = dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), sums))
        metrics.update(
            kimg=self.kimg,
            img_per_s=images / max(elapsed, 1e-9),
            lr_g=self.opt_g.param_groups[0]["lr"],
            lr_d=self.opt_d.param_groups[0]["lr"],
        )
        if self.phase is not None:
            metrics.update(phase=self.phase.index, resolution=self.phase.resolution, alpha=self.phase.alpha)
        if self.cfg.augment.instance_noise:
            metrics["instance_noise_sigma"] = self.d_view.noise_sigma
        if self.ada is not None:
            metrics.update(ada_p=float(self.ada.p), ada_rt=float(self.ada.rt))
        metrics["data_skipped_corrupt"] = self.loader.skipped_corrupt
        metrics["data_read_retries"] = self.loader.read_retries  # non-zero only for a URL data.path
        metrics["data_skipped_shards"] = self.loader.skipped_shards
        metrics["skipped_steps"] = self.skipped_steps
        metrics.update(self.objective.metrics())  # the loss's own figures (BEGAN's k_t and M_global)
        if self.device.type == "cuda":
            metrics["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:  # the process's, not only tensors'
            metrics["host_rss_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if self.planned_peak is not None:  # the first log point: the plan beside the measurement
            metrics["plan_mem_peak_gib"], self.planned_peak = self.planned_peak / 2**30, None
            measured = metrics.get("gpu_mem_peak_gib", metrics.get("host_rss_peak_gib"))
            log.info(
                "peak memory: measured %.2f GiB, planned %.2f GiB", measured, metrics["plan_mem_peak_gib"]
            )
        self.tracker.log_metrics(metrics, step=self.images)
        self.last_metrics.update(metrics)
        return metrics

    def save(self, name: str | None = None) -> Path | None:
        """Every rank takes part (buffers synchronized, loader positions gathered, engine shards
        written to the staging folder); rank 0 writes state.pt and renames the folder into place.
        `name`: a named checkpoint (e.g. "best") that `latest` does not point to and pruning keeps."""
        self.backend.broadcast_buffers(self.G)
        self.backend.broadcast_buffers(self.ema.model)
        state = self.state_dict()
        periodic = name is None
        name = name or f"step-{self.iteration:08d}"
        if self.rank == 0:
            begin_checkpoint(self.run_dir, name)
        self.backend.barrier()
        self.backend.save_engine_state(staging_dir(self.run_dir, name))
        self.backend.barrier()
        path = None
        if self.rank == 0:
            path = save_checkpoint(
                self.run_dir,
                name,
                state,
                to_dict(self.cfg),
                self.cfg.train.keep_checkpoints,
                mark_latest=periodic,
            )
            log.info("checkpoint %s (%.2f kimg)", path, self.kimg)
            if self.cfg.train.checkpoint_store:
                upload_checkpoint(
                    path, self.cfg.train.checkpoint_store, self.cfg.train.keep_checkpoints, periodic
                )
        self.backend.barrier()  # nobody moves on (or exits) before the checkpoint is complete
        return path

    def run(self) -> str:
        """Train to `train.total_kimg`. Returns "finished", or "terminated" after a SIGTERM checkpoint."""
        t, cfg = self.cfg.train, self.cfg
        total = int(t.total_kimg * 1000)
        eval_every = int(cfg.eval.every_kimg * 1000)
        ckpt_every = int(t.ckpt_every_kimg * 1000)
        crossed = lambda before, every: every > 0 and before // every != self.images // every  # noqa: E731
        status = "finished"
        bar = tqdm(
            total=t.total_kimg,
            initial=self.kimg,
            unit="kimg",
            desc="train",
            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]",
            mininterval=1.0,
            disable=self.rank != 0,
        )
        with self.stop:
            if self.images == 0 and eval_every:
                self.evaluate()
            window_start, window_images = time.time(), self.images
            while self.images < total:
                if self._stop_agreed:
                    status = "terminated"
                    log.warning("SIGTERM: saving a checkpoint at %.2f kimg and stopping", self.kimg)
                    break
                before = self.images
                self.train_step()
                bar.update(min(self.images, total) / 1000.0 - bar.n)
                if self.iteration % t.log_every == 0:
                    m = self.log_metrics(time.time() - window_start, self.images - window_images)
                    bar.set_postfix_str(
                        f"{m['img_per_s']:.0f} img/s, loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f}"
                    )
                    window_start, window_images = time.time(), self.images
                if crossed(before, eval_every) and self.images < total:
                    self.evaluate()
                if crossed(before, ckpt_every) and self.images < total:
                    self.save()
        bar.close()
        if status == "finished" and eval_every:
            self.evaluate()
        if status == "finished" and eval_every and self.cfg.eval.truncation_sweep:  # every_kimg=0: none
            self.truncation_sweep()
        self.save()
        self.loader.close()  # its workers stop now, not whenever the garbage collector meets them
        self.tracker.close("FINISHED" if status == "finished" else "KILLED")
        return status

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        """Everything needed to resume exactly; the loader positions of every rank (collective call)."""
        loader_states = self.backend.all_gather_object(self.loader.state_dict())
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict(),
            **self.backend.optimizer_state(),
            "images": self.images,
            "iteration": self.iteration,
            "skipped_steps": self.skipped_steps,
            "loader": loader_states,
            "world_size": self.world_size,
            "latent_draws": self.g_inputs.draws,
            **self.objective.state_dict(),
            **(self.ada.state_dict() if self.ada is not None else {}),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "num_classes": self.num_classes,
            "init_from": self.init_from,  # fine-tuning: the source checkpoint's path and sha256 (else None)
            "metric_history": self.metric_history,
            "best": self.best,
            "config": to_dict(self.cfg),
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        if "imported" in state:
            raise ConfigError(
                f"{self.run_dir} holds weights brought in by `bigtrain import`, not a training checkpoint to "
                f"resume: start a run from them with train.init_from={self.run_dir} and another train.run_dir"
            )
        if int(state["world_size"]) != self.world_size:
            raise ConfigError(
                f"the checkpoint was written by {state['world_size']} processes and this run has {self.world_size}; "
                "resume with the same world size (the data position is per rank)"
            )
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.ema.model.load_state_dict(state["G_ema"])
        except RuntimeError as e:
            raise ConfigError(
                f"the checkpoint's model does not match this config's model section: {str(e).splitlines()[0]}"
            ) from None
        self.backend.load_optimizer_state(state)
        # The config's learning rates win over the saved ones (a sweep's exploit step may change them).
        self._set_learning_rates(self.cfg.optim.lr_g, self.cfg.optim.lr_d)
        self.objective.load_state_dict(state)
        if self.ada is not None and "ada_p" in state:  # else ADA was off before: p starts at augment.ada_p
            self.ada.load_state_dict(state)
        self.images, self.iteration = int(state["images"]), int(state["iteration"])
        self.init_from = state.get("init_from")  # a resumed fine-tuning run stays one (EMA ramp-up off)
        self.skipped_steps = int(state["skipped_steps"])
        self.loader.load_state_dict(state["loader"][self.rank])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.g_inputs.draws = int(state["latent_draws"])
        self.evaluator.load_state_dict(state)
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
