"""The training configuration: one dataclass, read from YAML, overridden by ``--set key=value``.

Every hyperparameter of Algorithm 1 lives here. Where the paper is silent or the official code
(HaowenBai/TDFusion) does something that changes what G learns, the default is the official
code's (max-normalised outer step, swap augmentation, 200 meta steps of one image, StepLR(10, 0.1),
40 epochs; README, "Paper, official code and ours"); the alternatives and the paper's Table 3
ablations are switches on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.fusion_loss import FusionLossConfig
from training.meta_learning import MetaConfig

#: Paper Table 3 ablations by name, as overrides of the configuration.
ABLATIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "I": {"use_loss_network": False},  # fixed w = 1/2, no G
    "II": {"use_gradient_term": False},  # no gradient term in L_f
    "III": {"fusion_task_weight": 1.0},  # F also trained by L_t
    "IV": {"separate_ft_phase": False},  # F and T updated in the meta step, no F/T phase
    "V": {"fused_image": "weighted_sum"},  # fused image = w_a I_a + w_b I_b
}
ABLATION_TITLES = {
    "none": "TDFusion (full)",
    "I": "I: fixed w = 1/2 (no G)",
    "II": "II: no gradient term",
    "III": "III: F also trained by L_t",
    "IV": "IV: no separate F/T phase",
    "V": "V: fused = w_a*I_a + w_b*I_b",
}


@dataclass
class DataConfig:
    """``kind`` is a ``training.datasets.DATASETS`` name; ``options`` go to its builder."""

    kind: str = "scenes"
    options: dict[str, Any] = field(default_factory=dict)
    task_size: list[int] | None = None  # (height, width); None: the dataset's default
    workers: int = 0


@dataclass
class TrainConfig:
    out_dir: str = "runs/tdfusion"
    seed: int = 0
    device: str = "auto"
    task: str = "segmentation"  # or "detection"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 40  # L, as the official code (the paper's schedule ends there too)
    meta_samples: int = 200  # M: size of each of the disjoint meta-train/meta-test subsets
    # Meta steps per epoch; each takes M / meta_steps_per_epoch samples of each subset (official:
    # 200 steps of one image, plus its swapped copy). None: M / batch_size steps of batch_size
    # (what runs before this key existed did; a resumed old checkpoint gets None).
    meta_steps_per_epoch: int | None = 200
    batch_size: int = 1  # F/T phase; doubled by swap_augment (official: 1 image + its copy)
    crop_size: int = 256  # fusion loss on random crops of this size
    lr: float = 1e-4  # Adam, for F and T
    loss_net_lr: float = 1e-4  # the max-normalised step (or Adam) for G
    inner_lr: float | None = None  # eta of the inner updates; None: F's current lr
    lr_step_epochs: int = 10  # StepLR(step, gamma) on F, T and G (official 10, 0.1); 0 = constant
    lr_gamma: float = 0.1
    outer_step: str = "max_normalised"  # official code; "adam" is the paper's wording
    swap_augment: bool = True  # official: every batch + its ir/vis-swapped copy, both phases
    meta_gradient_method: str = "closed_form"  # or "double_backward" (reference; same values)
    alpha: float = 1.0
    intensity_form: str = "paper"  # or "official" (squares G's weights)
    ablation: str = "none"  # a key of ABLATIONS
    use_loss_network: bool = True
    use_gradient_term: bool = True
    fusion_task_weight: float = 0.0
    separate_ft_phase: bool = True
    fused_image: str = "network"
    init_fusion: str | None = None  # F checkpoint to start from (official or ours)
    init_task: str | None = None  # task.pt to start T from (a detector that already sees objects)
    # T's network without init_task (task_networks.SEGMENTER_ARCHITECTURES / DETECTOR_...);
    # None: the task's default, ImageNet-pretrained. With init_task, the record's own.
    task_architecture: str | None = None
    checkpoint_every: int = 100  # steps; also at the end of every phase
    log_every: int = 10
    image_every: int = 200
    max_steps: int = 0  # stop after this many steps in total (0 = no limit); for smoke tests

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # YAML reads 1e-4 (no dot) as a string
            value = getattr(self, f.name)
            if isinstance(value, str) and f.type in ("float", "float | None", "int",
                                                     "int | None"):
                try:
                    setattr(self, f.name, (int if f.type.startswith("int") else float)(value))
                except ValueError:
                    raise ValueError(f"{f.name} must be a number, got {value!r}") from None
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, "
                             f"got {self.ablation!r}")
        for key, value in ABLATIONS[self.ablation].items():
            setattr(self, key, value)
        if self.task not in ("segmentation", "detection"):
            raise ValueError(f"task must be 'segmentation' or 'detection', got {self.task!r}")
        for name in ("epochs", "meta_samples", "batch_size", "crop_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.meta_steps_per_epoch is not None and (
                self.meta_steps_per_epoch < 1 or self.meta_samples % self.meta_steps_per_epoch):
            raise ValueError(f"meta_steps_per_epoch must be a positive divisor of meta_samples "
                             f"(M = {self.meta_samples}), got {self.meta_steps_per_epoch}")
        self.meta_config(self.lr)  # validates outer_step, fused_image, intensity_form, method

    @property
    def meta_batch_size(self) -> int:
        """Samples of each meta subset per meta step, before the swap doubles them."""
        if self.meta_steps_per_epoch is None:
            return self.batch_size
        return self.meta_samples // self.meta_steps_per_epoch

    def meta_config(self, current_lr: float) -> MetaConfig:
        """The step settings, with eta following F's learning-rate schedule by default."""
        if self.intensity_form not in ("paper", "official"):
            raise ValueError(f"intensity_form must be 'paper' or 'official', "
                             f"got {self.intensity_form!r}")
        return MetaConfig(
            inner_lr=current_lr if self.inner_lr is None else self.inner_lr,
            fusion_loss=FusionLossConfig(self.alpha, self.intensity_form,
                                         self.use_gradient_term),
            outer_step=self.outer_step,
            fusion_task_weight=self.fusion_task_weight,
            fused_image=self.fused_image,
            update_ft_in_meta_step=not self.separate_ft_phase,
            meta_gradient_method=self.meta_gradient_method,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Keys added after checkpoints were first written, with the value that reproduces the runs
#: that wrote them (``--resume`` of such a checkpoint must continue the same run).
RESUME_DEFAULTS: dict[str, Any] = {"meta_steps_per_epoch": None}


def config_from_checkpoint(saved: dict[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` a training checkpoint was written with (``RESUME_DEFAULTS`` for
    keys it predates)."""
    return TrainConfig(**{**RESUME_DEFAULTS, **saved})


def parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars: 1e-4, true, null, [240, 320], plain strings."""
    return yaml.safe_load(text)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict, creating levels as needed."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = parse_value(value)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config and apply overrides; unknown keys are errors, not silently ignored."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    data_known = {f.name for f in dataclasses.fields(DataConfig)}
    data_unknown = sorted(set(raw.get("data") or {}) - data_known)
    if data_unknown:
        raise ValueError(f"unknown data key(s) {', '.join(data_unknown)}; known: "
                         f"{', '.join(sorted(data_known))}")
    return TrainConfig(**raw)
