"""Knowledge distillation loss (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531).

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The T^2 factor keeps the soft term's gradient magnitude comparable to the hard term's as T changes
(soft-target gradients scale as 1/T^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.config import Settings, check


@dataclass(frozen=True)
class DistillParams(Settings):
    """The `distill` block: the loss's two knobs."""

    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha on hard labels
    temperature: float = 4.0  # softmax temperature T

    def validate(self) -> None:
        check(0 <= self.alpha <= 1, "alpha", self.alpha, "must be a number in [0, 1]")
        check(self.temperature > 0, "temperature", self.temperature, "must be a number > 0")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            *, alpha: float, temperature: float) -> torch.Tensor:
    """Hinton KD loss, averaged over the batch.

    Args:
        student_logits: (N, C) raw student outputs z_s.
        teacher_logits: (N, C) raw teacher outputs z_t (treated as constants).
        targets: (N,) class indices y.
        alpha: weight of the soft term, in [0, 1]; alpha = 0 is plain cross-entropy.
        temperature: T > 0.
    Returns:
        Scalar loss.
    """
    hard = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return hard
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2
    return alpha * soft + (1 - alpha) * hard


def hard_label_loss(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on labels, in the trainer's (logits, targets, inputs) loss signature."""
    return F.cross_entropy(logits, targets)


class DistillationLoss(nn.Module):
    """KD loss in the trainer's (logits, targets, inputs) signature; runs the frozen teacher.

    The teacher is put in eval mode with gradients off, so BatchNorm statistics stay fixed and no
    gradient ever reaches it; `train()` on this module never switches the teacher back.
    """

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(logits, teacher_logits.float(), targets, alpha=self.alpha, temperature=self.temperature)
