"""Time vectorizing a noisy footprint mask: one big footprint among many one-pixel specks, which the minimum
area drops from the polygons and from the mask. Prints seconds, polygons and footprint pixels left in the mask.

    .venv/bin/python bench/vectorize_specks.py [--size 4096] [--speck-share 0.002]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model_core.rasters import mask_profile, probability_profile  # noqa: E402
from model_core.vectorize import polygonize  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster side in pixels (default %(default)s)")
    parser.add_argument("--speck-share", type=float, default=0.002, help="share of pixels that are specks")
    parser.add_argument("--min-area-ha", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mask = (rng.random((args.size, args.size)) < args.speck_share).astype(np.uint8)
    side = args.size // 5
    mask[side:2 * side, side:2 * side] = 1  # the footprint
    grid = dict(width=args.size, height=args.size, crs="EPSG:32633",
                transform=from_origin(500000.0, 5800000.0, 10.0, 10.0))
    with tempfile.TemporaryDirectory() as folder:
        mask_path, prob_path = Path(folder) / "mask.tif", Path(folder) / "prob.tif"
        with rasterio.open(mask_path, "w", **mask_profile(**grid)) as dst:
            dst.write(mask, 1)
        with rasterio.open(prob_path, "w", **probability_profile("uint8", **grid)) as dst:
            dst.write(mask * 200, 1)
        start = time.perf_counter()
        result = polygonize(mask_path, prob_path, Path(folder) / "footprints.gpkg", min_area_ha=args.min_area_ha,
                            model_name="bench", source="bench")
        seconds = time.perf_counter() - start
        with rasterio.open(mask_path) as src:
            left = int((src.read(1) == 1).sum())
    print(f"{args.size}² px, {int(mask.sum()) - side * side} speck pixels around a {side}² px footprint: "
          f"{seconds:.1f} s, {result.count} polygon(s), {left} footprint pixels left in the mask "
          f"({side * side} in the footprint)")


if __name__ == "__main__":
    main()
