"""Accuracy table of the coarse-to-fine methods on synthetic domains with a domain shift.

    .venv/bin/python bench/coarse_to_fine.py [--quick] [--budgets 8 32 128] [--seeds 3] [--work DIR] [--workers N]
        [--methods ...] [--one-scene] [--teacher-labels coarse|fine] [--cli-students] [--cli-teachers]

Coarse domain: many scenes (arid, mixed, temperate; sensor gain 0.85-1.15, haze, dry/winter season, weathered
or fresh mines) labelled with inventory-style outlines (buffered, generalised, shifted). Fine domain: other
scenes (temperate, tropical, mixed; near-unit gain, little haze, summer) with exact footprints. For each seed a
teacher (``coarse_only``) learns the coarse domain; every other method then trains on a fixed budget of fine
chips with the same number of optimiser steps, and is scored on held-out fine-domain scenes by the inference
engine (tiled, at the threshold the run chose on its labelled chips): IoU, F1 and boundary F1 (2 px), mean ±
std over seeds. Runs train in worker processes, one per core by default, each with its share of the threads.
Prints the table and writes it as Markdown and CSV into the work folder.

Three variations test why a method wins or loses. ``--one-scene``: each seed's fine chips all come from one fine
scene (seed k: scene k), as when an analyst digitises a few polygons on one image. ``--teacher-labels fine``:
a control where the teacher learns the coarse domain's exact footprints instead of inventory outlines, so it
knows more than a few fine chips can teach; distillation should then help, whatever the coarse labels do.
``--cli-students``: every student trains as ``python -m model_core finetune`` does by default (``defaults.STUDENT``:
5 epochs of at least 100 steps of 4 chips, lr 3e-4) instead of the table's short schedule (6 x 10 steps of 8 chips);
about 4x the student training time. ``--cli-teachers``: every teacher trains as ``python -m model_core train`` does
by default (``defaults.TEACHER``: up to 30 epochs of at least 20 steps of 8 chips of 256 px, lr 1e-3, early
stopping) instead of 12 x 20 steps of 8 chips of 128 px; about 12x the teacher training time.
"""

import argparse
import csv
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_core import defaults  # noqa: E402
from model_core.bands import RasterBandInfo, match_bands, resolve_radiometry  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.infer import predict_raster  # noqa: E402
from model_core.metrics import evaluate_mask_raster  # noqa: E402
from model_core.synthetic import DomainShift, write_scene_set  # noqa: E402
from model_core.train import (DISTILLING, STUDENT_METHODS, TEACHER_INIT, TrainConfig, finetune_student,  # noqa: E402
                               train_teacher)

METRICS = ("iou", "f1", "boundary_f1")
TABLE_METHODS = ("coarse_only",) + tuple(m for m in ("fine_only", "finetune", "joint", "kd", "minec2f")
                                         if m in STUDENT_METHODS)


def coarse_shift(rng):
    return DomainShift(gain=tuple(rng.uniform(0.85, 1.15, 12)), haze=float(rng.uniform(0.015, 0.05)),
                       season=str(rng.choice(["dry", "winter", "summer"])),
                       landscape=str(rng.choice(["arid", "mixed", "temperate"])),
                       mine_brightness=float(rng.uniform(0.8, 1.2)), terrace_contrast=float(rng.uniform(0.6, 1.4)))


def fine_shift(rng):
    return DomainShift(gain=tuple(rng.uniform(0.97, 1.03, 12)), haze=float(rng.uniform(0.0, 0.01)),
                       season="summer", landscape=str(rng.choice(["temperate", "tropical", "mixed"])))


SETTINGS = {
    # scenes: coarse, fine train, fine test; size px; teacher/student epochs x steps per epoch
    "full": dict(coarse=12, fine=8, test=4, size=384, teacher=(12, 20), student=(6, 10), budgets=(8, 32, 128),
                 seeds=3),
    "quick": dict(coarse=6, fine=3, test=2, size=256, teacher=(8, 12), student=(3, 10), budgets=(8, 32), seeds=1),
}
CHIPS = dict(chip_size=128, stride=64, batch=8, patience=100)


def predict_scene(bundle, image, prob_path, precision="float32", **options):
    """``bundle``'s probabilities over ``image`` on the CPU, bands matched and radiometry read from the file; in
    float32 by default, so that a table does not depend on the CPU's bfloat16 (bench/precision.py compares)."""
    with rasterio.open(image) as src:
        band_index = match_bands(RasterBandInfo.from_dataset(src), bundle.spec.band_list())
        radiometry, _ = resolve_radiometry(src)
    predict_raster(image, bundle, prob_path, device="cpu", band_index=band_index, radiometry=radiometry,
                   precision=precision, **options)


def score(bundle_path, test_scenes):
    """Mean scores of a bundle over the test scenes, through the tiled inference engine."""
    bundle = load_bundle(bundle_path)
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in test_scenes:
            mask = Path(tmp) / "mask.tif"
            predict_scene(bundle, scene["image"], Path(tmp) / "prob.tif", mask_path=mask)
            scores.append(evaluate_mask_raster(mask, scene["fine_mask"]))
    return {k: float(np.mean([s[k] for s in scores])) for k in METRICS}


def use_threads(count):
    """Worker set-up: torch uses ``count`` threads (MINEC2F_THREADS, which the training loop honours)."""
    os.environ["MINEC2F_THREADS"] = str(count)


def teacher_run(seed, setting, data, work, cli_teachers=False):
    """Train and score the seed's teacher (``coarse_only``); with ``cli_teachers`` as the command line trains a
    teacher by default."""
    teacher_path = work / f"teacher_s{seed}.safetensors"
    if cli_teachers:
        config = TrainConfig(**defaults.TEACHER, method="coarse_only", seed=seed)
    else:
        epochs, steps = setting["teacher"]
        config = TrainConfig(method="coarse_only", epochs=epochs, steps_per_epoch=steps, lr=2e-3, seed=seed, **CHIPS)
    train_teacher(*data["coarse"], teacher_path, overwrite=True, config=config)
    return score(teacher_path, data["test"])


def student_run(method, budget, seed, setting, data, work, one_scene=False, cli_students=False):
    """Train one student method on ``budget`` fine chips (with ``one_scene``: from fine scene ``seed`` only) from
    the seed's teacher and score it; with ``cli_students`` as the command line trains a student by default."""
    images, polygons = data["fine"]
    fine = ([images[seed % len(images)]], polygons) if one_scene else data["fine"]
    out = work / f"{method}_b{budget}_s{seed}.safetensors"
    if cli_students:
        config = TrainConfig(**defaults.STUDENT, method=method, seed=seed, max_chips=budget)
    else:
        epochs, steps = setting["student"]
        config = TrainConfig(method=method, epochs=epochs, steps_per_epoch=steps, seed=seed, max_chips=budget,
                             lr=5e-4 if method in TEACHER_INIT else 2e-3, **CHIPS)
    finetune_student(work / f"teacher_s{seed}.safetensors", *fine, out, overwrite=True, config=config,
                     coarse=data["coarse"])
    return score(out, data["test"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scenes, 1 seed, budgets 8 and 32 (< 5 min)")
    parser.add_argument("--budgets", type=int, nargs="+", help="fine training chips per run")
    parser.add_argument("--seeds", type=int, help="seeds per method (default 3, quick 1)")
    parser.add_argument("--methods", nargs="+", choices=TABLE_METHODS, default=list(TABLE_METHODS))
    parser.add_argument("--one-scene", action="store_true", help="each seed's fine chips from one fine scene")
    parser.add_argument("--teacher-labels", choices=("coarse", "fine"), default="coarse",
                        help="what the teacher learns the coarse domain from (fine: the exact-label control)")
    parser.add_argument("--cli-students", action="store_true",
                        help="students train as `python -m model_core finetune` does by default (about 4x longer)")
    parser.add_argument("--cli-teachers", action="store_true",
                        help="teachers train as `python -m model_core train` does by default (about 12x longer)")
    parser.add_argument("--work", help="folder for scenes, bundles and the table (default: a temp folder)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="training runs at once, each on its share of the cores (default: one per core)")
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    budgets = args.budgets or setting["budgets"]
    seeds = range(args.seeds or setting["seeds"])
    work = Path(args.work or tempfile.mkdtemp(prefix="minec2f_c2f_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    size = setting["size"]
    coarse_images, coarse_gpkg, _ = write_scene_set(work / "coarse", setting["coarse"], 11, size, coarse_shift,
                                                    args.teacher_labels, stem="coarse")
    fine_images, fine_gpkg, _ = write_scene_set(work / "fine", setting["fine"], 12, size, fine_shift, "fine")
    _, _, test_scenes = write_scene_set(work / "test", setting["test"], 13, size, fine_shift, "fine",
                                        offset_every=2)
    data = {"coarse": (coarse_images, coarse_gpkg), "fine": (fine_images, fine_gpkg), "test": test_scenes}
    results = {}  # (method, budget) -> {seed: score dict}

    def report(key, seed, scores):
        results.setdefault(key, {})[seed] = scores
        print(f"[{time.perf_counter() - started:6.0f} s] seed {seed} budget {key[1]:4d} {key[0]:12s} {fmt(scores)}",
              flush=True)

    threads = max(1, (os.cpu_count() or 1) // args.workers)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=use_threads, initargs=(threads,)) as pool:
        teachers = {pool.submit(teacher_run, seed, setting, data, work, args.cli_teachers): seed for seed in seeds}
        students = {}
        for done in as_completed(teachers):  # a seed's students start as soon as its teacher is trained
            seed = teachers[done]
            for budget in budgets:
                report(("coarse_only", budget), seed, done.result())
            # distilling runs (teacher forward, twice the chips) take about 2.5x longer: queue them first so the
            # last runs to finish are short ones
            for method, budget in sorted(((method, budget) for budget in budgets for method in args.methods
                                          if method != "coarse_only"), key=lambda run: run[0] not in DISTILLING):
                run = pool.submit(student_run, method, budget, seed, setting, data, work, args.one_scene,
                                  args.cli_students)
                students[run] = (method, budget, seed)
        for done in as_completed(students):
            method, budget, seed = students[done]
            report((method, budget), seed, done.result())

    table = markdown_table(results, budgets, args.methods)
    minutes = (time.perf_counter() - started) / 60
    teacher = schedule(defaults.TEACHER if args.cli_teachers else None, setting["teacher"])
    student = schedule(defaults.STUDENT if args.cli_students else None, setting["student"])
    header = (f"{len(seeds)} seed(s); {setting['coarse']} coarse, {setting['fine']} fine and {setting['test']} "
              f"test scenes of {size}^2 px; teacher {teacher} and student {student}; {args.workers} runs at once on "
              f"{os.cpu_count()} cores; {minutes:.1f} min"
              + ("; fine chips of seed k from fine scene k only" if args.one_scene else "")
              + ("; CONTROL: teacher trained on the coarse domain's exact footprints"
                 if args.teacher_labels == "fine" else ""))
    print("\n" + header + "\n\n" + table)
    (work / "coarse_to_fine.md").write_text(header + "\n\n" + table + "\n")
    with open(work / "coarse_to_fine.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["method", "budget", "seed", *METRICS])
        for (method, budget), runs in results.items():
            for seed, run in sorted(runs.items()):
                writer.writerow([method, budget, seed, *(f"{run[k]:.4f}" for k in METRICS)])
    print(f"\nwritten: {work / 'coarse_to_fine.md'}, {work / 'coarse_to_fine.csv'}")


def schedule(cli_defaults, table):
    """How runs trained: as the command line does by default (``cli_defaults``) or by the table's (epochs, steps)."""
    if cli_defaults:
        return (f"{cli_defaults['epochs']} x at least {cli_defaults['min_steps_per_epoch']} steps of "
                f"{cli_defaults['batch']} chips of {cli_defaults['chip_size']} px (as the command line)")
    return f"{table[0]} x {table[1]} steps of {CHIPS['batch']} chips of {CHIPS['chip_size']} px"


def fmt(scores):
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items())


def markdown_table(results, budgets, methods):
    columns = [f"{m} (budget {b})" for b in budgets for m in ("IoU", "F1", "bF1")]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        cells = []
        for budget in budgets:
            runs = results.get((method, budget), {})
            for key in METRICS:
                values = [run[key] for run in runs.values()]
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
