"""KD loss against hand-computed values and its gradient flow."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.distill import DistillationLoss, kd_loss


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))


def test_alpha_zero_is_cross_entropy(logits):
    s, t, y = logits
    assert torch.equal(kd_loss(s, t, y, alpha=0.0, temperature=4.0), F.cross_entropy(s, y))


def test_alpha_one_is_pure_soft_term_with_t_squared(logits):
    s, t, y = logits
    T = 3.0
    # Hand-written KL(p_t || p_s) = sum p_t * (log p_t - log p_s), batch mean, times T^2.
    p_t = torch.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, y, alpha=1.0, temperature=T), expected, atol=1e-6)


def test_t_squared_scaling(logits):
    s, t, y = logits
    T = 2.0
    soft = kd_loss(s, t, y, alpha=1.0, temperature=T)
    unscaled = F.kl_div(torch.log_softmax(s / T, 1), torch.softmax(t / T, 1), reduction="batchmean")
    assert math.isclose(soft.item(), unscaled.item() * 4.0, rel_tol=1e-6)


def test_mixture_is_weighted_sum(logits):
    s, t, y = logits
    soft = kd_loss(s, t, y, alpha=1.0, temperature=4.0)
    hard = kd_loss(s, t, y, alpha=0.0, temperature=4.0)
    mixed = kd_loss(s, t, y, alpha=0.3, temperature=4.0)
    assert torch.allclose(mixed, 0.3 * soft + 0.7 * hard, atol=1e-6)


def test_identical_logits_have_zero_soft_term(logits):
    s, _, y = logits
    assert kd_loss(s, s.clone(), y, alpha=1.0, temperature=4.0).abs().item() < 1e-6


def test_gradients_flow_only_into_student():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    loss_fn = DistillationLoss(teacher, alpha=0.5, temperature=2.0)
    loss_fn.train()  # must not put the teacher back into train mode
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss_fn(student(x), y, x).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not loss_fn.teacher.training
