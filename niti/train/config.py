"""``TrainConfig``: everything that defines a training run, as one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..nn.layers import DROPOUT_MASKS
from ..nn.loss import SOFTMAXES
from ..numerics import (DEFAULT_ACT_CLIP_BITS, DEFAULT_ACT_CLIP_SHARE, ROUNDING_MODES, RoundingPolicy,
                        check_act_clip_bits, check_act_clip_share)
from ..optim import GbSchedule, UpdateRule
from ..runtime import RANDOM_BITS

__all__ = ["TrainConfig"]

ARITHMETICS = ("int", "float")
DEVICE_TYPES = ("cpu", "cuda")

#: Steps between mid-epoch checkpoints by default: a few seconds of LeNet work and about
#: three minutes of VGG-small-7 on two CPU cores (~1 s/step), so a crash loses little.
DEFAULT_CHECKPOINT_EVERY = 200
#: The default validation split: this fraction of the training images, at most ``VAL_SIZE_CAP``.
VAL_FRACTION_DIVISOR = 10
VAL_SIZE_CAP = 5000


def default_val_size(n_train: int) -> int:
    """10 % of ``n_train`` training images, capped at 5,000 (MNIST and CIFAR-10 keep their 5,000)."""
    return min(VAL_SIZE_CAP, n_train // VAL_FRACTION_DIVISOR)


#: What a config written before the ``numerics`` key meant (the first version's defaults).
_NUMERICS_1 = {"numerics": 1, "err_round": "nearest", "batch_ref": 0, "momentum_shift": 0, "decay_shift": 0, "softmax": "coarse",
               "full_range_init": False, "input_std": False, "accumulator_bits": 8,
               "random_bits": "generator", "act_clip_bits": 0, "act_clip_share": 0, "step_scale": "max"}


@dataclass(frozen=True)
class TrainConfig:
    """A run: model, data, schedule, numerics and where outputs go.  The CLI only fills this in."""

    model: str = "lenet"
    dataset: str | None = None  # None: the model's own data set (lenet → mnist, vgg → cifar10)
    data_dir: str | None = None
    download: bool = True  # fetch MNIST / CIFAR-10 originals (checksum-verified) when no copy is found
    out: str = "runs/lenet-int"
    arith: str = "int"
    epochs: int = 1
    batch_size: int = 64
    seed: int = 0
    val_size: int | None = None  # None: default_val_size(training images), resolved by fit and recorded
    augment: bool | None = None  # None: on for cifar10, off otherwise
    max_steps: int | None = None  # stop early (a fraction of an epoch), for smoke tests
    train_limit: int | None = None  # use only the first N training images
    threads: int | None = None
    image_size: int | None = None  # image folders: the square input size (default: the model's, else 224)
    workers: int | None = None  # image folders: decoding processes (default: CPU count, at most 8)
    device: str = "cpu"
    # integer numerics
    act_round: str = "nearest"
    err_round: str = "stochastic"  # chosen on validation (docs/numerics.md §10); nearest is the reference's
    grad_round: str = "pseudo_stochastic"
    loss_round: str = "stochastic"
    #: The float twin's lr schedule in gb (lr 0.05, x0.1 at 50 %, x0.01 at 75 %) for float SGD's step; chosen on
    #: validation with it (results/cifar-quarter, results/mnist-sgd). The per-tensor step's: 5,4,3,2@0.25,0.5,0.75.
    gb_schedule: str = "5,5/3,-5/3@0.5,0.75"
    accumulator_bits: int = 16
    gb_offsets: str = ""  # one gb offset per weight layer, e.g. "0,0,0,0,0,0,2"; "" for none
    batch_ref: int = 256  # the step scales with batch / batch_ref; 0: batch-independent (the paper's)
    momentum_shift: int = 3  # integer momentum, velocity decay 1 - 2**-k; 0: none
    decay_shift: int = 17  # weight decay 2**(gb - D) per step (17: the twin's at gb 5, since 2026-12-02); 0: none
    #: "exponent": float SGD's step, 2**(gb - 20) times the real summed gradient (the default since 2026-12-02);
    #: "max": each gradient rescaled to gb bits per tensor (the paper's; docs/numerics.md §5). Configs without the
    #: key had "max".
    step_scale: str = "exponent"
    #: The velocity follows a gb change at once, as float SGD's buffer follows its lr (docs/numerics.md §5; off by
    #: default: level on VGG-small-7, results/velocity-rescale). Configs without the key ran without it.
    velocity_rescale: bool = False
    #: Each weight carries what rounding its step left into the next step (docs/numerics.md §5); configs without
    #: the key ran without it.
    step_carry: bool = False
    #: Fractional bits below one master unit of the scaled gradient, the velocity and the carried residual
    #: (docs/numerics.md §5); configs without the key had 8.
    step_frac_bits: int = 8
    #: Bits of room above their initial range for convolution and linear int16 masters (docs/numerics.md §6).
    weight_headroom: int = 0
    #: Bits more for the first and the last of them, the layers that read the input and write the logits
    #: (docs/numerics.md §6); configs without the key had 0.
    end_headroom: int = 0
    #: Bits of resolution each activation rescale but the logits' gains by saturating the batch's largest values
    #: (docs/numerics.md §2); configs without the key had 0.
    act_clip_bits: int = DEFAULT_ACT_CLIP_BITS
    #: k > 0: each of those rescales clips only as far as saturates at most 2**-k of its batch's values
    #: (docs/numerics.md §2); configs without the key had 0 (no bound).
    act_clip_share: int = DEFAULT_ACT_CLIP_SHARE
    softmax: str = "precise"  # or "coarse": the first version's loss (ablations)
    #: True: initial mantissas fill ±127 (numerics 2 until 2026-12-02); False: within the Xavier bound ±bound_m,
    #: the float twin's scale, the default with float SGD's step (docs/numerics.md §8).
    full_range_init: bool = False
    input_std: bool = True  # inputs divided by the per-channel std (False: raw pixel units)
    #: Dropout masks: "sample" (one per element, as the float twin's) or "batch" (one per feature shared by the
    #: batch, the reference's); configs without the key had "batch" (docs/numerics.md §4).
    dropout: str = "sample"
    #: 2: this numerics; configs without the key are version 1 (the paper's update, coarse softmax, ...).
    numerics: int = 2
    #: Evaluation shifts: "static" (calibrated per layer, batch-independent) or "batch" (the batch's own).
    inference: str = "static"
    #: Random bits for stochastic rounding and dropout: "counter" (hashes, the same on every device,
    #: docs/numerics.md §14) or "generator" (the first version's CPU generators).
    random_bits: str = "counter"
    #: Training images whose statistics replace batch norm's running averages before each evaluation
    #: (PreciseBN; both arithmetics); 0: evaluate with the running averages. Ignored without batch norm.
    norm_recalibration: int = 4096
    # float baseline
    lr: float | None = None  # None: the tuned default for the model (results/lr_sweep)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    progress: bool = True
    log_every: int = 20  # steps between running-loss records in steps.jsonl
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # steps between mid-epoch checkpoints; 0: epoch ends only
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arith not in ARITHMETICS:
            raise ValueError(f"arith must be one of {ARITHMETICS}, got {self.arith!r}")
        self._check_counts()
        self._check_device()
        if self.accumulator_bits not in (8, 16):
            raise ValueError(f"accumulator_bits must be 8 or 16, got {self.accumulator_bits}")
        if isinstance(self.weight_headroom, bool) or not isinstance(self.weight_headroom, int) \
                or not 0 <= self.weight_headroom <= 8:
            raise ValueError(f"weight_headroom must be an integer in 0..8, got {self.weight_headroom!r}")
        if isinstance(self.end_headroom, bool) or not isinstance(self.end_headroom, int) \
                or not 0 <= self.end_headroom <= 8 - self.weight_headroom:
            raise ValueError(f"end_headroom must be an integer in 0..{8 - self.weight_headroom} (at most 8 bits "
                             f"with weight_headroom), got {self.end_headroom!r}")
        if (self.weight_headroom or self.end_headroom) and self.accumulator_bits != 16:
            raise ValueError("weight_headroom and end_headroom need 16-bit weight accumulators (accumulator_bits=16)")
        check_act_clip_bits(self.act_clip_bits)
        check_act_clip_share(self.act_clip_share)
        for name in ("act_round", "err_round", "grad_round", "loss_round"):
            if getattr(self, name) not in ROUNDING_MODES:
                raise ValueError(f"{name} must be one of {ROUNDING_MODES}, got {getattr(self, name)!r}")
        if self.softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {SOFTMAXES}, got {self.softmax!r}")
        if self.dropout not in DROPOUT_MASKS:
            raise ValueError(f"dropout must be one of {DROPOUT_MASKS}, got {self.dropout!r}")
        if self.inference not in ("static", "batch"):
            raise ValueError(f"inference must be 'static' or 'batch', got {self.inference!r}")
        if self.random_bits not in RANDOM_BITS:
            raise ValueError(f"random_bits must be one of {RANDOM_BITS}, got {self.random_bits!r}")
        if self.numerics not in (1, 2):
            raise ValueError(f"numerics must be 1 or 2, got {self.numerics}")
        self.rule  # validates batch_ref, momentum_shift, decay_shift, step_scale
        schedule = GbSchedule.parse(self.gb_schedule)  # validates
        offsets = GbSchedule.parse_offsets(self.gb_offsets)
        if self.arith == "int":
            schedule.check_accumulator_bits(self.accumulator_bits, offsets, self.step_scale)

    def _check_counts(self) -> None:
        """Every count is an int in its range; ``None`` where the field allows it."""
        ranges = {"epochs": 1, "batch_size": 1, "log_every": 1, "checkpoint_every": 0, "accumulator_bits": 8,
                  "max_steps": 1, "train_limit": 1, "threads": 1, "val_size": 0, "seed": 0, "image_size": 8,
                  "workers": 0, "norm_recalibration": 0}
        optional = {"max_steps", "train_limit", "threads", "val_size", "image_size", "workers"}
        for name, low in ranges.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.arith == "float":
            if self.lr is not None and not self.lr > 0:
                raise ValueError(f"lr must be > 0, got {self.lr}")
            if not 0 <= self.momentum < 1:
                raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
            if not self.weight_decay >= 0:
                raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def _check_device(self) -> None:
        """``device`` names a CPU or CUDA device (whether CUDA is present is checked when training starts)."""
        import torch

        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {self.device!r} is not a torch device ({exc})") from None
        if device.type not in DEVICE_TYPES:
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")

    @property
    def policy(self) -> RoundingPolicy:
        return RoundingPolicy(self.act_round, self.err_round, self.grad_round, self.loss_round)

    @property
    def rule(self) -> UpdateRule:
        return UpdateRule(self.batch_ref, self.momentum_shift, self.decay_shift, self.step_scale, self.velocity_rescale,
                           self.step_carry, self.step_frac_bits)

    @property
    def schedule(self) -> GbSchedule:
        return GbSchedule.parse(self.gb_schedule)

    @property
    def layer_gb_offsets(self) -> tuple[int, ...] | dict[str, int]:
        return GbSchedule.parse_offsets(self.gb_offsets)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        if "numerics" not in d:  # written before numerics 2: keep that run's arithmetic on resume
            d = {**_NUMERICS_1, **d}
        if "dropout" not in d:  # written before per-sample dropout masks: keep the batch's mask on resume
            d = {**d, "dropout": "batch"}
        if "act_clip_bits" not in d:  # written before activation clipping: the rescale fitted the largest value
            d = {**d, "act_clip_bits": 0}
        if "act_clip_share" not in d:  # written before the share bound: the full act_clip_bits at every batch
            d = {**d, "act_clip_share": 0}
        if "step_scale" not in d:  # written before float SGD's step: the per-tensor rescale
            d = {**d, "step_scale": "max"}
        if "velocity_rescale" not in d:  # written before the velocity followed gb changes
            d = {**d, "velocity_rescale": False}
        if "step_carry" not in d:  # written before the step carry
            d = {**d, "step_carry": False}
        if "step_frac_bits" not in d:  # written when the velocity had 8 fractional bits
            d = {**d, "step_frac_bits": 8}
        if "end_headroom" not in d:  # written before the end layers' headroom
            d = {**d, "end_headroom": 0}
        return cls(**d)

    def replace(self, **changes: object) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
