"""How a model's accuracy depends on the size of the mines: synthetic 512 px scenes whose mines are drawn at
``DomainShift.mine_size`` times the generator's usual radius (5-16 % of the scene side, 26-82 px here), scored
through the inference engine at each model's threshold, in float32.

    .venv/bin/python bench/mine_size.py [--model BUNDLE ...] [--sizes 0.6 1 1.5 2 2.5] [--scenes 8]

Real pits span 100 m to several km; a model that learnt one size of mine misses the insides of bigger ones. The
scenes cycle through the generator's four landscapes, summer and dry season, with two mines each; their seeds are
not among those scripts/train_default_model.py trains or calibrates on. Prints pooled IoU, precision and recall
per size, and the recall on pit pixels (terraced pit floor, the part that looks most like bare ground).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coarse_to_fine import predict_scene  # noqa: E402
from model_core import paths  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.synthetic import CLASSES, DomainShift, make_scene, write_scene  # noqa: E402

LANDSCAPES = ("temperate", "arid", "tropical", "mixed")
FIRST_SEED = 9000


def scenes(size_factor, count, side=512):
    """``count`` scenes with mines of ``size_factor`` x the usual radius; the same land for every factor."""
    for k in range(count):
        shift = DomainShift(landscape=LANDSCAPES[k % 4], season=("summer", "dry")[k // 4 % 2], mine_size=size_factor)
        yield make_scene(side, seed=FIRST_SEED + k, shift=shift, mines=2)


def counts(bundle, scene, work):
    """(intersection, union, predicted, true, pit pixels found, pit pixels) of one scene at the model's threshold."""
    image = write_scene(scene, work, "scene")["image"]
    prob_path = work / "prob.tif"
    predict_scene(bundle, image, prob_path, prob_format="float32")
    with rasterio.open(prob_path) as src:
        found = src.read(1) >= bundle.spec.threshold
    truth, pit = scene.fine.astype(bool), scene.kinds == CLASSES.index("pit")
    return np.array([(found & truth).sum(), (found | truth).sum(), found.sum(), truth.sum(), found[pit].sum(),
                     pit.sum()], dtype=np.int64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="bundle to score (repeatable; default: the bundled one)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.6, 1.0, 1.5, 2.0, 2.5],
                        help="mine radius as a multiple of the generator's usual one")
    parser.add_argument("--scenes", type=int, default=8, help="scenes per size")
    args = parser.parse_args()
    print(f"{'model':28}{'mine size':>10}{'IoU':>8}{'precision':>11}{'recall':>8}{'pit recall':>12}")
    for model in args.model or [str(paths.DEFAULT_MODEL)]:
        bundle = load_bundle(model)
        for factor in args.sizes:
            total = np.zeros(6, dtype=np.int64)
            with tempfile.TemporaryDirectory() as tmp:
                for scene in scenes(factor, args.scenes):
                    total += counts(bundle, scene, Path(tmp))
            inter, union, predicted, true, pit_found, pit = total
            print(f"{Path(model).name[:27]:28}{factor:10.2f}{inter / union:8.3f}{inter / max(predicted, 1):11.3f}"
                  f"{inter / true:8.3f}{pit_found / max(pit, 1):12.3f}", flush=True)


if __name__ == "__main__":
    main()
