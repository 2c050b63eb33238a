"""Fine-tuning the bundled model on one scene, scored on a second: for pairs of synthetic 512² px scenes of one
landscape (3 mines each), IoU on scene B of the bundled model and of students fine-tuned with the command line's
defaults on scene A's exact polygons, with and without rehearsal (``--rehearsal-scenes``).

    .venv/bin/python bench/finetune_one_scene.py [--epochs N] [--steps-per-epoch N] [--rehearsal 0 4] [--seed 0]
        [--method minec2f] [--freeze-encoder] [--gain-jitter G] [--pairs NAME ...] [--work DIR] [--workers 2]
        [--by-class]

Eight pairs come from the generator's own sensor (``python -m model_core.synthetic --size 512 --mines 3``), four
share a strong shift the bundled model never saw (per-band gain 0.75-1.3, haze, winter or dry season, brighter or
weathered mines), as imagery from another sensor would. Each student is scored at the threshold it chose, the
bundled model at its own; the columns "at T" score every model at the bundled model's threshold T. ``--by-class``
also prints each model's false positives and missed footprint pixels on scene B by the generator's land-cover
class, beside each class's share of scene A. Runs train in worker processes, one thread each.
"""

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_core import defaults, paths  # noqa: E402
from model_core.bundle import load_bundle, read_spec  # noqa: E402
from model_core.metrics import iou_by_threshold  # noqa: E402
from model_core.pipeline import segment_scene  # noqa: E402
from model_core.rasters import decode_probability  # noqa: E402
from model_core.synthetic import CLASSES, DomainShift, make_scene, write_scene  # noqa: E402

# name: (landscape, seed of scene A, seed of scene B, L2A +1000 offset, shared shift seed or None)
PAIRS = {
    "temperate77": ("temperate", 77, 78, False, None), "arid11": ("arid", 11, 12, True, None),
    "tropical21": ("tropical", 21, 22, False, None), "mixed31": ("mixed", 31, 32, True, None),
    "arid41": ("arid", 41, 42, False, None), "temperate61": ("temperate", 61, 62, False, None),
    "tropical51": ("tropical", 51, 52, True, None), "mixed71": ("mixed", 71, 72, False, None),
    "shifted_temperate": ("temperate", 10, 11, True, 1), "shifted_arid": ("arid", 20, 21, False, 2),
    "shifted_tropical": ("tropical", 30, 31, True, 3), "shifted_mixed": ("mixed", 40, 41, False, 4),
}


def sensor_shift(seed, landscape):
    """A strong shift shared by both scenes of a pair: another sensor, season and mine material."""
    rng = np.random.default_rng(seed)
    return DomainShift(gain=tuple(rng.uniform(0.75, 1.3, 12)), haze=float(rng.uniform(0.02, 0.05)),
                       season=str(rng.choice(["winter", "dry"])), landscape=landscape,
                       mine_brightness=float(rng.uniform(0.75, 1.25)), terrace_contrast=float(rng.uniform(0.4, 1.6)))


def make_pair(name):
    """Scenes A and B of pair ``name`` (SyntheticScene)."""
    landscape, seed_a, seed_b, offset, shift_seed = PAIRS[name]
    shift = sensor_shift(shift_seed, landscape) if shift_seed is not None else DomainShift(landscape=landscape)
    return [make_scene(512, seed, shift=shift, l2a_offset=offset, mines=3) for seed in (seed_a, seed_b)]


def write_pair(name, work, scenes=None):
    """The files of scenes A and B (``scenes``, default :func:`make_pair`) in ``work / name``."""
    return [write_scene(scene, work / name / part, "scene") for part, scene in zip("ab", scenes or make_pair(name))]


def errors_by_class(prob_path, threshold, scene):
    """{land-cover class: (false-positive pixels, missed footprint pixels)} of a probability raster of ``scene``."""
    with rasterio.open(prob_path) as src:
        probability, valid = decode_probability(src.read(1))
    predicted, truth = valid & (probability >= threshold), scene.fine.astype(bool)
    return {name: (int((predicted & ~truth & (scene.kinds == k)).sum()),
                   int((~predicted & truth & (scene.kinds == k)).sum())) for k, name in enumerate(CLASSES)}


def class_counts(scene_a, scene_b):
    """{land-cover class of either scene: (its % of scene A, its footprint pixels in scene B)}."""
    footprint_b = scene_b.fine.astype(bool)
    return {kind: (100 * float(np.mean(scene_a.kinds == k)), int((footprint_b & (scene_b.kinds == k)).sum()))
            for k, kind in enumerate(CLASSES) if (scene_a.kinds == k).any() or (scene_b.kinds == k).any()}


def reference_threshold():
    """The bundled model's threshold, at which every model is also scored."""
    return read_spec(paths.DEFAULT_MODEL).threshold


def iou_on(bundle_path, scene, out):
    """(IoU of ``bundle_path`` on ``scene`` at its own threshold, IoU at :func:`reference_threshold`, its
    threshold); float32 on every CPU."""
    bundle = load_bundle(bundle_path)
    segment_scene(scene["image"], bundle, out / "prob.tif", out / "mask.tif", out / "footprints.gpkg",
                  device="cpu", overwrite=True, min_area_ha=0.0, precision="float32")
    threshold = bundle.spec.threshold
    reference = reference_threshold()
    scores = iou_by_threshold(out / "prob.tif", scene["fine_mask"], (threshold, reference))
    return scores[threshold], scores[reference], threshold


def run_pair(name, work, epochs, rehearsals, seed, method, options, by_class=False):
    """(name, {model: (IoU at its threshold, IoU at the bundled model's threshold, threshold, fine-tuning seconds,
    errors_by_class or None)}, class_counts or None) for one pair; ``options``: more command-line arguments for the
    students."""
    os.environ["MINEC2F_THREADS"] = "1"
    scenes = make_pair(name)
    scene_a, scene_b = write_pair(name, work, scenes)
    folder = work / name

    def scores(bundle_path, out, seconds):
        iou, at_reference, threshold = iou_on(bundle_path, scene_b, out)
        errors = errors_by_class(out / "prob.tif", threshold, scenes[1]) if by_class else None
        return iou, at_reference, threshold, seconds, errors

    rows = {"bundled model": scores(paths.DEFAULT_MODEL, folder / "bundled", 0.0)}
    label = "student" if method == "minec2f" else method
    for rehearsal in rehearsals:
        student = folder / f"{label}_rehearsal{rehearsal}.safetensors"
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "model_core", "finetune", "--teacher", str(paths.DEFAULT_MODEL),
                              "--raster", str(scene_a["image"]), "--polygons", str(scene_a["fine_polygons"]),
                              "--epochs", str(epochs), "--rehearsal-scenes", str(rehearsal), "--seed", str(seed),
                              "--method", method, "--out", str(student), "--overwrite", *options],
                             cwd=ROOT, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"fine-tuning on {name} failed: {run.stderr.strip()[-2000:]}")
        rows[f"{label}, {rehearsal} rehearsal scenes"] = scores(student, folder / student.stem,
                                                                time.perf_counter() - started)
    return name, rows, class_counts(*scenes) if by_class else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=defaults.STUDENT["epochs"], help="the CLI's --epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="the CLI's --steps-per-epoch (default: its own)")
    parser.add_argument("--rehearsal", type=int, nargs="+", default=[0, 4], help="rehearsal scenes of the students")
    parser.add_argument("--seed", type=int, default=0, help="the students' training seed (the CLI's --seed)")
    parser.add_argument("--method", default="minec2f", help="the students' method (the CLI's --method)")
    parser.add_argument("--freeze-encoder", action="store_true", help="the students keep the teacher's encoder")
    parser.add_argument("--gain-jitter", type=float, help="the CLI's --gain-jitter (default: its own)")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    parser.add_argument("--work", help="keep scenes and students here (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pairs at once, one thread each")
    parser.add_argument("--by-class", action="store_true", help="also errors on scene B by land-cover class")
    args = parser.parse_args()
    options = ["--freeze-encoder"] if args.freeze_encoder else []
    if args.steps_per_epoch:
        options += ["--steps-per-epoch", str(args.steps_per_epoch)]
    if args.gain_jitter is not None:
        options += ["--gain-jitter", str(args.gain_jitter)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            outputs = list(pool.map(run_pair, args.pairs, [work] * len(args.pairs),
                                    [args.epochs] * len(args.pairs), [args.rehearsal] * len(args.pairs),
                                    [args.seed] * len(args.pairs), [args.method] * len(args.pairs),
                                    [options] * len(args.pairs),
                                    [args.by_class] * len(args.pairs)))
    results = {name: rows for name, rows, _ in outputs}
    models = list(next(iter(results.values())))
    steps = f" of {args.steps_per_epoch} steps" if args.steps_per_epoch else ""
    print(f"IoU on scene B; students fine-tuned on scene A for {args.epochs} epochs{steps} with the CLI defaults, "
          f"method {args.method}{', encoder frozen' if args.freeze_encoder else ''}, seed {args.seed}"
          f"{'' if args.gain_jitter is None else f', gain jitter {args.gain_jitter}'}; "
          f"{(time.perf_counter() - started) / 60:.1f} min, {args.workers} pairs at once")
    print(f"{'pair':20}" + "".join(f"{model:>40}" for model in models))
    reference = next(iter(results.values()))["bundled model"][2]  # the threshold iou_on scored every model at
    for name, rows in results.items():
        print(f"{name:20}" + "".join(f"{f'{iou:.3f} (t {t:.2f}) / {at_reference:.3f} at {reference:g}':>40}"
                                     for iou, at_reference, t, *_ in rows.values()))
    for label, column in (("mean", 0), (f"mean at {reference:g}", 1)):
        print(f"{label:20}" + "".join(f"{np.mean([rows[m][column] for rows in results.values()]):40.3f}"
                                      for m in models))
    for model in models[1:]:
        gains = [rows[model][0] - rows["bundled model"][0] for rows in results.values()]
        print(f"{model}: better than the bundled model on {sum(g > 0 for g in gains)} of {len(gains)} pairs, "
              f"IoU change {min(gains):+.3f} to {max(gains):+.3f}")
    if args.by_class:
        print_errors_by_class(outputs, models)


def print_errors_by_class(outputs, models):
    print("\nPixels of scene B wrongly called footprint (FP) or missed (FN), by land-cover class of either scene; "
          "A %: the class's share of scene A, B px: its footprint pixels in scene B")
    for name, rows, classes in outputs:
        print(f"{name:20}{'A %':>7}{'B px':>7}" + "".join(f"{model[:28] + ' FP / FN':>40}" for model in models))
        for kind, (share_a, footprint_b) in classes.items():
            print(f"  {kind:18}{share_a:7.2f}{footprint_b:7d}"
                  + "".join(f"{f'{fp} / {fn}':>40}" for fp, fn in (rows[model][4][kind] for model in models)))


if __name__ == "__main__":
    main()
