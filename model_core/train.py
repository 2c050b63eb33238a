"""Teacher training on coarse polygons and student fine-tuning on precise ones (MineC2FNet and baselines).

``METHODS`` share one loop (:func:`fit`); they differ in where the net starts and what the loss holds:

=============  ==============  ===============================================================
method         starts from     loss
=============  ==============  ===============================================================
coarse_only    random          BCE + Dice on coarse labels (this is the teacher)
fine_only      random          BCE + Dice on fine labels
finetune       teacher         BCE + Dice on fine labels
joint          random          BCE + Dice on coarse and fine chips mixed
kd             teacher         fine BCE + Dice + λf·feature + λp·prediction distillation, no attention
minec2f        teacher         fine BCE + Dice + λf·attentive feature + λp·attentive prediction distillation
=============  ==============  ===============================================================

A student's method may be ``auto``: finetune from a teacher trained on coarse outlines alone that scores below
``defaults.WEAK_TEACHER_IOU`` on the fine validation chips (distilling from such teachers held students back in the
accuracy table), else minec2f. The choice is logged and recorded in the bundle.

Distillation acts on the labelled chips and, with ``distill_imagery``, on an equal batch of chips from the whole
training area whose labels are not used (a few polygons label a few chips; the rest of the scene still shows the
student what the teacher knows). On labelled pixels the attention releases the teacher where it contradicts the
fine label; elsewhere it follows the teacher's confidence, weighted by how often the labelled pixels showed
that call of the teacher ("mine" or "background") to be right (see ``distill``). With ``rehearsal_scenes`` the
imagery also holds chips of generated scenes, one landscape after another (pseudo-rehearsal): a student fine-tuned
on one scene otherwise forgets what the teacher knows about ground that scene lacks (after fine-tuning on a
scene without natural water, where a tailings pond was labelled mine, a student called the lakes of the next
scene mines).

The loop: AdamW, linear warm-up then cosine decay, validation IoU/F1 each epoch, the best epoch kept as the
bundle (written atomically), early stopping, a resume checkpoint (safetensors, no pickle) after every epoch,
a CSV log and a PNG of the curves next to the bundle; at the end the bundle's threshold is set on all labelled
chips. Cancelling raises Cancelled; the best bundle written so far and the resume checkpoint stay usable.
"""

import copy
import csv
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from . import device as devices
from . import defaults, synthetic
from .bands import DEFAULT_MODEL_BANDS
from .bundle import UNFINISHED, ModelSpec, load_bundle, save_bundle
from .data import Augment, build_datasets
from .distill import TeacherReliability, attention_map, attentive_feature_loss, attentive_prediction_loss
from .errors import BandMismatchError, Cancelled, InputError, OutputError, check_output_folder, write_error
from .nets import (DEFAULT_ARCHITECTURE, DEFAULT_DECODER_CHANNELS, DEFAULT_ENCODER, DEFAULT_ENCODER_DEPTH,
                   build_net, copy_weights)

METHODS, STUDENT_METHODS, AUTO_METHOD = defaults.METHODS, defaults.STUDENT_METHODS, defaults.AUTO_METHOD
DISTILLING = ("minec2f", "kd")
TEACHER_INIT = ("minec2f", "kd", "finetune")  # students that start from the teacher's weights
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 20))  # 0.1 .. 0.95: validation picks the bundle's
REHEARSAL_SEED = 7919


@dataclass
class TrainConfig:
    """Hyper-parameters of one run; all are recorded in the bundle."""
    method: str = "minec2f"
    epochs: int = defaults.TEACHER["epochs"]
    batch: int = defaults.TEACHER["batch"]
    lr: float = defaults.TEACHER["lr"]
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    patience: int = defaults.TEACHER["patience"]
    chip_size: int = defaults.TEACHER["chip_size"]
    stride: int = None              # default: half the chip size
    val_fraction: float = defaults.VAL_FRACTION  # > 0: validation picks the best epoch and its threshold
    max_chips: int = None
    steps_per_epoch: int = None     # default: one pass over the training chips, at least min_steps_per_epoch
    min_steps_per_epoch: int = defaults.TEACHER["min_steps_per_epoch"]
    seed: int = 0
    lambda_feat: float = defaults.LAMBDA_FEAT
    lambda_pred: float = defaults.LAMBDA_PRED
    temperature: float = defaults.TEMPERATURE
    distill_imagery: bool = True    # kd/minec2f also distil on the training area's chips beyond the labelled ones
    rehearsal_scenes: int = defaults.REHEARSAL_SCENES  # ... and on chips of this many generated scenes
    freeze_norm: bool = None        # keep BatchNorm statistics fixed; default: for students started from the teacher
    freeze_encoder: bool = False    # students started from the teacher: train the decoder and head only
    dice_weight: float = 1.0
    offset_jitter: float = 0.1      # reflectance offset augmentation (survives a missed L2A +1000 DN offset)
    gain_jitter: float = defaults.TEACHER["gain_jitter"]  # per-band reflectance gain augmentation: x U(1-g, 1+g)
    architecture: str = DEFAULT_ARCHITECTURE
    encoder: str = DEFAULT_ENCODER
    encoder_depth: int = DEFAULT_ENCODER_DEPTH
    decoder_channels: tuple = DEFAULT_DECODER_CHANNELS
    device: str = "auto"
    workers: int = None             # DataLoader worker processes; default: 4 on CUDA (feed the GPU), 0 on the CPU

    @property
    def chip_stride(self):
        return self.chip_size // 2 if self.stride is None else self.stride

    def check(self):
        known = METHODS + (AUTO_METHOD,)
        if self.method not in known:
            raise InputError(f"unknown method {self.method!r}; use one of {', '.join(known)}")
        for name in ("epochs", "batch", "min_steps_per_epoch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_chips is not None and self.max_chips < 1:
            raise InputError(f"--max-chips {self.max_chips}: must be at least 1 (leave it out to train on every chip)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise InputError(f"steps per epoch must be at least 1 (got {self.steps_per_epoch})")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"--val-fraction {self.val_fraction}: training needs chips held out for validation (they "
                             f"pick the best epoch and its threshold); pass above 0 and below 1, e.g. "
                             f"{defaults.VAL_FRACTION}")
        if self.chip_size < 1 or self.chip_size % (2 ** self.encoder_depth):
            raise InputError(f"chip size {self.chip_size} must be a positive multiple of {2 ** self.encoder_depth} "
                             "(e.g. 128 or 256)")
        # name (as the command line spells it), value, lowest allowed (None: above 0), below which bound (or None)
        for option, value, low, high in (("--lr", self.lr, None, None), ("--temperature", self.temperature, None, None),
                                         ("--lambda-feat", self.lambda_feat, 0.0, None),
                                         ("--lambda-pred", self.lambda_pred, 0.0, None),
                                         ("--gain-jitter", self.gain_jitter, 0.0, 1.0),
                                         ("offset jitter", self.offset_jitter, 0.0, 1.0),
                                         ("weight decay", self.weight_decay, 0.0, None)):
            if not (math.isfinite(value) and (value > 0 if low is None else value >= low)
                    and (high is None or value < high)):
                allowed = ("above 0" if low is None else f"{low:g} or more") + (f" and below {high:g}" if high else "")
                raise InputError(f"{option} {value}: must be a number {allowed}")
        if self.patience < 1:
            raise InputError(f"--patience {self.patience}: must be at least 1 epoch")
        if self.rehearsal_scenes < 0:
            raise InputError(f"rehearsal scenes must be 0 (none) or more (got {self.rehearsal_scenes})")
        if self.freeze_encoder and self.method not in TEACHER_INIT + (AUTO_METHOD,):
            raise InputError(f"method {self.method} does not start from the teacher, so it has no encoder to keep; "
                             f"use --freeze-encoder with {', '.join(TEACHER_INIT)}")


@dataclass
class TrainResult:
    bundle_path: Path
    best_epoch: int
    metrics: dict
    history: list
    log_path: Path
    curves_path: Path


def segmentation_loss(logits, mask, valid, dice_weight=1.0):
    """BCE + soft Dice over valid pixels."""
    valid = valid.float()
    bce = (F.binary_cross_entropy_with_logits(logits.float(), mask, reduction="none") * valid).sum() / (
        valid.sum() + 1e-6)
    prob = torch.sigmoid(logits.float()) * valid
    inter = (prob * mask).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + (mask * valid).sum() + 1)
    return bce + dice_weight * dice


class LossForMethod:
    """Loss of one batch for ``method``; ``teacher`` is frozen (or None for methods without distillation)."""

    def __init__(self, config, teacher=None):
        self.config, self.teacher = config, teacher
        self.distill = config.method in DISTILLING
        self.attentive = config.method == "minec2f"
        self.reliability = TeacherReliability() if self.attentive else None

    def state_dict(self):
        """What the loss learned during training (the teacher's reliability), for resume checkpoints."""
        return {"reliability": self.reliability.state_dict()} if self.reliability is not None else {}

    def load_state_dict(self, state):
        if self.reliability is not None and "reliability" in state:
            self.reliability.load_state_dict(state["reliability"])

    def __call__(self, net, image, mask, valid, imagery=None):
        """``imagery``: an optional batch of unlabelled chips on which only the distillation terms act."""
        cfg = self.config
        if not self.distill:
            return segmentation_loss(net(image), mask, valid, cfg.dice_weight), {}
        labelled = image.shape[0]
        inputs = image if imagery is None else torch.cat([image, imagery])
        logits, features = net.forward_with_features(inputs)
        with torch.no_grad():
            t_logits, t_features = self.teacher.forward_with_features(inputs)
        attention = attention_map(t_logits[:labelled], mask, valid, attentive=self.attentive)
        if self.reliability is not None:
            self.reliability.update(t_logits[:labelled], mask, valid)
        if imagery is not None:
            attention = torch.cat([attention, attention_map(t_logits[labelled:], attentive=self.attentive,
                                                            reliability=self.reliability)])
        seg = segmentation_loss(logits[:labelled], mask, valid, cfg.dice_weight)
        feat = attentive_feature_loss(features, t_features, attention)
        pred = attentive_prediction_loss(logits, t_logits, attention, cfg.temperature)
        total = seg + cfg.lambda_feat * feat + cfg.lambda_pred * pred
        return total, {"seg": seg.item(), "feat": feat.item(), "pred": pred.item()}


def lr_factor(step, warmup_steps, total_steps):
    """Linear warm-up to 1, then cosine decay to 0.01."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def best_threshold(iou_by_threshold):
    """The threshold with the highest IoU; of equals, the one nearest 0.5."""
    return max(iou_by_threshold, key=lambda t: (iou_by_threshold[t], -abs(t - 0.5)))


@torch.no_grad()
def evaluate_net(net, dataset, info, batch=8, thresholds=THRESHOLDS):
    """Scores on ``dataset`` at each of ``thresholds`` -> {threshold: scores}; pixels pooled over all chips."""
    net.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch)
    counts = {t: np.zeros(3) for t in thresholds}
    for item in loader:
        with info.autocast():
            prob = torch.sigmoid(net(info.to_device(item["image"])).float()).cpu()
        valid, mask = item["valid"] > 0.5, item["mask"] > 0.5
        for t in thresholds:
            pred = prob > t
            counts[t] += [(pred & mask & valid).sum(), (pred & ~mask & valid).sum(), (~pred & mask & valid).sum()]
    scores = {}
    for t, (tp, fp, fn) in counts.items():
        scores[t] = {"iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}
    return scores


# ------------------------------------------------------------------------------------ resume checkpoints

def resume_path(out):
    return Path(out).with_suffix(".resume.safetensors")


def save_resume(path, net, optimizer, state):
    """Weights, AdamW moments and the loop state (JSON) in one safetensors file, written atomically."""
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt = optimizer.state_dict()
    for index, param_state in opt["state"].items():
        for name, value in param_state.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {"loop": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    temp = Path(f"{path}.partial")
    try:
        save_file(tensors, str(temp), metadata=meta)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def load_resume(path, net, optimizer):
    with safe_open(str(path), framework="pt") as reader:
        meta = reader.metadata()
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    groups = json.loads(meta["param_groups"])
    if [len(group["params"]) for group in groups] != [len(group["params"]) for group in optimizer.param_groups]:
        raise InputError(f"{Path(path).name} was written for a net with other layers (an older MineC2F); train "
                         "again without resuming, or delete it")
    net.load_state_dict(net.fitting_state({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}))
    state = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return json.loads(meta["loop"])


# ------------------------------------------------------------------------------------------- the loop

def fit(net, data, config, loss, out, spec, **options):
    """Train ``net`` on ``data`` (TrainingData) with ``loss``; keep the best epoch as a bundle at ``out``.

    With ``start_threshold`` (a student started from its teacher) the starting weights are a candidate too,
    "epoch 0", scored at that threshold, which they would keep: when no epoch beats that score on the validation
    chips, the bundle holds them with that threshold. ``start``: their validation scores at every threshold if
    already measured (``_validate`` of the same weights). Out of memory (GPU or CPU) is an InputError that says
    what to lower.
    """
    advice = (f"lower --batch ({config.batch}) or --chip-size ({config.chip_size}), or train on the CPU "
              f"(--device cpu); --resume continues from {resume_path(out).name} if an epoch has finished")
    return devices.explaining_out_of_memory(advice, _fit, net, data, config, loss, out, spec, **options)


def _fit(net, data, config, loss, out, spec, *, start_threshold=None, start=None, resume=False, progress=None,
         is_canceled=None, log=None, info=None):
    progress = progress or (lambda percent: None)
    is_canceled = is_canceled or (lambda: False)
    log = log or (lambda message: None)
    out = Path(out)
    info = info or devices.resolve_device(config.device)
    devices.set_cpu_threads()  # MINEC2F_THREADS: one per process when several trainings share a CPU
    net.to(info.device)
    if loss.teacher is not None:
        loss.teacher.to(info.device).eval().requires_grad_(False)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=config.batch, sampler=data.sampler, drop_last=True,
        num_workers=loader_workers(config, info), pin_memory=info.is_cuda)
    steps = config.steps_per_epoch or max(config.min_steps_per_epoch, len(loader))
    total = steps * config.epochs
    log(f"{config.epochs} epoch{'s' * (config.epochs > 1)} of {steps} steps, each of {config.batch} of the "
        f"{len(data.train)} training chips")
    net.model.encoder.requires_grad_(not config.freeze_encoder)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    freeze_norm = config.freeze_norm if config.freeze_norm is not None else config.method in TEACHER_INIT
    imagery = _imagery_batches(data, config, info) if loss.distill and config.distill_imagery else None
    scaler = torch.amp.GradScaler("cuda", enabled=info.is_cuda)
    state = {"epoch": 0, "best_iou": -1.0, "best_epoch": 0, "history": [], "stale": 0}
    start_net = copy.deepcopy(net) if start_threshold is not None else None
    start = (start or _validate(net, data, config, info)) if start_net is not None else None
    if start is not None:
        # the bar is what keeping the teacher would deliver: its score at the threshold it keeps, not at its best
        # threshold on these chips, which may lie far from it (0.912 at 0.1 against 0.749 at its 0.9 in one run)
        kept = evaluate_net(start_net, data.val, info, config.batch, thresholds=(float(start_threshold), 0.5))
        state["best_iou"] = kept[float(start_threshold)]["iou"]
        teacher_iou = start[0]["val_iou_best_threshold"]
        log(f"starting model: val IoU {teacher_iou:.3f} at its best threshold on these chips "
            f"({start[0]['best_threshold']}), {state['best_iou']:.3f} at its own threshold {start_threshold}, which "
            "an epoch must beat (else the student keeps the teacher)")
        if loss.distill and teacher_iou < defaults.WEAK_TEACHER_IOU:
            note = (f"note: the teacher agrees little with these fine labels (IoU {teacher_iou:.2f}); check "
                    "the result on a scene you did not label")
            if spec.hyperparameters.get("teacher_method") == "coarse_only":
                note += (f", and compare with method finetune: students that distil from a coarse teacher below IoU "
                         f"{defaults.WEAK_TEACHER_IOU} scored lower than plain fine-tuning in our accuracy table "
                         "(resources/models/MODEL_CARD.md, Limits)")
            log(note)
    checkpoint = resume_path(out)
    run = json.loads(json.dumps({"data": spec.training, "hyperparameters": spec.hyperparameters,
                                 "teacher": spec.parent_hash}))  # what a checkpoint must have been made with
    if resume and checkpoint.exists():
        state = load_resume(checkpoint, net, optimizer)
        _check_same_run(checkpoint, state.get("run"), run)
        loss.load_state_dict(state.get("loss", {}))
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total),
                                                      last_epoch=state.get("lr_steps", state["epoch"] * steps) - 1)
        for _ in range(state["epoch"] * steps if imagery is not None else 0):
            next(imagery)  # the distillation imagery where the interrupted run left it, as if never interrupted
        log(f"resumed from {checkpoint.name} after epoch {state['epoch']}")
    elif resume:
        log(f"nothing to resume: no checkpoint {checkpoint.name} next to {out.name}; training from the start")
    else:
        checkpoint.unlink(missing_ok=True)  # an earlier run's: --resume must never continue it with this run's data
    state["run"] = run
    log_path, curves_path = out.with_suffix(".log.csv"), out.with_suffix(".curves.png")
    torch.manual_seed(config.seed + state["epoch"])
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        started = time.perf_counter()
        net.train()
        if freeze_norm:
            for module in net.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        losses, step, repeat = [], 0, 0
        while step < steps:
            data.sampler.set_epoch(epoch * 1000 + repeat)  # each pass over the chips draws new augmentations
            data.train.set_epoch(epoch * 1000 + repeat)
            repeat += 1
            for item in loader:
                if is_canceled():
                    if state["history"]:  # the curves of the epochs that finished, beside the log and best model
                        _plot_curves(curves_path, state["history"], log)
                    saved = (f"the best model so far is in {out.name}, marked unfinished" if state["best_epoch"]
                             else "no model was written")
                    raise Cancelled(f"training cancelled in epoch {epoch}; {saved}, and the run resumes from "
                                    f"{checkpoint.name} with --resume")
                image, mask, valid = (info.to_device(item[k]) for k in ("image", "mask", "valid"))
                extra = info.to_device(next(imagery)["image"]) if imagery is not None else None
                with info.autocast():
                    value, _ = loss(net, image, mask, valid, extra)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(value).backward()
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                if scaler.get_scale() >= scale:  # a lower scale: inf gradients, the optimizer skipped this step
                    scheduler.step()
                losses.append(value.detach().item())
                step += 1
                progress(100.0 * ((epoch - 1) * steps + step) / total)
                if step >= steps:
                    break
        fields, metrics = _validate(net, data, config, info)
        best_t = fields["best_threshold"]
        row = {"epoch": epoch, "steps": steps, "loss": float(np.mean(losses)), **fields,
               "seconds": round(time.perf_counter() - started, 2), "lr": scheduler.get_last_lr()[0]}
        state["history"].append(row)
        if row["val_iou_best_threshold"] > state["best_iou"]:
            state.update(best_iou=row["val_iou_best_threshold"], best_epoch=epoch, stale=0)
            spec.threshold = float(best_t)
            spec.metrics = {**metrics, "best_epoch": epoch, UNFINISHED: True}  # until the run ends
            save_bundle(out, net, spec, overwrite=True)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        state["loss"] = loss.state_dict()
        state["scaler"] = scaler.state_dict()  # on CUDA its loss scale: a resumed run does not start over at 2^16
        state["lr_steps"] = scheduler.last_epoch  # steps the optimizer took: fewer when the scaler skipped some
        try:
            _write_log(log_path, state["history"])
            save_resume(checkpoint, net, optimizer, state)
        except OSError as error:
            raise write_error(f"the training log or checkpoint next to {out}", error) from error
        log(f"epoch {epoch}/{config.epochs}: loss {row['loss']:.4f}, val IoU {row['val_iou']:.3f}, "  # once saved
            f"F1 {row['val_f1']:.3f} (best threshold {best_t}: IoU {row['val_iou_best_threshold']:.3f}), "
            f"{row['seconds']:.1f} s")
        if state["stale"] >= config.patience:
            log(f"early stop: no better validation IoU for {config.patience} epochs")
            break
    if start is not None and state["best_epoch"] == 0:
        spec.threshold = float(start_threshold)
        spec.metrics = {**_metrics_at(kept, spec.threshold), "best_epoch": 0}
        log(f"no epoch beat the starting model on the validation chips: the student keeps the teacher's weights and "
            f"threshold {start_threshold} (validation IoU {spec.metrics['val_iou']:.3f} there)")
        save_bundle(out, start_net, spec, overwrite=True)
    elif state["best_epoch"]:
        _set_threshold_on_labelled_chips(out, spec, data, config, info, log, state["best_epoch"])
    _plot_curves(curves_path, state["history"], log)
    checkpoint.unlink(missing_ok=True)
    if state["best_epoch"]:
        best = state["history"][state["best_epoch"] - 1]
    else:
        best = {"epoch": 0, **start[0]} if start is not None else {}
    return TrainResult(out, state["best_epoch"], best, state["history"], log_path, curves_path)


def _check_same_run(checkpoint, made_with, run):
    """Refuse to resume from ``checkpoint`` when it was made with other data, settings or teacher than ``run``.
    What only one of them records is not compared: a MineC2F update between the two may add or drop entries."""
    if made_with is None:
        return
    for section in ("data", "hyperparameters"):
        before, now = made_with.get(section) or {}, run.get(section) or {}
        for key in sorted(set(before) & set(now)):
            if before[key] != now[key]:
                raise InputError(f"{checkpoint.name} was made with {key} {str(before[key])[:80]}, this run has "
                                 f"{str(now[key])[:80]}; resume with the interrupted run's command, or drop "
                                 "--resume and pass --overwrite to start again")
    if made_with.get("teacher") != run.get("teacher"):
        raise InputError(f"{checkpoint.name} was made from another teacher; resume with the interrupted run's "
                         "command, or drop --resume and pass --overwrite to start again")


def _validate(net, data, config, info):
    """Scores on the validation chips -> (log row fields: IoU and F1 at 0.5, the best threshold and its IoU;
    bundle metrics at that threshold)."""
    scores = evaluate_net(net, data.val, info, config.batch)
    best_t = best_threshold({t: score["iou"] for t, score in scores.items()})
    fields = {"val_iou": scores[0.5]["iou"], "val_f1": scores[0.5]["f1"], "best_threshold": best_t,
              "val_iou_best_threshold": scores[best_t]["iou"]}
    return fields, _metrics_at(scores, best_t)


def _metrics_at(scores, threshold):
    """The bundle's validation metrics from :func:`evaluate_net` scores, at ``threshold`` (and IoU at 0.5)."""
    return {"val_iou": scores[threshold]["iou"], "val_f1": scores[threshold]["f1"],
            "val_iou_at_0.5": scores[0.5]["iou"]}


def _set_threshold_on_labelled_chips(out, spec, data, config, info, log, best_epoch):
    """Set the best bundle's threshold on every labelled chip, training and validation: the validation chips
    of a few polygons are few, and a threshold chosen on them alone followed a chip or two (on the one-scene
    bench it scored scene B 0.006-0.015 IoU lower over 3 seeds; bench/results/finetune_one_scene_threshold.md)."""
    best = load_bundle(out)
    best.net.to(info.device)
    pooled = evaluate_net(best.net, data.labelled, info, config.batch)
    threshold = best_threshold({t: score["iou"] for t, score in pooled.items()})
    val = evaluate_net(best.net, data.val, info, config.batch) if len(data.val) else pooled
    spec.threshold = float(threshold)
    spec.metrics = {**_metrics_at(val, threshold), "labelled_iou": pooled[threshold]["iou"], "best_epoch": best_epoch}
    save_bundle(out, best.net, spec, overwrite=True)
    log(f"threshold {threshold} (best IoU {pooled[threshold]['iou']:.3f} on all {len(data.labelled)} labelled "
        f"chips, training and validation): validation IoU {val[threshold]['iou']:.3f}")


def loader_workers(config, info):
    """DataLoader workers: as configured, else 4 (at most the cores) on CUDA and none on the CPU, where
    worker processes would compete with training for the same cores."""
    if config.workers is not None:
        return config.workers
    return min(4, os.cpu_count() or 1) if info.is_cuda else 0


def _imagery_batches(data, config, info):
    """Endless shuffled batches of the training area's chips (labels unused), new augmentations each pass."""
    if data.imagery is None or len(data.imagery) < config.batch:
        return None
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(data.imagery, batch_size=config.batch, shuffle=True, drop_last=True,
                                         generator=generator, num_workers=loader_workers(config, info),
                                         pin_memory=info.is_cuda)
    passes = 0
    while True:
        data.imagery.set_epoch(passes)
        passes += 1
        yield from loader


def _write_log(path, history):
    """The history as CSV; columns of every row, since a run resumed from an older version's checkpoint has rows
    without the newer columns."""
    temp = Path(f"{path}.partial")
    with open(temp, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)
    os.replace(temp, path)


def _plot_curves(path, history, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no training-curve PNG was written")
        return
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [row["loss"] for row in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss")
    right.plot(epochs, [row["val_iou"] for row in history], marker="o", label="IoU")
    right.plot(epochs, [row["val_f1"] for row in history], marker="o", label="F1")
    right.set(xlabel="epoch", ylabel="validation", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------- teacher and student

def _check_output(out, overwrite, resume, inputs):
    """``out`` as a Path, refused if it is no .safetensors file name, if it or a file written beside it is one of
    the run's ``inputs``, if it exists (unless ``overwrite``, or ``resume`` with a checkpoint beside it), or if its
    folder cannot be written."""
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"--out {out.name}: a model bundle is a .safetensors file; give a name such as "
                          f"{out.with_suffix('.safetensors').name}")
    written = {path.resolve() for path in (out, out.with_suffix(".log.csv"), out.with_suffix(".curves.png"),
                                           resume_path(out))}
    clash = [Path(path) for path in inputs if path and Path(path).resolve() in written]
    if clash:
        raise OutputError(f"--out {out} would overwrite the input {clash[0]}; choose another --out")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give the model a file name, such as {out / 'model.safetensors'}")
    checkpoint = resume_path(out)
    if out.exists() and not overwrite and not resume:
        hint = f" (or --resume: {checkpoint.name} beside it is an interrupted run's)" if checkpoint.exists() else ""
        raise OutputError(f"{out} exists already; choose another --out or pass --overwrite{hint}")
    if out.exists() and not overwrite and not checkpoint.exists():
        raise OutputError(f"{out} is a finished model (no {checkpoint.name} to continue from); pass --overwrite to "
                          "train it again, or choose another --out")
    check_output_folder(out.parent, "--out")
    return out


# settings that only a distilling method, or only a student started from its teacher, uses
DISTILLATION_SETTINGS = ("lambda_feat", "lambda_pred", "temperature", "distill_imagery", "rehearsal_scenes")
TEACHER_INIT_SETTINGS = ("freeze_norm", "freeze_encoder")


def _spec(config, name, role, bands, data, parent_hash=None, extra=None):
    """The bundle's spec; its hyper-parameters are the settings the method used, not those it ignored."""
    unused = ("device", "workers", *(DISTILLATION_SETTINGS if config.method not in DISTILLING else ()),
              *(TEACHER_INIT_SETTINGS if config.method not in TEACHER_INIT else ()))
    hyper = {k: v for k, v in asdict(config).items() if k not in unused}
    hyper["decoder_channels"] = list(config.decoder_channels)
    hyper.update(extra or {})
    return ModelSpec(name=name, architecture=config.architecture, encoder=config.encoder,
                     encoder_depth=config.encoder_depth, decoder_channels=list(config.decoder_channels),
                     in_channels=len(bands), bands=[{"name": b.name, "wavelength_nm": b.wavelength_nm} for b in bands],
                     norm_mean=[float(v) for v in data.norm_mean], norm_std=[float(v) for v in data.norm_std],
                     tile_size=max(256, config.chip_size), overlap=64, role=role, method=config.method,
                     parent_hash=parent_hash, training=data.summary, hyperparameters=hyper,
                     description=f"MineC2F {role} ({config.method})")


def _training_device(config, log, doing):
    """The run's device (torch CPU threads set first, so the log names the real count), logged."""
    devices.set_cpu_threads()
    info = devices.resolve_device(config.device)
    log(f"{doing} on {info.name}")
    return info


def chip_datasets(config, rasters, polygons, bands, **options):
    """``build_datasets`` with the run's chip size, stride, seed, batch and augmentation."""
    augment = Augment(gain_jitter=config.gain_jitter, reflectance_offset_jitter=config.offset_jitter)
    return build_datasets(rasters, polygons, model_bands=bands, chip_size=config.chip_size, stride=config.chip_stride,
                          seed=config.seed, batch_size=config.batch, augment=augment, **options)


def train_teacher(rasters, polygons, out, *, extent=None, config=TrainConfig(method="coarse_only"),
                  bands=DEFAULT_MODEL_BANDS, band_mapping=None, scale=None, offset=None, polygon_layer=None,
                  extent_layer=None, overwrite=False, resume=False, progress=None, is_canceled=None, log=None):
    """Train a teacher on (coarse) ``polygons`` over ``rasters``; writes the bundle ``out``. ``scale``/``offset``:
    reflectance = DN * scale + offset for every raster (default: each raster's metadata or detected).
    ``polygon_layer``/``extent_layer``: the layer of a multi-layer file (default: its first)."""
    config = replace(config, method="coarse_only")
    config.check()
    out = _check_output(out, overwrite, resume, [*rasters, polygons, extent])
    log = log or (lambda message: None)
    info = _training_device(config, log, "training")
    data = chip_datasets(config, rasters, polygons, bands, extent=extent, val_fraction=config.val_fraction,
                         max_chips=config.max_chips, band_mapping=band_mapping, scale=scale, offset=offset,
                         polygon_layer=polygon_layer, extent_layer=extent_layer, log=log)
    torch.manual_seed(config.seed)
    net = build_net(config.architecture, config.encoder, len(bands), config.encoder_depth, config.decoder_channels)
    spec = _spec(config, Path(out).stem, "teacher", bands, data)
    return fit(net, data, config, LossForMethod(config), out, spec, resume=resume, progress=progress,
               is_canceled=is_canceled, log=log, info=info)


def finetune_student(teacher_path, rasters, polygons, out, *, extent=None,
                     config=TrainConfig(**defaults.STUDENT, method=AUTO_METHOD), coarse=None, band_mapping=None,
                     scale=None, offset=None, polygon_layer=None, extent_layer=None, overwrite=False, resume=False,
                     progress=None, is_canceled=None, log=None):
    """Fine-tune a student from the teacher bundle on precise ``polygons``; writes the bundle ``out``.

    ``coarse``: (rasters, polygons) of the coarse domain, needed by the ``joint`` baseline only. ``scale``/``offset``,
    ``polygon_layer``/``extent_layer``: as for :func:`train_teacher`.
    """
    if config.method == "coarse_only":
        raise InputError("method coarse_only is the teacher itself; use `train` for it")
    teacher = load_bundle(teacher_path)
    t = teacher.spec
    config = replace(config, architecture=t.architecture, encoder=t.encoder, encoder_depth=t.encoder_depth,
                     decoder_channels=tuple(t.decoder_channels))
    config.check()
    out = _check_output(out, overwrite, resume, [teacher_path, *rasters, polygons, extent,
                                                 *((*coarse[0], coarse[1]) if coarse else ())])
    log = log or (lambda message: None)
    if t.unfinished_note():
        log(f"warning: the teacher: {t.unfinished_note()}")
    info = _training_device(config, log, "fine-tuning")
    bands = teacher.spec.band_list()
    norm = (teacher.spec.norm_mean, teacher.spec.norm_std)
    try:
        data = chip_datasets(config, rasters, polygons, bands, extent=extent, val_fraction=config.val_fraction,
                             max_chips=config.max_chips, norm=norm, band_mapping=band_mapping, scale=scale,
                             offset=offset, polygon_layer=polygon_layer, extent_layer=extent_layer, log=log)
    except BandMismatchError as error:
        raise BandMismatchError(f"the teacher {Path(teacher_path).name} cannot train on raster {error}") from error
    start = None
    if config.method == AUTO_METHOD:  # the teacher's scores are the student's starting scores, which fit reuses
        start, method = choose_method(teacher, data, config, info, log)
        config = replace(config, method=method)
    if config.method == "joint":
        if coarse is None:
            raise InputError("method joint mixes in the teacher's coarse data: give its rasters and polygons too "
                             "(--coarse-raster, --coarse-polygons)")
        coarse_data = chip_datasets(config, coarse[0], coarse[1], bands, norm=norm)
        data = _mix(data, coarse_data)
    torch.manual_seed(config.seed)
    net = build_net(t.architecture, t.encoder, t.in_channels, t.encoder_depth, t.decoder_channels)
    if config.method in TEACHER_INIT:
        copy_weights(teacher.net, net)
    chosen = {"method_choice": f"auto: teacher validation IoU {start[0]['val_iou_best_threshold']:.3f}, bound "
                               f"{defaults.WEAK_TEACHER_IOU} for teachers trained on coarse outlines alone; this "
                               f"teacher: {t.role}, method {t.method}"} if start is not None else {}
    spec = _spec(config, Path(out).stem, "student", bands, data, parent_hash=teacher.sha256,
                 extra={"teacher": t.name, "teacher_method": t.method, **chosen,
                        **({"feature_stages": "all decoder blocks"} if config.method in DISTILLING else {})})
    spec.tile_size, spec.overlap = t.tile_size, t.overlap  # the teacher's net: its tiles suit the student too
    loss = LossForMethod(config, teacher.net if config.method in DISTILLING else None)
    with tempfile.TemporaryDirectory(prefix="minec2f_rehearsal_") as folder:
        rehearsal = _rehearsal_imagery(config, bands, norm, Path(folder), log, is_canceled) if loss.distill else None
        if rehearsal is not None:
            data = replace(data, imagery=_ConcatChips(data.imagery, rehearsal))
        return fit(net, data, config, loss, out, spec, resume=resume, progress=progress, is_canceled=is_canceled,
                   log=log, info=info, start_threshold=t.threshold if config.method in TEACHER_INIT else None,
                   start=start)


def choose_method(teacher, data, config, info, log):
    """Method ``auto``'s choice for the ``teacher`` bundle on ``data``'s validation chips -> (the teacher's scores
    there, which are the student's starting scores, as ``fit`` takes them; "finetune" or "minec2f")."""
    start = _validate(teacher.net.to(info.device), data, config, info)
    return start, _auto_method(start[0]["val_iou_best_threshold"], teacher.spec, log)


def _auto_method(teacher_iou, teacher_spec, log):
    """Plain fine-tuning from a teacher trained on coarse outlines alone (method coarse_only)
    that scores below ``defaults.WEAK_TEACHER_IOU`` on the validation chips, where distilling held students back;
    minec2f from every other teacher, also from a student (such as the bundled model) that scores low on new
    imagery, where distilling kept students from collapsing (bench/results/foreign_scenes.md)."""
    bound, kind = defaults.WEAK_TEACHER_IOU, f"a {teacher_spec.role} trained with method {teacher_spec.method}"
    if teacher_spec.method == "coarse_only" and teacher_iou < bound:
        log(f"method auto -> finetune (plain fine-tuning): the teacher ({kind}) scores IoU {teacher_iou:.2f} on the "
            f"validation chips, below {bound}; distilling from such coarse teachers held students back in our "
            "accuracy table (resources/models/MODEL_CARD.md, Limits). --method minec2f distils anyway")
        return "finetune"
    why = (f"at least {bound}" if teacher_iou >= bound else
           f"below {bound}, but it is not a teacher trained on coarse outlines alone")
    log(f"method auto -> minec2f: the teacher ({kind}) scores IoU {teacher_iou:.2f} on the validation chips ({why}), "
        "so the student distils from it")
    return "minec2f"


def _rehearsal_imagery(config, bands, norm, folder, log, is_canceled=None):
    """Chips of ``config.rehearsal_scenes`` generated scenes (neutral sensor, each landscape in turn, twice the
    chip size across, some mines in coal beside dark ground that is not a mine) in ``folder``, normalised like the
    teacher's inputs; their labels are not used. None when there are none to make or the generator's Sentinel-2
    bands cannot feed the teacher. Raises Cancelled (before training, nothing written) when ``is_canceled()`` turns
    True between scenes."""
    if config.rehearsal_scenes < 1:
        return None
    landscapes = itertools.cycle(synthetic.LANDSCAPES)
    log(f"rehearsal: generating {config.rehearsal_scenes} synthetic scenes of {2 * config.chip_size} px")
    try:
        images, polygons, _ = synthetic.write_scene_set(
            folder, config.rehearsal_scenes, seed=REHEARSAL_SEED + config.seed, size=2 * config.chip_size,
            shift_for=lambda rng: synthetic.DomainShift(landscape=next(landscapes), dark_mines=defaults.DARK_MINES),
            label="fine", is_canceled=is_canceled)
    except Cancelled as error:
        raise Cancelled(f"fine-tuning cancelled before its first epoch ({error}); no model or checkpoint was "
                        "written or changed") from error
    try:
        chips = chip_datasets(replace(config, max_chips=None, batch=1), images, polygons, bands, val_fraction=0.0,
                              norm=norm)
    except BandMismatchError as error:
        log(f"no rehearsal: the generated Sentinel-2 scenes cannot feed the teacher ({error})")
        return None
    log(f"rehearsal: distilling also on {len(chips.imagery)} chips of {len(images)} generated scenes, so the student "
        "keeps the teacher's calls on ground the training rasters lack")
    return chips.imagery


def _mix(fine, coarse):
    """Training data drawing from both domains (the ``joint`` baseline); validation stays on the fine domain."""
    return replace(fine, train=_ConcatChips(fine.train, coarse.train),
                   sampler=_MixedSampler(fine.sampler, coarse.sampler, len(fine.train)),
                   summary={**fine.summary, "joint_coarse": coarse.summary})


class _ConcatChips(torch.utils.data.Dataset):
    """Two ChipDatasets end to end, indexed by int or (index, draw)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def set_epoch(self, epoch):
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def __len__(self):
        return len(self.first) + len(self.second)

    def __getitem__(self, query):
        index, draw = query if isinstance(query, tuple) else (query, 0)
        if index < len(self.first):
            return self.first[(index, draw)]
        return self.second[(index - len(self.first), draw)]


class _MixedSampler(torch.utils.data.Sampler):
    """The draws of both samplers, the second's indices shifted past the first dataset, shuffled together."""

    def __init__(self, first, second, offset):
        self.first, self.second, self.offset, self.epoch = first, second, offset, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    def __len__(self):
        return len(self.first) + len(self.second)

    def __iter__(self):
        draws = list(self.first) + [(index + self.offset, draw) for index, draw in self.second]
        order = np.random.default_rng(self.epoch).permutation(len(draws))
        return iter([draws[i] for i in order])
