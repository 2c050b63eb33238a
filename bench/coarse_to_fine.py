"""Accuracy table of the coarse-to-fine methods on synthetic domains with a domain shift.

    .venv/bin/python bench/coarse_to_fine.py [--quick] [--budgets 8 32 128] [--seeds 3] [--work DIR]

Coarse domain: many scenes (arid, mixed, temperate; sensor gain 0.85-1.15, haze, dry/winter season, weathered
or fresh mines) labelled with inventory-style outlines (buffered, generalised, shifted). Fine domain: other
scenes (temperate, tropical, mixed; near-unit gain, little haze, summer) with exact footprints. For each seed a
teacher (``coarse_only``) learns the coarse domain; every other method then trains on a fixed budget of fine
chips with the same number of optimiser steps, and is scored on held-out fine-domain scenes by the inference
engine (tiled, at the threshold the run chose on its validation chips): IoU, F1 and boundary F1 (2 px), mean ±
std over seeds. Prints the table and writes it as Markdown and CSV into the work folder.
"""

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_core.bands import RasterBandInfo, match_bands, resolve_radiometry  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.device import set_cpu_threads  # noqa: E402
from model_core.infer import predict_raster  # noqa: E402
from model_core.metrics import evaluate_mask_raster  # noqa: E402
from model_core.synthetic import DomainShift, write_scene_set  # noqa: E402
from model_core.train import STUDENT_METHODS, TrainConfig, finetune_student, train_teacher  # noqa: E402

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
    "quick": dict(coarse=6, fine=3, test=2, size=256, teacher=(8, 15), student=(5, 10), budgets=(8, 32), seeds=1),
}


def score(bundle_path, test_scenes, work):
    """Mean scores of a bundle over the test scenes, through the tiled inference engine."""
    bundle = load_bundle(bundle_path)
    scores = []
    for scene in test_scenes:
        prob, mask = work / "prob.tif", work / "mask.tif"
        with rasterio.open(scene["image"]) as src:
            band_index = match_bands(RasterBandInfo.from_dataset(src), bundle.spec.band_list())
            radiometry, _ = resolve_radiometry(src)
        predict_raster(scene["image"], bundle, prob, device="cpu", band_index=band_index, radiometry=radiometry,
                       mask_path=mask)
        scores.append(evaluate_mask_raster(mask, scene["fine_mask"]))
    return {k: float(np.mean([s[k] for s in scores])) for k in METRICS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scenes, 1 seed, budgets 8 and 32 (< 5 min)")
    parser.add_argument("--budgets", type=int, nargs="+", help="fine training chips per run")
    parser.add_argument("--seeds", type=int, help="seeds per method (default 3, quick 1)")
    parser.add_argument("--methods", nargs="+", choices=TABLE_METHODS, default=list(TABLE_METHODS))
    parser.add_argument("--work", help="folder for scenes, bundles and the table (default: a temp folder)")
    args = parser.parse_args()
    setting = SETTINGS["quick" if args.quick else "full"]
    budgets = args.budgets or setting["budgets"]
    seeds = range(args.seeds or setting["seeds"])
    work = Path(args.work or tempfile.mkdtemp(prefix="minec2f_c2f_"))
    work.mkdir(parents=True, exist_ok=True)
    set_cpu_threads(None)
    started = time.perf_counter()

    size = setting["size"]
    coarse_images, coarse_gpkg, _ = write_scene_set(work / "coarse", setting["coarse"], 11, size, coarse_shift,
                                                    "coarse")
    fine_images, fine_gpkg, _ = write_scene_set(work / "fine", setting["fine"], 12, size, fine_shift, "fine")
    _, _, test_scenes = write_scene_set(work / "test", setting["test"], 13, size, fine_shift, "fine",
                                        offset_every=2)
    chips = dict(chip_size=128, stride=64, batch=8, patience=100)
    results = {}  # (method, budget) -> list of score dicts

    for seed in seeds:
        teacher_path = work / f"teacher_s{seed}.safetensors"
        epochs, steps = setting["teacher"]
        train_teacher(coarse_images, coarse_gpkg, teacher_path, overwrite=True,
                      config=TrainConfig(method="coarse_only", epochs=epochs, steps_per_epoch=steps, lr=2e-3,
                                         seed=seed, **chips))
        teacher_scores = score(teacher_path, test_scenes, work)
        for budget in budgets:
            results.setdefault(("coarse_only", budget), []).append(teacher_scores)
        print(f"[{time.perf_counter() - started:6.0f} s] seed {seed} teacher: {fmt(teacher_scores)}", flush=True)
        epochs, steps = setting["student"]
        for budget in budgets:
            for method in args.methods:
                if method == "coarse_only":
                    continue
                out = work / f"{method}_b{budget}_s{seed}.safetensors"
                config = TrainConfig(method=method, epochs=epochs, steps_per_epoch=steps, lr=5e-4 if method in (
                    "finetune", "kd", "minec2f") else 2e-3, seed=seed, max_chips=budget, **chips)
                finetune_student(teacher_path, fine_images, fine_gpkg, out, overwrite=True, config=config,
                                 coarse=(coarse_images, coarse_gpkg))
                results.setdefault((method, budget), []).append(score(out, test_scenes, work))
                print(f"[{time.perf_counter() - started:6.0f} s] seed {seed} budget {budget:4d} {method:12s} "
                      f"{fmt(results[(method, budget)][-1])}", flush=True)

    table = markdown_table(results, budgets, args.methods)
    minutes = (time.perf_counter() - started) / 60
    header = (f"{len(seeds)} seed(s); {setting['coarse']} coarse, {setting['fine']} fine and {setting['test']} "
              f"test scenes of {size}^2 px; student {setting['student'][0]} x {setting['student'][1]} steps of "
              f"8 chips of 128 px; {minutes:.1f} min on the CPU")
    print("\n" + header + "\n\n" + table)
    (work / "coarse_to_fine.md").write_text(header + "\n\n" + table + "\n")
    with open(work / "coarse_to_fine.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["method", "budget", "seed", *METRICS])
        for (method, budget), runs in results.items():
            for seed, run in zip(seeds, runs):
                writer.writerow([method, budget, seed, *(f"{run[k]:.4f}" for k in METRICS)])
    print(f"\nwritten: {work / 'coarse_to_fine.md'}, {work / 'coarse_to_fine.csv'}")


def fmt(scores):
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items())


def markdown_table(results, budgets, methods):
    columns = [f"{m} (budget {b})" for b in budgets for m in ("IoU", "F1", "bF1")]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in methods:
        cells = []
        for budget in budgets:
            runs = results.get((method, budget), [])
            for key in METRICS:
                values = [run[key] for run in runs]
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
