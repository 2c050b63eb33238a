"""How often a teacher's "mine" and "background" calls agree with exact footprints, by distance from the teacher's
own outline - the counts minec2f's distillation learns on labelled chips (model_core.distill.TeacherReliability),
here over whole scenes.

    python bench/teacher_reliability.py --teacher BUNDLE SCENE.tif [SCENE.tif ...]

Each SCENE.tif needs its exact footprint mask beside it as SCENE_fine.tif (as written by
model_core.synthetic.write_scene_set, e.g. the ``fine`` folder of ``bench/coarse_to_fine.py --work DIR``).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coarse_to_fine import predict_scene  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.distill import OUTLINE_DISTANCES, TeacherReliability  # noqa: E402


def teacher_logits(bundle, scene, tmp):
    """[1, 1, H, W] logits of ``bundle`` over ``scene`` (tiled by the inference engine)."""
    prob_path = Path(tmp) / "prob.tif"
    predict_scene(bundle, scene, prob_path, prob_format="float32")
    with rasterio.open(prob_path) as src:
        prob = np.clip(src.read(1, masked=True).filled(0.5), 1e-6, 1 - 1e-6)
    return torch.from_numpy(np.log(prob / (1 - prob)))[None, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("scenes", nargs="+")
    args = parser.parse_args()
    bundle = load_bundle(args.teacher)
    reliability = TeacherReliability()
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes:
            with rasterio.open(scene.replace(".tif", "_fine.tif")) as src:
                fine = torch.from_numpy(src.read(1) > 0).float()[None, None]
            reliability.update(teacher_logits(bundle, scene, tmp), fine, torch.ones_like(fine))
    edges = (1,) + OUTLINE_DISTANCES
    labels = [f"{low}-{high - 1}" for low, high in zip(edges, edges[1:])] + [f"{edges[-1]}+"]
    print(f"teacher {Path(args.teacher).name} on {len(args.scenes)} scene(s): share of its calls the exact "
          "footprints agree with, by distance from its outline (px); pixels in brackets")
    print(f"{'call':12}" + "".join(f"{label:>16}" for label in labels))
    for row, call in enumerate(("background", "mine")):
        cells = (f"{rate:.2f} ({int(count) - 1})" for rate, count in
                 zip(reliability.rates[row].tolist(), reliability.calls[row].tolist()))
        print(f"{call:12}" + "".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
