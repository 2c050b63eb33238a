"""Attentive feature- and prediction-level distillation from a frozen teacher to its student (MineC2FNet).

The attention map says, per pixel, how much of the teacher to keep: high where the teacher is confident and
agrees with the fine label, zero where it disagrees (its coarse-boundary errors, which the student must unlearn)
and where the label is ignored. On imagery without fine labels it is the teacher's confidence times the
reliability of the teacher's call there (:class:`TeacherReliability`): how often that call - "mine" or
"background" - at that distance from the teacher's own outline agreed with the fine labels so far. A coarse
teacher's "mine" near its outline is mostly the buffer around a real footprint; its errors repeat beyond the
labelled chips, so its word counts there only as much as the labels showed it can be trusted. With
``attentive=False`` the map is the valid mask (or all ones without labels): plain distillation.
"""

import torch
import torch.nn.functional as F

EPS = 1e-6


OUTLINE_DISTANCES = (2, 4, 8, 16, 32)  # px: edges of the distance-from-own-outline bins of TeacherReliability


def outline_distance_bins(calls, edges=OUTLINE_DISTANCES):
    """[N, 1, H, W] index of the bin (0 .. len(edges)) of each pixel's distance to the nearest pixel of the other
    call (chessboard distance, within the chip): bin k holds distances in [edges[k-1], edges[k])."""
    height, width = calls.shape[-2:]
    pad = edges[-1]  # summed-area tables of each call's pixels, padded so that any window up to the last edge fits
    table = F.pad(torch.cat([~calls, calls], dim=1).int(), (pad, pad - 1, pad, pad - 1)).cumsum(-1).cumsum(-2)
    bins = torch.zeros(calls.shape, dtype=torch.long, device=calls.device)
    for edge in edges:  # the other call within edge - 1 px: a non-empty (2 edge - 1)^2 window
        low, high = pad - edge, pad + edge - 1
        counts = (table[..., high:high + height, high:high + width] - table[..., low:low + height, high:high + width]
                  - table[..., high:high + height, low:low + width] + table[..., low:low + height, low:low + width])
        bins += (torch.where(calls, counts[:, :1], counts[:, 1:]) == 0).long()
    return bins


class TeacherReliability:
    """Share of the teacher's "background" and "mine" calls that agreed with the fine labels, over every labelled
    pixel seen so far, by distance from the teacher's own outline (bins of OUTLINE_DISTANCES; one agreeing
    pseudo-count each to start: trusted until the labels say otherwise). A coarse teacher's "mine" calls near its
    outline are mostly the generalised buffer around a footprint; deep inside its polygons they are mostly right."""

    def __init__(self):
        shape = (2, len(OUTLINE_DISTANCES) + 1)
        self.agreed = torch.ones(shape, dtype=torch.float64)
        self.calls = torch.ones(shape, dtype=torch.float64)

    def update(self, teacher_logits, fine_mask, valid):
        calls, truth, counted = teacher_logits > 0, fine_mask > 0.5, valid > 0.5
        bins = outline_distance_bins(calls)
        cell = (calls.long() * self.calls.shape[1] + bins)[counted].cpu()
        agreed = (calls == truth)[counted].cpu().double()
        self.calls += torch.bincount(cell, minlength=self.calls.numel()).double().view_as(self.calls)
        self.agreed += torch.bincount(cell, weights=agreed, minlength=self.calls.numel()).view_as(self.agreed)

    def state_dict(self):
        """The counts as JSON-able lists (kept in resume checkpoints, so a resumed run trusts as the first did)."""
        return {"agreed": self.agreed.tolist(), "calls": self.calls.tolist()}

    def load_state_dict(self, state):
        agreed = torch.tensor(state["agreed"], dtype=torch.float64)
        calls = torch.tensor(state["calls"], dtype=torch.float64)
        if agreed.shape == self.agreed.shape == calls.shape:  # counts of an older layout are learned anew
            self.agreed, self.calls = agreed, calls

    @property
    def rates(self):
        """[2, bins] agreement rates in [0, 1]: row 0 the "background" calls, row 1 the "mine" calls."""
        return (self.agreed / self.calls).float()

    def of_calls(self, teacher_logits):
        """[N, 1, H, W] reliability of the teacher's call at each pixel, given its distance from the outline."""
        calls = teacher_logits > 0
        rates = self.rates.to(teacher_logits.device)
        return rates[calls.long(), outline_distance_bins(calls)]


def attention_map(teacher_logits, fine_mask=None, valid=None, *, attentive=True, reliability=None):
    """[N, 1, H, W] weights in [0, 1] from the teacher's logits, the fine labels (0/1) and the valid mask.
    Without labels (imagery the fine labels do not cover) the teacher's confidence weighs, times the
    ``reliability`` (a TeacherReliability) of its call when given."""
    if fine_mask is None:
        prob = torch.sigmoid(teacher_logits.float())
        if not attentive:
            return torch.ones_like(prob)
        confidence = (2.0 * prob - 1.0).abs()
        return confidence if reliability is None else confidence * reliability.of_calls(teacher_logits)
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
