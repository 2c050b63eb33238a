"""Attentive feature- and prediction-level distillation from a frozen teacher to its student (MineC2FNet).

The attention map says, per pixel, how much of the teacher to keep: high where the teacher is confident and
agrees with the fine label, zero where it disagrees (its coarse-boundary errors, which the student must unlearn)
and where the label is ignored. On imagery without fine labels it is the teacher's confidence: there is no
evidence against the teacher there, so the student keeps what it knows. With ``attentive=False`` the map is
the valid mask (or all ones without labels): plain distillation.
"""

import torch
import torch.nn.functional as F

EPS = 1e-6


def attention_map(teacher_logits, fine_mask=None, valid=None, *, attentive=True):
    """[N, 1, H, W] weights in [0, 1] from the teacher's logits, the fine labels (0/1) and the valid mask.
    Without labels (imagery the fine labels do not cover) the teacher's confidence alone weighs."""
    if fine_mask is None:
        prob = torch.sigmoid(teacher_logits.float())
        return (2.0 * prob - 1.0).abs() if attentive else torch.ones_like(prob)
    if not attentive:
        return valid.float()
    prob = torch.sigmoid(teacher_logits.float())
    confidence = (2.0 * prob - 1.0).abs()
    agrees = ((prob > 0.5) == (fine_mask > 0.5)).float()
    return confidence * agrees * valid.float()


def _weighted_mean(values, weights):
    return (values * weights).sum() / (weights.sum() + EPS)


def attentive_feature_loss(student_features, teacher_features, attention):
    """Mean over stages of the attention-weighted squared distance between channel-normalised features."""
    losses = []
    for student, teacher in zip(student_features, teacher_features):
        weights = F.adaptive_avg_pool2d(attention, student.shape[-2:])
        distance = (F.normalize(student.float(), dim=1) - F.normalize(teacher.float(), dim=1)).pow(2).sum(1, True)
        losses.append(_weighted_mean(distance, weights))
    return torch.stack(losses).mean()


def binary_kl(student_logits, teacher_logits, temperature):
    """Per-pixel KL(teacher || student) of Bernoulli distributions softened by ``temperature``."""
    t_logits, s_logits = teacher_logits.float() / temperature, student_logits.float() / temperature
    p = torch.sigmoid(t_logits)
    return (p * (F.logsigmoid(t_logits) - F.logsigmoid(s_logits))
            + (1 - p) * (F.logsigmoid(-t_logits) - F.logsigmoid(-s_logits)))


def attentive_prediction_loss(student_logits, teacher_logits, attention, temperature=2.0):
    """Attention-weighted, temperature-scaled pixel KD; scaled by T^2 so gradients keep their size."""
    kl = binary_kl(student_logits, teacher_logits, temperature)
    return temperature ** 2 * _weighted_mean(kl, attention)
