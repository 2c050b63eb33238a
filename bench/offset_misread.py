"""What a wrong Sentinel-2 L2A +1000 DN offset costs the bundled model, and how close real scenes come to one.

Without metadata the engine takes a uint16 raster to carry the offset when no band has 0.1 % of its pixels below
1000 DN (``model_core.bands``). A bright desert without the offset looks the same. This scores the model on
scenes without the offset, read right (offset 0), with the offset wrongly removed (reflectance 0.1 too low) and
with a real offset left in (0.1 too high), in float32; then prints the darkest-band statistic of the real
Sentinel-2 scenes in ../shared/data/real, if there.

    python bench/offset_misread.py [--model BUNDLE] [--size 768]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from foreign_scenes import write_foreign_scene  # noqa: E402
from model_core import paths  # noqa: E402
from model_core.bands import darkest_dn, sample_dn  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.metrics import segmentation_scores  # noqa: E402
from model_core.pipeline import segment_scene  # noqa: E402
from model_core.synthetic import DomainShift, make_scene, write_scene  # noqa: E402

READINGS = {"right (0)": 0.0, "offset removed (-0.1)": -0.1, "offset kept (+0.1)": 0.1}
REAL = ROOT.parent / "shared" / "data" / "real"


def darkest(raster):
    with rasterio.open(raster) as src:
        return darkest_dn(sample_dn(src))


def iou(model, raster, truth, offset, work):
    result = segment_scene(raster, model, work / "p.tif", work / "m.tif", work / "f.gpkg", device="cpu",
                           scale=1e-4, offset=offset, overwrite=True, precision="float32")
    with rasterio.open(result.mask_path) as src:
        return segmentation_scores(src.read(1) == 1, truth)["iou"]


def scenes(work, size):
    """(name, raster, true footprint mask) without the offset: the second generator's and ours."""
    for seed in range(0, 16, 2):  # its even seeds carry no offset
        raster, _, truth, _, _ = write_foreign_scene(work, f"foreign_{seed}", seed, size)
        yield f"foreign_{seed}", raster, truth
    for seed, landscape in enumerate(("arid", "arid", "arid", "temperate", "tropical", "mixed"), start=301):
        scene = make_scene(size, seed, shift=DomainShift(landscape=landscape), mines=2)
        yield f"ours_{seed}_{landscape}", write_scene(scene, work / str(seed))["image"], scene.fine == 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--size", type=int, default=768)
    args = parser.parse_args()
    model = load_bundle(args.model)
    print(f"{'scene (no offset)':24}{'darkest DN':>11}" + "".join(f"{name:>23}" for name in READINGS))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, raster, truth in scenes(Path(tmp), args.size):
            rows.append([iou(model, raster, truth, offset, Path(tmp)) for offset in READINGS.values()])
            print(f"{name:24}{darkest(raster):11.0f}" + "".join(f"{value:23.3f}" for value in rows[-1]))
    print(f"{'mean IoU':35}" + "".join(f"{value:23.3f}" for value in np.mean(rows, axis=0)))
    if REAL.is_dir():
        print("real Sentinel-2 scenes (no offset), darkest-band 0.1 percentile (>= 1000 DN reads as offset):")
        for raster in sorted(REAL.glob("s2_*.tif")):
            print(f"  {raster.name:40}{darkest(raster):7.0f} DN")


if __name__ == "__main__":
    main()
