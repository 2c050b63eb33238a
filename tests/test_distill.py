"""Attentive distillation losses: where the teacher is kept, where it is released, and that only the student learns."""

import pytest
import torch

from model_core.distill import (OUTLINE_DISTANCES, TeacherReliability, attention_map, attentive_feature_loss,
                                attentive_prediction_loss, binary_kl, outline_distance_bins)


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


def test_outline_distance_bins_measure_how_far_each_pixel_is_from_the_other_call():
    calls = torch.zeros(1, 1, 1, 80, dtype=torch.bool)
    calls[..., 40:] = True                       # outline between columns 39 and 40
    bins = outline_distance_bins(calls)[0, 0, 0]
    distance = torch.cat([torch.arange(40, 0, -1), torch.arange(1, 41)])
    expected = torch.bucketize(distance, torch.tensor(OUTLINE_DISTANCES), right=True)
    assert torch.equal(bins, expected) and bins[39] == 0 and bins[0] == len(OUTLINE_DISTANCES)
    assert (outline_distance_bins(torch.ones(1, 1, 8, 8, dtype=torch.bool)) == len(OUTLINE_DISTANCES)).all()


def test_outline_distance_bins_equal_growing_the_other_call_square_by_square():
    torch.manual_seed(0)
    calls = torch.nn.functional.max_pool2d((torch.randn(2, 1, 70, 90) > 1.5).float(), 9, 1, 4) > 0.5
    expected = torch.zeros(calls.shape, dtype=torch.long)
    for edge in OUTLINE_DISTANCES:  # the other call nowhere in the (2 edge - 1)^2 square around the pixel
        radius = edge - 1
        for call, other in ((calls, ~calls), (~calls, calls)):
            near = torch.nn.functional.max_pool2d(other.float(), 2 * radius + 1, 1, radius) > 0.5
            expected += (call & ~near).long()
    assert torch.equal(outline_distance_bins(calls), expected) and len(expected.unique()) == len(OUTLINE_DISTANCES) + 1


def test_reliability_counts_how_often_each_teacher_call_matched_the_fine_labels():
    teacher_logits, fine, valid = maps()          # "mine" calls: 1 right, 1 wrong, 1 unsure (logit 0 = background)
    reliability = TeacherReliability()
    assert (reliability.rates == 1).all()         # trusted before any label
    reliability.update(teacher_logits, fine, valid)
    background, mine = reliability.rates[:, 0].tolist()  # every pixel of the 2 x 2 chip is next to the outline
    assert mine == pytest.approx((1 + 1) / (1 + 2)) and background == pytest.approx((1 + 1) / (1 + 2))
    assert (reliability.rates[:, 1:] == 1).all()
    reliability.update(teacher_logits, fine, torch.zeros_like(valid))  # ignored pixels do not count
    assert reliability.rates[:, 0].tolist() == pytest.approx([background, mine])


def test_unlabelled_attention_releases_the_teachers_buffer_and_keeps_the_cores_of_its_polygons():
    """A coarse teacher whose "mine" calls less than 8 px inside its outline were wrong on the labelled chips (the
    generalised buffer) keeps no say there on imagery, and its say deep inside its polygons and in background."""
    logits = torch.full((1, 1, 64, 64), -6.0)
    logits[..., 12:52, 12:52] = 6.0              # teacher: a 40 px square
    fine = torch.zeros_like(logits)
    fine[..., 19:45, 19:45] = 1.0                # truth: the square less a 7 px buffer
    reliability = TeacherReliability()
    reliability.update(logits, fine, torch.ones_like(logits))
    attention = attention_map(logits, reliability=reliability)[0, 0]
    assert attention[12:19, 12:52].max() < 0.02 and attention[30, 14] < 0.02  # buffer: released
    assert attention[32, 32] > 0.99 and attention[0, 0] > 0.99 and attention[8, 30] > 0.99
    assert torch.equal(attention_map(logits), attention_map(logits, reliability=TeacherReliability()))
