"""The chain's params.yaml schema: one block per stage, each the settings class of the module that
implements it, validated as a whole before any stage works (`config.load_settings`), so a bad value
anywhere stops every stage with one line such as
`params.yaml: distill.alpha=1.5 is invalid: must be a number in [0, 1]` and nothing is written.
The zoo and detection pipelines have their own schemas (`zoo.params`, `detection.params`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.bench.config import BenchConfig, PruneLatencyConfig
from edgecompress.config import Settings, check, load_settings, parse_settings
from edgecompress.data import DataParams
from edgecompress.distill import DistillParams
from edgecompress.init_weights import check_pretrained_files
from edgecompress.models import PRETRAINED_INIT, RANDOM_INIT, TORCHVISION_RESNETS, ArchParams
from edgecompress.prune import PruneConfig
from edgecompress.quantize.config import QuantizeConfig
from edgecompress.train import TrainParams


@dataclass(frozen=True)
class RunParams(Settings):
    """A training stage's length and seed (`teacher`, `student`)."""

    epochs: int = 15
    seed: int = 0

    def validate(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be an integer >= 1")


@dataclass(frozen=True)
class ModelParams(Settings):
    teacher: ArchParams = field(default_factory=lambda: ArchParams("resnet32", 1.0))
    student: ArchParams = field(default_factory=lambda: ArchParams("resnet20", 0.5))
    small_input: bool = True  # torchvision archs: 3x3 stride-1 stem for 32x32 images
    weights_dir: str | None = None  # pretrained files: this folder (null: torch hub's checkpoints), then installed packages

    def validate(self) -> None:
        for role in ("teacher", "student"):
            spec = getattr(self, role)
            # the small stem of a torchvision ResNet is a new 3x3 conv: its pretrained 7x7 stem would be dropped
            check(not (self.small_input and spec.weights == PRETRAINED_INIT and spec.arch in TORCHVISION_RESNETS),
                  "small_input", self.small_input, f"must be false with pretrained {spec.arch} (model.{role}): the "
                  "small-input stem replaces its pretrained stem; use data.image_size 224 (or >= 64)")
        check_pretrained_files({"model.teacher": self.teacher, "model.student": self.student}, self.weights_dir)


@dataclass(frozen=True)
class TeacherParams(RunParams):
    """`teacher` block: as `student`, but epochs 0 takes `model.teacher.weights` as they are (evaluated only)."""

    def validate(self) -> None:
        check(self.epochs >= 0, "epochs", self.epochs, "must be an integer >= 0 (0: evaluate the given weights)")


@dataclass(frozen=True)
class PruneParams(PruneConfig):
    """`prune` block: the method (`prune.PruneConfig`) plus the fine-tuning that follows it."""

    latency: PruneLatencyConfig = field(default_factory=PruneLatencyConfig)  # where each step is timed
    finetune_epochs: int = 5  # after pruning; 0 = none
    finetune_lr: float = 0.01
    finetune_kd: bool = True  # fine-tune with the distillation loss from the teacher
    seed: int = 3

    def validate(self) -> None:
        super().validate()
        check(self.finetune_epochs >= 0, "finetune_epochs", self.finetune_epochs, "must be an integer >= 0")
        check(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "must be a number > 0")


@dataclass(frozen=True)
class QuantizeParams(QuantizeConfig):
    """`quantize` block: the method settings (`quantize.config.QuantizeConfig`) plus a seed."""

    seed: int = 4


@dataclass(frozen=True)
class Params(Settings):
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    student: RunParams = field(default_factory=RunParams)  # student_baseline and distill share it
    distill: DistillParams = field(default_factory=DistillParams)
    prune: PruneParams = field(default_factory=PruneParams)
    quantize: QuantizeParams = field(default_factory=QuantizeParams)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def validate(self) -> None:
        check(self.teacher.epochs > 0 or self.model.teacher.weights != RANDOM_INIT, "teacher.epochs",
              self.teacher.epochs, "0 takes model.teacher.weights as they are: set them to pretrained or a file")


def parse_params(data: dict[str, Any] | None) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`."""
    return parse_settings(Params, data)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the chain's params.yaml.

    Raises:
        EdgecompressError: one line naming the file, the key, the value and what is allowed.
    """
    return load_settings(path, Params)
