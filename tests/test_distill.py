"""Attentive distillation losses: where the teacher is kept, where it is released, and that only the student learns."""

import pytest
import torch

from model_core.distill import (TeacherReliability, attention_map, attentive_feature_loss, attentive_prediction_loss,
                                binary_kl)


def maps():
    teacher_logits = torch.tensor([[[[4.0, 4.0], [-4.0, 0.0]]]])  # confident mine, confident mine / background, unsure
    fine = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])             # the fine label disagrees at (0, 1)
    valid = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    return teacher_logits, fine, valid


def test_attention_keeps_confident_agreement_and_releases_disagreement():
    teacher_logits, fine, valid = maps()
    attention = attention_map(teacher_logits, fine, valid)
    assert attention[0, 0, 0, 0] > 0.95 and attention[0, 0, 1, 0] > 0.95   # teacher right and sure
    assert attention[0, 0, 0, 1] == 0                                     # coarse-boundary error: released
    assert attention[0, 0, 1, 1] < 0.05                                   # teacher unsure
    valid[0, 0, 0, 0] = 0
    assert attention_map(teacher_logits, fine, valid)[0, 0, 0, 0] == 0    # ignored label: nothing kept
    assert torch.equal(attention_map(teacher_logits, fine, valid, attentive=False), valid)


def test_feature_loss_counts_only_attended_pixels():
    torch.manual_seed(0)
    teacher = [torch.randn(1, 8, 4, 4), torch.randn(1, 4, 8, 8)]
    attention = torch.zeros(1, 1, 8, 8)
    attention[..., :4, :] = 1.0                                           # top half kept
    assert attentive_feature_loss(teacher, teacher, attention) == pytest.approx(0.0, abs=1e-6)
    student = [t.clone() for t in teacher]
    student[0][..., 2:, :] = torch.randn(1, 8, 2, 4)                      # change only the released half
    student[1][..., 4:, :] = torch.randn(1, 4, 4, 8)
    assert attentive_feature_loss(student, teacher, attention) == pytest.approx(0.0, abs=1e-6)
    student[1][..., :4, :] = torch.randn(1, 4, 4, 8)                      # now the kept half too
    assert attentive_feature_loss(student, teacher, attention) > 0.1


def test_prediction_loss_is_a_temperature_scaled_kl():
    teacher_logits, fine, valid = maps()
    attention = attention_map(teacher_logits, fine, valid)
    assert attentive_prediction_loss(teacher_logits, teacher_logits, attention) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros_like(teacher_logits)
    kl = binary_kl(student, teacher_logits, 2.0)
    assert (kl >= 0).all()
    expected = 4.0 * (kl * attention).sum() / attention.sum()
    assert attentive_prediction_loss(student, teacher_logits, attention, 2.0) == pytest.approx(float(expected),
                                                                                              rel=1e-4)


def test_gradients_reach_the_student_only():
    teacher_logits, fine, valid = maps()
    teacher_logits.requires_grad_(False)
    student = torch.zeros_like(teacher_logits, requires_grad=True)
    attention = attention_map(teacher_logits, fine, valid)
    attentive_prediction_loss(student, teacher_logits, attention).backward()
    assert student.grad[0, 0, 0, 0] < 0          # pulled towards the teacher's confident "mine"
    assert student.grad[0, 0, 0, 1] == 0         # released pixel: no pull from the teacher


def test_attention_without_labels_follows_teacher_confidence():
    teacher_logits, _, _ = maps()
    attention = attention_map(teacher_logits)
    assert attention[0, 0, 0, 0] > 0.95 and attention[0, 0, 1, 1] == 0  # sure: kept; unsure (p = 0.5): not
    assert torch.equal(attention_map(teacher_logits, attentive=False), torch.ones_like(teacher_logits))


def test_reliability_counts_how_often_each_teacher_call_matched_the_fine_labels():
    teacher_logits, fine, valid = maps()          # "mine" calls: 1 right, 1 wrong, 1 unsure (logit 0 = background)
    reliability = TeacherReliability()
    assert reliability.rates.tolist() == [1.0, 1.0]  # trusted before any label
    reliability.update(teacher_logits, fine, valid)
    background, mine = reliability.rates.tolist()
    assert mine == pytest.approx((1 + 1) / (1 + 2)) and background == pytest.approx((1 + 1) / (1 + 2))
    reliability.update(teacher_logits, fine, torch.zeros_like(valid))  # ignored pixels do not count
    assert reliability.rates.tolist() == pytest.approx([background, mine])


def test_unlabelled_attention_weighs_each_teacher_call_by_its_reliability():
    """A coarse teacher whose "mine" calls were mostly wrong on the labelled chips keeps little say on imagery."""
    reliability = TeacherReliability()
    sure_mine, sure_background = torch.full((1, 1, 4, 4), 6.0), torch.full((1, 1, 4, 4), -6.0)
    for _ in range(3):  # labelled pixels: the teacher's "mine" is right 1 time in 4, its "background" always
        reliability.update(sure_mine, (torch.arange(16) % 4 == 0).float().view(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
        reliability.update(sure_background, torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    logits = torch.tensor([[[[6.0, -6.0]]]])
    attention = attention_map(logits, reliability=reliability)
    assert attention[0, 0, 0, 0] == pytest.approx(13 / 49, abs=0.01)  # (1 + 12 agreed) / (1 + 48 calls)
    assert attention[0, 0, 0, 1] > 0.99
    assert torch.equal(attention_map(logits), attention_map(logits, reliability=TeacherReliability()))
