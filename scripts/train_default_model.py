"""Train the bundled model: a MineC2F teacher on coarse synthetic scenes, a student on fine ones, then that
student broadened on fine scenes whose materials' spectra vary.

    .venv/bin/python scripts/train_default_model.py [--work DIR] [--quick] [--reuse-teacher | --reuse-student]

Coarse domain: many scenes from several landscapes with inventory-style outlines and a sensor shift (gain,
haze). Fine domain: fewer scenes with exact footprints. Broad domain: exact footprints, the coarse domain's sensor
range with twice its haze, each material's spectrum varied per band (``DomainShift.spectral_jitter``), so that the
model leans less on our generator's exact spectra, and a third of the mines dug in coal, with dark ground that is not
a mine beside them (``DomainShift.dark_mines``); the student, as the frozen teacher, distils into the broadened
model. The bundle's threshold is calibrated on unseen whole scenes of the three domains through the inference
engine (a user's imagery will not look like the training data); held-out fine and broad test scenes, with and
without the L2A +1000 DN offset, then score it. The figures go to stdout and to the bundle's spec.
Writes resources/models/minec2f_default.safetensors (+ .log.csv, .curves.png next to the work files).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_core import defaults, paths  # noqa: E402
from model_core.bundle import load_bundle, save_bundle  # noqa: E402
from model_core.metrics import evaluate_mask_raster, iou_by_threshold  # noqa: E402
from model_core.pipeline import segment_scene  # noqa: E402
from model_core.synthetic import DomainShift, write_scene_set  # noqa: E402
from model_core.train import (THRESHOLDS, TrainConfig, best_threshold, finetune_student,  # noqa: E402
                               train_teacher)

LANDSCAPES = ("temperate", "arid", "tropical", "mixed")
EPOCHS_BROAD = 10


def coarse_shift(rng):
    return DomainShift(gain=tuple(rng.uniform(0.85, 1.15, 12)), haze=float(rng.uniform(0, 0.04)),
                       season=str(rng.choice(["summer", "winter", "dry"])), landscape=str(rng.choice(LANDSCAPES)),
                       mine_brightness=float(rng.uniform(0.85, 1.15)), terrace_contrast=float(rng.uniform(0.5, 1.5)))


def fine_shift(rng):
    return DomainShift(gain=tuple(rng.uniform(0.95, 1.05, 12)), haze=float(rng.uniform(0, 0.015)),
                       season=str(rng.choice(["summer", "dry"])), landscape=str(rng.choice(LANDSCAPES)))


def broad_shift(rng):
    return DomainShift(gain=tuple(rng.uniform(0.85, 1.15, 12)), haze=float(rng.uniform(0, 0.08)),
                       season=str(rng.choice(["summer", "winter", "dry"])), landscape=str(rng.choice(LANDSCAPES)),
                       mine_brightness=float(rng.uniform(0.7, 1.3)), terrace_contrast=float(rng.uniform(0.3, 1.5)),
                       spectral_jitter=0.15, dark_mines=defaults.DARK_MINES)


def calibrate_threshold(bundle, images, scenes, work):
    """(best threshold of THRESHOLDS, {threshold: mean IoU}) over whole ``images`` through the engine, in float32
    so that the threshold does not depend on the CPU's bfloat16."""
    ious = []
    for image, scene in zip(images, scenes):
        prob_path = work / f"{image.parent.name}_{image.stem}_prob.tif"
        segment_scene(image, bundle, prob_path, work / "mask.tif", work / "fp.gpkg", overwrite=True,
                      min_area_ha=0.0, precision="float32")
        ious.append(list(iou_by_threshold(prob_path, scene["fine_mask"], THRESHOLDS).values()))
    by_threshold = dict(zip(THRESHOLDS, np.mean(ious, axis=0).round(4).tolist()))
    return best_threshold(by_threshold), by_threshold


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="folder for scenes and intermediate bundles (default: temp)")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script end to end")
    parser.add_argument("--out", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--reuse-teacher", action="store_true", help="keep WORK/teacher.safetensors if it exists")
    parser.add_argument("--reuse-student", action="store_true",
                        help="keep WORK/student.safetensors if it exists and only broaden it")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="minec2f_train_"))
    work.mkdir(parents=True, exist_ok=True)
    n_coarse, n_fine, n_broad, n_test, size = (4, 2, 2, 2, 256) if args.quick else (20, 6, 24, 6, 512)
    epochs_teacher, epochs_student = (2, 2) if args.quick else (25, 8)
    # the broadened model: epochs of at least 100 steps of 8 chips of 128 px, gain jitter 0.1
    broad_schedule = {**defaults.STUDENT, "epochs": EPOCHS_BROAD, "batch": 8, "gain_jitter": 0.1}
    if args.quick:
        broad_schedule.update(epochs=1, batch=4, min_steps_per_epoch=5)
    chips = {"chip_size": 128, "stride": 64, "batch": 4} if args.quick else {"chip_size": 256, "stride": 128,
                                                                           "batch": 8}
    log = print

    coarse_images, coarse_gpkg, _ = write_scene_set(work / "coarse", n_coarse, 1, size, coarse_shift, "coarse")
    fine_images, fine_gpkg, _ = write_scene_set(work / "fine", n_fine, 2, size, fine_shift, "fine")
    broad_images, broad_gpkg, _ = write_scene_set(work / "broad", n_broad, 50, size, broad_shift, "fine")
    tests = {name: write_scene_set(work / name, n_test, seed, size, shift, "fine", offset_every=2)
             for name, seed, shift in (("test", 3, fine_shift), ("broad_test", 60, broad_shift))}
    calibration = [write_scene_set(work / folder, n_test // 2 + 1, seed, size, shift, "fine", offset_every=2)
                   for folder, seed, shift in (("calibration_fine", 4, fine_shift),
                                               ("calibration_shifted", 5, coarse_shift),
                                               ("calibration_broad", 6, broad_shift))]

    teacher_path, student_path = work / "teacher.safetensors", work / "student.safetensors"
    if args.reuse_student and student_path.exists():
        log(f"reusing the student {student_path}")
    else:
        if args.reuse_teacher and teacher_path.exists():
            log(f"reusing the teacher {teacher_path}")
        else:
            train_teacher(coarse_images, coarse_gpkg, teacher_path, overwrite=True, log=log,
                          config=TrainConfig(method="coarse_only", epochs=epochs_teacher, lr=2e-3, patience=6,
                                             **chips))
        finetune_student(teacher_path, fine_images, fine_gpkg, student_path, overwrite=True, log=log,
                         config=TrainConfig(method="minec2f", epochs=epochs_student, lr=5e-4, patience=6,
                                            rehearsal_scenes=0,  # its scenes span every landscape already
                                            **{**chips, "chip_size": chips["chip_size"] // 2}))
    broadened = finetune_student(student_path, broad_images, broad_gpkg, work / "broadened.safetensors",
                                 overwrite=True, log=log,
                                 config=TrainConfig(**broad_schedule, method="minec2f", rehearsal_scenes=0))

    bundle = load_bundle(broadened.bundle_path)
    threshold, by_threshold = calibrate_threshold(bundle, [i for c in calibration for i in c[0]],
                                                  [s for c in calibration for s in c[2]], work / "calibration_out")
    log(f"threshold {threshold} (training chose {bundle.spec.threshold} on its labelled chips); mean IoU on the "
        "calibration scenes " + ", ".join(f"{t}: {v:.3f}" for t, v in by_threshold.items()))
    bundle.spec.threshold = threshold
    test_metrics = {}
    for name, (images, _, scenes) in tests.items():
        scores = []
        for image, scene in zip(images, scenes):
            out_dir = work / f"{name}_out" / image.stem
            result = segment_scene(image, bundle, out_dir / "prob.tif", out_dir / "mask.tif", out_dir / "fp.gpkg",
                                   overwrite=True, min_area_ha=0.0, precision="float32")
            scores.append(evaluate_mask_raster(result.mask_path, scene["fine_mask"]))
            log(f"{name} {image.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores[-1].items()))
        test_metrics[name] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        log(f"held-out {name} mean: " + json.dumps(test_metrics[name]))

    spec = bundle.spec
    spec.name = "minec2f-default"
    spec.tile_size, spec.overlap = 512, 64  # bigger tiles: less overlap to recompute (bench/infer_throughput.py)
    spec.metrics = {**spec.metrics, **test_metrics, "test_scenes": n_test,
                    "threshold_calibration": {"scenes": sum(len(c[0]) for c in calibration),
                                              "mean_iou": {str(t): v for t, v in by_threshold.items()}}}
    spec.description = ("MineC2F student (attentive distillation from a teacher trained on coarse synthetic "
                        "inventory outlines), fine-tuned on synthetic exact footprints, then on scenes whose "
                        "spectra vary; 6 bands B02 B03 B04 B08 B11 B12. Synthetic training data only: check it "
                        "on your imagery before relying on it.")
    out = Path(args.out)
    save_bundle(out, bundle.net, spec, overwrite=True)
    for suffix in (".log.csv", ".curves.png"):
        for stage, bundle_path in (("teacher", teacher_path), ("student", student_path),
                                   ("broadened", broadened.bundle_path)):
            src = bundle_path.with_suffix(suffix)
            if src.exists():
                shutil.copy(src, out.parent / f"{out.stem}.{stage}{suffix}")
    log(f"bundled model written to {out}")


if __name__ == "__main__":
    main()
