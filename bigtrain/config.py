"""One typed config tree for every run.

A recipe is a YAML file whose keys mirror the dataclasses below; any field can be overridden on the
command line with a dotted key (`train.batch=512 optim.lr_d=4e-4`). Unknown keys, wrong types and
impossible values fail at load with a `ConfigError` that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError  # noqa: F401  (raised by every part; the models import it from there)

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    path: str = "data/digits"  # folder with manifest.json and the shards (from `bigtrain prepare`)
    loader: str = "auto"  # auto (DALI on CUDA when installed, else webdataset) | webdataset | dali
    num_workers: int = 2  # loader worker processes (webdataset) or decoding threads (dali) per rank
    shuffle_buffer: int = 512  # samples held for in-stream shuffling (per worker)
    hflip: bool = False  # random horizontal flip of real images
    verify_checksums: bool = True  # sha256 of this rank's shards against the manifest at start
    # A URL data.path (http(s)://, s3://, gs://): each shard is fetched whole and checked as it arrives.
    retries: int = 4  # attempts after a transient fault (connection reset, 5xx, a short body)
    retry_backoff_s: float = 0.5  # the first wait; doubled per retry, at most 30 s
    max_bad_shards: float = 0.1  # fraction of a worker's shards per epoch that may stay unreadable
    cache_dir: str = (
        ""  # DALI from a URL: node-local shard cache ("": $BIGTRAIN_CACHE/datasets/<name>/shards)
    )
    cache_gb: float = 20.0  # its size cap per rank; it must hold two shards
    # The semi-supervised GAN's labelled subset (regularize.semi_supervised; bigtrain/data/labelled.py):
    # this many examples of each class (Salimans et al.'s MNIST: 10), or about this fraction of them; 0: none
    labelled_per_class: int = 0
    labelled_fraction: float = 0.0
    labelled_seed: int = 0  # which examples: a seed apart from train.seed (the authors' --seed_data)


@dataclass
class _ModelCommon:
    """The `model` keys every family reads; a family's own knobs are in its section, `model.<name>`
    (the `Section` of its file in bigtrain/models/, added below from the registry)."""

    name: str = "biggan"
    resolution: int = 32  # output side in pixels; a power of two
    z_dim: int = 120  # latent size (BigGAN splits it into hierarchical chunks)
    num_classes: int = 0  # 0: from the dataset manifest; 1: unconditional
    # Minibatch discrimination in D (Salimans et al. 2016): B kernels of C dimensions (0 kernels: off;
    # the paper: 100 of 5), any family.
    minibatch_kernels: int = 0
    minibatch_kernel_dims: int = 5
    # AC-GAN's auxiliary classifier (Odena et al. 2017): a class head on D's penultimate features, any
    # family, trained by regularize.aux_classifier.weight (ProGAN's G then takes the label too).
    aux_classifier: bool = False
    # FreezeD (Mo et al. 2020, "Freeze the Discriminator: a Simple Baseline for Fine-Tuning GANs"): D's
    # first this many blocks, counted from the input side, keep their weights and buffers (spectral
    # norm's vectors included) for the whole run; 0: all of D trains. What a block is, per family:
    # DiscriminatorRole.input_blocks (stylegan2-ada's --freezed counts layers instead: see stylegan2.py).
    freeze_d: int = 0
    # Virtual batch normalization in G (Salimans et al. 2016, section 3.4; bigtrain/models/vbn.py): the
    # size N of the reference batch every BatchNorm of G then mixes into each example's statistics
    # (0: off; the paper's: the minibatch size). The families with BatchNorm in G only.
    vbn: int = 0

    @property
    def section(self) -> Any:
        """The section of the family `name` names."""
        return getattr(self, self.name)


from .models import FAMILIES  # noqa: E402  (the families' sections; the models import only bigtrain.errors)

ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [(name, family.section, field(default_factory=family.section)) for name, family in FAMILIES.items()],
    bases=(_ModelCommon,),
    namespace={"__module__": __name__, "__doc__": "model: the common keys and one section per family."},
)


# loss.divergence's values (bigtrain/objective/fgan.py's DIVERGENCES, in its order)
FGAN_DIVERGENCES = (
    "total_variation", "kl", "reverse_kl", "pearson", "neyman", "hellinger", "jeffrey", "js", "gan",
)  # fmt: skip


@dataclass
class LossConfig:
    # The adversarial loss (bigtrain/objective/adversarial.py): hinge | nonsat | minimax | lsgan |
    # wgan (with regularize.gradient_penalty) | rasgan | ralsgan | rahinge (relativistic average) |
    # ebgan | began (energy-based, bigtrain/objective/energy.py: model.name ebgan or began) |
    # fgan (f-GAN, bigtrain/objective/fgan.py, with loss.divergence).
    name: str = "hinge"
    # f-GAN's divergence (Nowozin et al. 2016, Table 2); `hellinger` is squared Hellinger, `js` Jensen-Shannon
    # (its f gives 2 JSD), `gan` the GAN row (2 JSD - log 4: loss.name=nonsat's D loss)
    divergence: str = field(default="gan", metadata={"choices": FGAN_DIVERGENCES})
    real_label: float = 1.0  # one-sided label smoothing of nonsat, minimax, rasgan (Salimans et al.: 0.9)
    lsgan_a: float = 0.0  # LSGAN's targets (Mao et al. 2017): D's for fakes,
    lsgan_b: float = 1.0  # D's for reals,
    lsgan_c: float = 1.0  # and G's for its fakes
    # EBGAN's margin m (Zhao et al. 2017, eq. 1; 10 on MNIST, sec. 4.1; appendix C, unverified: CelebA 20,
    # LSUN 80) on the energy's scale
    ebgan_margin: float = 20.0
    began_gamma: float = 0.5  # BEGAN's diversity ratio E[L(G(z))] / E[L(x)] (Berthelot et al. 2017, 3.4: 0.5)
    began_lambda_k: float = 0.001  # the gain of k_t's proportional control (sec. 3.4 / reference: 0.001)
    began_k0: float = 0.0  # k_0 (sec. 3.4: 0)


# The regularizers (bigtrain/objective/), one section each under `regularize`; a zero weight leaves it off.
@dataclass
class OrthoConfig:
    strength: float = 0.0  # BigGAN's orthogonal regularization beta on G (the paper: 1e-4)


@dataclass
class GradientPenaltyConfig:
    weight: float = 0.0  # WGAN-GP lambda (target norm 1; ProGAN: 10)
    drift: float = 0.0  # ProGAN's epsilon_drift x E[D(real)^2] keeps D's output near 0 (0.001)


@dataclass
class R1Config:
    gamma: float = 0.0  # (gamma / 2) E[||grad D(x)||^2] on reals
    interval: int = 16  # lazy: its own D step every this many D steps (lr and betas adjusted, appendix B)


@dataclass
class PathLengthConfig:
    weight: float = 0.0  # StyleGAN2's path length regularization (the paper: 2)
    interval: int = 4  # lazy: its own G step every this many G steps
    decay: float = 0.01  # of the running mean of the lengths
    batch_shrink: int = 2  # its pass uses micro-batch / this many samples


@dataclass
class StyleMixingConfig:
    prob: float = 0.0  # StyleGAN2: probability of a second latent's w from a random layer on (0.9)


@dataclass
class LeCamConfig:
    weight: float = 0.0  # LeCam regularization of D (Tseng et al. 2021; their BigGAN CIFAR runs: 0.3)
    decay: float = 0.99  # of its anchors, the moving averages of D's mean output on reals and fakes


@dataclass
class ConsistencyConfig:
    real: float = 0.0  # CR (Zhang et al. 2020): lambda_real on D(x) vs D(T(x)) (their BigGAN CIFAR runs: 10)
    fake: float = 0.0  # bCR (Zhao et al. 2021) also on fakes: lambda_fake (10)


@dataclass
class WeightClipConfig:
    value: float = 0.0  # WGAN's weight clipping of D to [-value, value] after each step (the paper: 0.01)


@dataclass
class LatentConsistencyConfig:
    # zCR (Zhao et al. 2021): lambda_dis on D(G(z)) vs D(G(z + dz)), lambda_gen on -||G(z) - G(z + dz)||^2,
    # dz ~ N(0, sigma^2) (their BigGAN CIFAR-10 runs: 5, 0.5, 0.03)
    dis: float = 0.0
    gen: float = 0.0
    sigma: float = 0.03


@dataclass
class HistoricalAveragingConfig:
    g: float = 0.0  # Salimans et al. 2016: lambda on G's distance from the average of its past parameters
    d: float = 0.0  # and on D's


@dataclass
class UnrolledConfig:
    # Unrolled GAN (Metz et al. 2017): G's loss uses D after this many gradient steps on the batch,
    # differentiated through them (0: off; the paper: 1 to 10)
    steps: int = field(default=0, metadata={"min": 0})
    lr: float = (
        0.01  # the unrolled steps' size (plain gradient steps, eq. 6; the authors' code unrolled Adam)
    )


@dataclass
class FeatureMatchingConfig:
    # Salimans et al. 2016: weight x ||E f(x) - E f(G(z))||^2 on D's penultimate features, added to G's loss
    weight: float = 0.0
    replace: bool = False  # G's loss is feature matching alone (the paper's form): no adversarial G loss


@dataclass
class AuxClassifierConfig:
    # AC-GAN (Odena et al. 2017): weight x cross-entropy of D's class head (model.aux_classifier) on reals
    # and fakes in D's loss, on fakes in G's (the paper: 1)
    weight: float = 0.0


@dataclass
class PullAwayConfig:
    # EBGAN's pull-away term (Zhao et al. 2017, sec. 2.4, eq. 14): weight (lambda_PT; the paper: 0.1,
    # appendix F) x the mean squared cosine similarity of D's features (the encoder's output) of G's fakes
    # over their pairs, added to G's loss
    weight: float = 0.0


@dataclass
class ConsensusConfig:
    # Consensus optimization (Mescheder et al. 2017, "The Numerics of GANs", Algorithm 1): each network's
    # gradient plus gamma x the gradient of 1/2 ||v||^2, v both networks' gradients (0: off; the paper:
    # 10, with optim.name=rmsprop and lr 1e-4)
    gamma: float = 0.0


@dataclass
class InfoConfig:
    # InfoGAN (Chen et al. 2016): latent codes beside z in G's input, a Q head on D's features, and
    # lambda x L_I (cross-entropy of the categorical codes, Gaussian NLL of the continuous) in D's and G's
    # losses on the fakes. On when any code is declared (the paper's MNIST: categorical [10], continuous 2).
    categorical: list[int] = field(default_factory=list)  # K of each categorical code (each >= 2)
    continuous: int = field(default=0, metadata={"min": 0})  # continuous codes, each U(-1, 1)
    lambda_cat: float = 1.0  # lambda of the categorical codes' term (the paper: 1)
    lambda_cont: float = 1.0  # of the continuous codes' (openai/InfoGAN's MNIST: 1, std fixed at 1)
    learn_std: bool = False  # Q's Gaussian learns its std (the paper's factored Gaussian) instead of 1


@dataclass
class ModeRegularizedConfig:
    # Mode-regularized GAN (Che et al. 2017): an encoder E and, on G(E(x)) of the reals, lambda_1 x the
    # mean squared pixel distance to x plus lambda_2 x -log D(G(E(x))), added to G's loss and training E
    # (0 and 0: off)
    geometric: float = 0.0  # lambda_1
    mode: float = 0.0  # lambda_2
    encoder_width: int = 32  # channels of E's first conv (doubling per halving, at most 8x)
    lr: float = 2e-4  # E's Adam step size (betas 0.5, 0.999)


@dataclass
class ReplayConfig:
    # Experience replay for D (SimGAN, Shrivastava et al. 2017, sec. 2.3; CycleGAN's image pool, Zhu et al.
    # 2017, sec. 4): a per-rank buffer of this many past fakes (0: off; CycleGAN: 50), each of D's fakes
    # swapped for a buffered one with probability `prob` once the buffer is full (CycleGAN, SimGAN: 0.5)
    size: int = field(default=0, metadata={"min": 0})
    prob: float = 0.5


@dataclass
class SemiSupervisedConfig:
    # The semi-supervised GAN (Salimans et al. 2016, sec. 5): D's class head (model.aux_classifier) as K of
    # K + 1 classes, D's logit log sum_k exp l_k (loss.name=nonsat: the unsupervised term); weight x the
    # cross-entropy of a labelled batch (data.labelled_per_class or data.labelled_fraction) in D's loss
    # (0: off; the paper's equation: 1, the authors' code: 2). G: regularize.feature_matching, replace.
    weight: float = 0.0
    held_out: str = ""  # shards for D's held-out accuracy (d_accuracy; a test split); "": data.path's others
    held_out_images: int = 10000  # at most this many held-out images


@dataclass
class RegularizeConfig:
    ortho: OrthoConfig = field(default_factory=OrthoConfig)
    gradient_penalty: GradientPenaltyConfig = field(default_factory=GradientPenaltyConfig)
    r1: R1Config = field(default_factory=R1Config)
    path_length: PathLengthConfig = field(default_factory=PathLengthConfig)
    style_mixing: StyleMixingConfig = field(default_factory=StyleMixingConfig)
    lecam: LeCamConfig = field(default_factory=LeCamConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    weight_clip: WeightClipConfig = field(default_factory=WeightClipConfig)
    historical_averaging: HistoricalAveragingConfig = field(default_factory=HistoricalAveragingConfig)
    zcr: LatentConsistencyConfig = field(default_factory=LatentConsistencyConfig)
    unrolled: UnrolledConfig = field(default_factory=UnrolledConfig)
    feature_matching: FeatureMatchingConfig = field(default_factory=FeatureMatchingConfig)
    aux_classifier: AuxClassifierConfig = field(default_factory=AuxClassifierConfig)
    pull_away: PullAwayConfig = field(default_factory=PullAwayConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    info: InfoConfig = field(default_factory=InfoConfig)
    mode_regularized: ModeRegularizedConfig = field(default_factory=ModeRegularizedConfig)
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)


@dataclass
class AugmentConfig:
    """How D sees every image, real or generated, in D and G steps alike."""

    # Differentiable augmentation (Zhao et al. 2020) for small datasets: a comma-separated policy of
    # color, translation, cutout ("" disables).
    diffaugment: str = ""
    # Instance noise (Sonderby et al. 2016): N(0, sigma^2) added to every image D sees (images in [-1, 1]),
    # its sigma annealed linearly to 0 over instance_noise_kimg (0: constant).
    instance_noise: float = 0.0
    instance_noise_kimg: float = 0.0
    # Adaptive discriminator augmentation (Karras et al. 2020): a pipeline ("" off; bgc: blit, geometric,
    # color, the paper's; bg; b; c), each transform applied with probability p. p starts at ada_p and
    # moves every ada_interval D steps by sign(E[sign(D(real))] - ada_target) at a speed of 0 -> 1 in
    # ada_kimg kimg; ada_target 0 keeps p fixed at ada_p.
    ada: str = ""
    ada_p: float = 0.0
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | rmsprop (WGAN with weight clipping; optim.beta2 is its smoothing constant)
    lr_g: float = 1e-4  # TTUR: G slower than D
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-6
    fused: bool = True  # fused Adam kernels (CUDA and CPU)
    # The lazy-regularization scaling (lr x k/(k+1), betas ^ k/(k+1); StyleGAN2 appendix B) of G's or D's
    # optimizer for interval k, also when no lazy regularizer of that network is on: stylegan2-ada's
    # G_reg_interval / D_reg_interval, which scale the optimizer whether or not the penalty is on (its
    # cifar config: pl_weight 0 but G_reg_interval 4). 0: the scaling follows the lazy regularizers only.
    g_reg_interval: int = 0
    d_reg_interval: int = 0
    # Learning-rate schedule over train.total_kimg: none | linear (both rates fall linearly to 0 at the
    # end, as SN-GAN's official configs: pfnet-research/sngan_projection's LinearShift of Adam's alpha).
    lr_decay: str = field(default="none", metadata={"choices": ("none", "linear")})


@dataclass
class PhaseConfig:
    """One progressive-growing phase (see bigtrain/train/phases.py)."""

    resolution: int = 4
    fade_kimg: float = 0.0  # kimg over which the new block fades in (alpha 0 -> 1)
    stable_kimg: float = 0.0  # kimg at alpha 1 before the next phase
    batch: int = 64
    lr_g: float = 1e-3
    lr_d: float = 1e-3


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    total_kimg: float = 100.0  # thousands of real images shown to D
    batch: int = 64  # global images per D or G step (all ranks and accumulation steps together)
    accum: int = 1  # micro-batches per step on each rank
    n_disc_steps: int = 1  # D steps per G step
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    compile: bool = False  # torch.compile G and D
    log_every: int = 20  # iterations between logged (host-synced) metrics
    ckpt_every_kimg: float = 10.0
    keep_checkpoints: int = 3
    # A URL (s3://bucket/prefix, gs://...) that keeps a copy of every checkpoint, for a run whose nodes
    # do not share a disk: `--resume` on a fresh node fetches from it. "" keeps checkpoints local only.
    checkpoint_store: str = ""
    check_finite: bool = True  # skip an optimizer step whose loss is not finite on any rank (1 sync/step)
    max_nonfinite_steps: int = 10  # consecutive skipped steps before training stops
    # Plan the run at start (`bigtrain plan`: a fake-tensor trace, seconds to a minute) and log its
    # predicted peak memory beside the measured one at the first log point. The measured peak
    # (max_memory_allocated on CUDA, max RSS on CPU) is logged at every log point either way.
    plan_check: bool = False
    # Progressive growing: resolution, fade-in, batch and learning rates per phase (empty: one phase
    # at model.resolution with train.batch and optim's learning rates).
    phases: list[PhaseConfig] = field(default_factory=list)
    # Fine-tuning: a new run whose G, D and G_ema start from these weights (a checkpoint folder, its
    # state.pt, or a run folder: its latest checkpoint). Everything else starts fresh, as stylegan2-ada's
    # --resume: optimizers, kimg 0, RNG and data position, ADA's p (augment.ada_p); EMA ramp-up off
    # (ema.rampup is treated as 0). Every tensor must match this run's model, except the
    # class-conditioning ones when the class count differs (kept as built, with a warning). `--resume`
    # with a checkpoint in train.run_dir wins over it. "": a run from scratch.
    init_from: str = ""


@dataclass
class EMAConfig:
    halflife_kimg: float = 10.0  # G_ema forgets half its past every this many kimg of G training
    start_kimg: float = 0.0  # before this, G_ema copies G
    rampup: float = 0.0  # >0: half-life is at most rampup x current kimg (StyleGAN's ramp-up)
    standing_stats_batches: int = 16  # batches to refresh G_ema's BatchNorm statistics before sampling


@dataclass
class EvalConfig:
    every_kimg: float = 5.0  # 0 disables evaluation during training
    # fd: Frechet distance in a classifier trained on the dataset's labels (eval.num_samples samples);
    # fid<N>, kid<N>, pr<N>, is<N>: the standard Inception metrics on N samples (fid10k, kid50k, ...).
    # The first one picks the best checkpoint.
    metrics: list[str] = field(default_factory=lambda: ["fd"])
    num_samples: int = 2000  # generated images for fd
    batch: int = 200
    truncation: float = 0.0  # biggan: 0 plain normal z, >0 truncated normal at this threshold;
    # stylegan2: psi of w_avg + psi (w - w_avg) (0 or 1: no truncation)
    truncation_cutoff: int = 0  # stylegan2: truncate only the first this many w layers (0: all)
    grid_size: int = 8  # sample grid is grid_size x grid_size
    keep_best: bool = True  # keep checkpoints/best: the checkpoint with the best first metric
    truncation_sweep: list[float] = field(default_factory=lambda: [])  # at the end: metrics per threshold
    reference_images: int = 0  # real images in the Inception reference statistics (0: all)


@dataclass
class TrackConfig:
    enabled: bool = True
    tracking_uri: str = ""  # "" -> $MLFLOW_TRACKING_URI, else a sqlite store in the run directory
    experiment: str = "bigtrain"
    run_name: str = ""  # "" -> <model><resolution>-<dataset>-<run folder name>
    parent_run_id: str = ""  # nest this run under an MLflow parent run (set by `bigtrain tune`)


@dataclass
class DistConfig:
    backend: str = "ddp"  # ddp (torch DDP) | accelerate (HF Accelerate) | deepspeed (ZeRO 1/2 engines)
    deepspeed_config: str = "configs/deepspeed/zero2.json"  # ZeRO stage and engine settings
    sync_bn: bool = False  # cross-replica BatchNorm in G
    timeout_minutes: float = 30.0  # collective timeout (a hung rank fails the job instead of idling)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    dist: DistConfig = field(default_factory=DistConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.loader": ("auto", "webdataset", "dali"),
    "model.name": tuple(FAMILIES),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.channels_last": ("auto", "on", "off"),
    "dist.backend": ("ddp", "accelerate", "deepspeed"),
    "optim.name": ("adam", "rmsprop"),
}


# --------------------------------------------------------------------------- building from dicts


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation (int, float, bool, str, list[...]) and convert."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        (item_type,) = typing.get_args(annotation)[:1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `model.attn_res=64` means [64]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if dataclasses.is_dataclass(item_type):
            return [
                v if isinstance(v, item_type) else _build(item_type, v, f"{key}[{i}].")
                for i, v in enumerate(value)
            ]
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {key}")  # keep the tree simple: no Optionals
    if annotation in (int, float) and isinstance(value, str):
        try:  # PyYAML reads `1e-4` (no dot) as a string
            value = float(value) if annotation is float else int(value)
        except ValueError:
            pass
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool) and {"on", "off"} <= set(CHOICES.get(key, ())):
            return "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix}{key} (known keys here: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], data[f.name] or {}, key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
            allowed = f.metadata.get("choices")
            if allowed is not None and kwargs[f.name] not in allowed:
                raise ConfigError(f"{key}={kwargs[f.name]!r} is not one of {', '.join(allowed)}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'batch': 64}} -> {'train.batch': 64}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.batch=512` -> ('train.batch', 512); the value is read as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or "." not in key:
        raise ConfigError(f"override {text!r} must name a dotted key such as train.batch=512")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


# Keys that moved when the objective became parts (issue 17): old recipes and checkpoints still load.
MOVED_KEYS = {
    "loss.ortho_strength": "regularize.ortho.strength",
    "loss.gp_weight": "regularize.gradient_penalty.weight",
    "loss.drift": "regularize.gradient_penalty.drift",
    "loss.r1_gamma": "regularize.r1.gamma",
    "loss.r1_interval": "regularize.r1.interval",
    "loss.pl_weight": "regularize.path_length.weight",
    "loss.pl_interval": "regularize.path_length.interval",
    "loss.pl_decay": "regularize.path_length.decay",
    "loss.pl_batch_shrink": "regularize.path_length.batch_shrink",
    "loss.style_mixing": "regularize.style_mixing.prob",
    "data.diffaugment": "augment.diffaugment",
}


# The family knobs `model` held flat before each family had its section (issue 28): `model.<key>` moves to
# `model.<model.name>.<key>`; a key of another family only, which that layout never read, is dropped.
OLD_MODEL_KEYS = (
    "ch", "d_ch", "shared_dim", "hier", "attn_res", "bn_eps", "sn_eps", "init", "fmap_base", "fmap_max", "w_dim",
    "mapping_layers", "mbstd_group", "conv_clamp", "d_architecture",
)  # fmt: skip


def _move_family_keys(tree: dict[str, Any]) -> None:
    model = tree.get("model")
    if not isinstance(model, dict) or not any(key in model for key in OLD_MODEL_KEYS):
        return
    name = model.get("name", _ModelCommon.name)
    if name not in FAMILIES:
        return  # refused by name at build
    own = {f.name for f in dataclasses.fields(FAMILIES[name].section)}
    moved, dropped = [], []
    for key in [k for k in OLD_MODEL_KEYS if k in model]:
        value = model.pop(key)
        if key in own:
            section = model.setdefault(name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"model.{name} must be a mapping, got {section!r}")
            section.setdefault(key, value)  # the new layout's value wins where both are given
            moved.append(f"model.{key} -> model.{name}.{key}")
        else:
            dropped.append(f"model.{key}")
    log.warning(
        "config keys moved: %s%s; the recipe still runs, update it",
        ", ".join(moved) or "none",
        f" (dropped, not read by {name}: {', '.join(dropped)})" if dropped else "",
    )


def _move_old_keys(tree: dict[str, Any]) -> None:
    """Rewrite keys of the layout before `regularize` and `augment` in place, with a warning. The old
    `loss.name: wgan-gp` meant WGAN plus the gradient penalty and drift, at their old defaults unless
    given. An old layout left the orthogonal regularizer on (1e-4) unless it was set."""
    old = {key for key in MOVED_KEYS if _get_dotted(tree, key) is not None}
    wgan_gp = isinstance(tree.get("loss"), dict) and tree["loss"].get("name") == "wgan-gp"
    if not old and not wgan_gp:
        return
    values = {key: _pop_dotted(tree, key) for key in old}
    if "loss.ortho_strength" not in old and isinstance(tree.get("loss"), dict):
        values["loss.ortho_strength"] = 1e-4  # the old default
    if wgan_gp:
        tree["loss"]["name"] = "wgan"
        values.setdefault("loss.gp_weight", 10.0)
        values.setdefault("loss.drift", 0.001)
    for key, value in values.items():
        _set_dotted(tree, MOVED_KEYS[key], value)
    log.warning(
        "config keys moved: %s; the recipe still runs, update it",
        ", ".join([f"{k} -> {MOVED_KEYS[k]}" for k in sorted(old)] + ["loss.name wgan-gp -> wgan"] * wgan_gp),
    )


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pop_dotted(tree: dict[str, Any], key: str) -> Any:
    section, name = key.split(".")
    return tree[section].pop(name)


def from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    tree = _deep_copy_dict(data)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    _move_old_keys(tree)
    _move_family_keys(tree)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def _deep_copy_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a mapping, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or start from defaults), apply dotted overrides, validate."""
    data = read_yaml_mapping(path) if path is not None else {}
    return from_dict(data, overrides)


def config_yaml(cfg: Config) -> str:
    """The whole config as a ready-to-run recipe (a sweep's best.yaml, a Kubernetes ConfigMap)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------- validation


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def positive(key: str, value: float, allow_zero: bool = False) -> None:
    """Refuse a negative (or zero, or NaN) value, naming its dotted key."""
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


# The parts that check their own sections: each module's `check_config(cfg)` raises a ConfigError that
# names the key. This file knows their names only, so the schema depends on no part.
PART_CHECKS = ("bigtrain.objective", "bigtrain.augment", "bigtrain.eval.metrics", "bigtrain.models.vbn")


def validate(cfg: Config, world_size: int = 1) -> None:
    """Refuse impossible values, naming the dotted key. `world_size` is known only at launch."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")

    m, t = cfg.model, cfg.train
    if not _is_power_of_two(m.resolution) or not 4 <= m.resolution <= 1024:
        raise ConfigError(f"model.resolution={m.resolution} must be a power of two from 4 to 1024")
    positive("model.z_dim", m.z_dim)
    positive("model.num_classes", m.num_classes, allow_zero=True)
    positive("model.freeze_d", m.freeze_d, allow_zero=True)
    positive("data.retries", cfg.data.retries, allow_zero=True)
    positive("data.retry_backoff_s", cfg.data.retry_backoff_s, allow_zero=True)
    positive("data.cache_gb", cfg.data.cache_gb)
    if not 0 <= cfg.data.max_bad_shards <= 1:
        raise ConfigError(
            f"data.max_bad_shards={cfg.data.max_bad_shards} is a fraction of shards, from 0 to 1"
        )
    for key in ("lr_g", "lr_d", "eps"):
        positive(f"optim.{key}", getattr(cfg.optim, key))
    for key in ("g_reg_interval", "d_reg_interval"):
        positive(f"optim.{key}", getattr(cfg.optim, key), allow_zero=True)
    for key in ("beta1", "beta2"):
        v = getattr(cfg.optim, key)
        if not 0 <= v < 1:
            raise ConfigError(f"optim.{key}={v} must be in [0, 1)")
    for key in ("total_kimg", "ckpt_every_kimg"):
        positive(f"train.{key}", getattr(t, key))
    for key in ("batch", "accum", "n_disc_steps", "log_every", "keep_checkpoints", "max_nonfinite_steps"):
        positive(f"train.{key}", getattr(t, key))
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be at least 1")
    if t.batch % (world_size * t.accum):
        raise ConfigError(
            f"train.batch={t.batch} must be divisible by world size x train.accum = "
            f"{world_size} x {t.accum} = {world_size * t.accum}"
        )
    positive("data.num_workers", cfg.data.num_workers, allow_zero=True)
    positive("data.shuffle_buffer", cfg.data.shuffle_buffer, allow_zero=True)
    positive("ema.halflife_kimg", cfg.ema.halflife_kimg)
    positive("ema.start_kimg", cfg.ema.start_kimg, allow_zero=True)
    positive("ema.rampup", cfg.ema.rampup, allow_zero=True)
    positive("ema.standing_stats_batches", cfg.ema.standing_stats_batches, allow_zero=True)
    positive("dist.timeout_minutes", cfg.dist.timeout_minutes)
    _validate_phases(cfg, world_size)
    _validate_networks(cfg)
    for module in PART_CHECKS:
        importlib.import_module(module).check_config(cfg)


def _validate_networks(cfg: Config) -> None:
    m = cfg.model
    if m.minibatch_kernel_dims < 1:
        raise ConfigError(f"model.minibatch_kernel_dims={m.minibatch_kernel_dims} must be > 0")
    positive("model.minibatch_kernels", m.minibatch_kernels, allow_zero=True)
    check = getattr(m.section, "check", None)  # the family's own rules for its section
    if check is not None:
        check(f"model.{m.name}", m)


def check_phases(phases) -> None:
    """The schedule's own rules (PhaseSchedule checks them too): resolutions that start at a power of two
    >= 4 and double, non-negative kimg, nothing to fade in from in the first phase, a batch, learning rates."""
    if not phases:
        raise ConfigError("train.phases needs at least one phase")
    for i, p in enumerate(phases):
        key = f"train.phases[{i}]"
        if not _is_power_of_two(p.resolution) or p.resolution < 4:
            raise ConfigError(f"{key}.resolution={p.resolution} must be a power of two >= 4")
        if i and p.resolution != 2 * phases[i - 1].resolution:
            raise ConfigError(
                f"{key}.resolution={p.resolution} must double the previous phase's {phases[i - 1].resolution}"
            )
        if p.fade_kimg < 0 or p.stable_kimg < 0 or (i == 0 and p.fade_kimg):
            raise ConfigError(
                f"{key}: kimg must be >= 0, and the first phase has nothing to fade in (fade_kimg 0)"
            )
        if p.batch < 1:
            raise ConfigError(f"{key}.batch={p.batch} must be >= 1")
        if p.lr_g <= 0 or p.lr_d <= 0:
            raise ConfigError(f"{key}: learning rates must be > 0")


def _validate_phases(cfg: Config, world_size: int) -> None:
    """The schedule's rules, and how it fits this run: a growing model, its final resolution, batches
    that split over the ranks and micro-batches."""
    phases, t = cfg.train.phases, cfg.train
    if not phases:
        return
    if cfg.model.name != "progan":
        raise ConfigError(f"train.phases needs a growing model (model.name=progan), not {cfg.model.name}")
    check_phases(phases)
    for i, p in enumerate(phases):
        if p.batch % (world_size * t.accum):
            raise ConfigError(
                f"train.phases[{i}].batch={p.batch} must be divisible by world size x train.accum = {world_size * t.accum}"
            )
    if phases[-1].resolution != cfg.model.resolution:
        raise ConfigError(
            f"the last of train.phases grows to {phases[-1].resolution}, but model.resolution is {cfg.model.resolution}"
        )
