"""Inference throughput on the CPU: our engine (overlap blending on) vs a naive loop, same model and raster.

The naive loop reads the whole raster into memory, runs the model on one non-overlapping tile at a time and
writes the probabilities at the end - what a first script would do. Both include reading, normalising and
writing a uint8 probability GeoTIFF. Prints km²/s, tiles/s and the speed ratio.

    python bench/infer_throughput.py [--model BUNDLE] [--size 2048] [--tile N] [--overlap N] [--batch N]\
        [--workers N] [--threads N] [--repeats 3] [--precision auto|float32]

The engine fits its tiles to the raster (at most --tile px, see model_core.infer.fitted_tile_size) and batches
tiles as the device does by default (1 on the CPU) unless --batch is given; on the CPU it runs two model calls at
once with half the threads each unless --workers is given.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from big_raster import PIXEL_SIZE_M, write_s2_like_raster  # noqa: E402
from model_core import paths  # noqa: E402
from model_core.bands import RasterBandInfo, match_bands, resolve_radiometry  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.device import inference_workers, resolve_device  # noqa: E402
from model_core.infer import PRECISIONS, TileGrid, cpu_has_native_bf16, predict_raster  # noqa: E402
from model_core.rasters import encode_probability, probability_profile  # noqa: E402


def naive_predict(src_path, bundle, prob_path, tile, band_index, radiometry):
    """Whole raster in memory, one tile at a time, no overlap, no batching, no prefetch. Returns tile count."""
    spec, net = bundle.spec, bundle.net
    with rasterio.open(src_path) as src:
        dn = src.read(band_index).astype(np.float32)
        grid = {"width": src.width, "height": src.height, "crs": src.crs, "transform": src.transform}
    mean = np.asarray(spec.norm_mean, np.float32)[:, None, None]
    std = np.asarray(spec.norm_std, np.float32)[:, None, None]
    image = torch.from_numpy((dn * radiometry.scale + radiometry.offset - mean) / std)
    _, height, width = image.shape
    prob = np.zeros((height, width), np.float32)
    tiles = 0
    with torch.no_grad():
        for row in range(0, height, tile):
            for col in range(0, width, tile):
                x = image[None, :, row:row + tile, col:col + tile]
                h, w = x.shape[2:]
                padded = torch.nn.functional.pad(x, (0, -w % net.stride, 0, -h % net.stride), mode="reflect")
                prob[row:row + h, col:col + w] = torch.sigmoid(net(padded))[0, 0, :h, :w].numpy()
                tiles += 1
    with rasterio.open(prob_path, "w", **probability_profile("uint8", **grid)) as dst:
        dst.write(encode_probability(prob, np.ones_like(prob, bool), "uint8"), 1)
    return tiles


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--size", type=int, default=2048, help="raster side in pixels (12 bands, 10 m)")
    parser.add_argument("--tile", type=int, default=None, help="default: the model's (used by both)")
    parser.add_argument("--overlap", type=int, default=None, help="default: the model's")
    parser.add_argument("--batch", type=int, default=None, help="engine tiles per model call (default: the device's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="engine model calls at once (default: model_core.device.inference_workers)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best time counts")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="engine precision (auto: bfloat16 on CPUs with native BF16; the naive loop: float32)")
    args = parser.parse_args()
    if args.threads:
        os.environ["MINEC2F_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    args.tile = args.tile or bundle.spec.tile_size
    args.overlap = bundle.spec.overlap if args.overlap is None else args.overlap
    km2 = args.size ** 2 * PIXEL_SIZE_M ** 2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        raster = write_s2_like_raster(Path(tmp) / "scene.tif", args.size)
        with rasterio.open(raster) as src:
            band_index = match_bands(RasterBandInfo.from_dataset(src), bundle.spec.band_list())
            radiometry, _ = resolve_radiometry(src)

        naive_s, engine_s = float("inf"), float("inf")
        for _ in range(args.repeats):  # alternate the two, keep each one's best time (the CPU may be shared)
            start = time.perf_counter()
            naive_tiles = naive_predict(raster, bundle, Path(tmp) / "naive.tif", args.tile, band_index, radiometry)
            naive_s = min(naive_s, time.perf_counter() - start)
            start = time.perf_counter()
            predict_raster(raster, bundle, Path(tmp) / "engine.tif", device="cpu", tile=args.tile,
                           overlap=args.overlap, batch=args.batch, workers=args.workers, band_index=band_index,
                           radiometry=radiometry, precision=args.precision)
            engine_s = min(engine_s, time.perf_counter() - start)
        grid = TileGrid.over(args.size, args.size, args.tile, args.overlap, bundle.net.stride)
        engine_tiles, engine_tile = len(grid), grid.tile_width

    print(f"model {bundle.spec.name} ({bundle.spec.encoder}), raster {args.size}x{args.size} px x 12 bands "
          f"= {km2:.1f} km², torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'':46}{'seconds':>9}{'km²/s':>9}{'tiles':>7}{'tiles/s':>9}")
    workers = args.workers or inference_workers(resolve_device("cpu"))
    bf16 = args.precision == "auto" and cpu_has_native_bf16()
    engine = f"engine ({engine_tile} px, overlap {args.overlap}, {workers} at once{', bf16' if bf16 else ''})"
    print(f"{'naive (no overlap, 1 tile, float32)':46}{naive_s:9.2f}{km2 / naive_s:9.2f}{naive_tiles:7d}"
          f"{naive_tiles / naive_s:9.2f}")
    print(f"{engine:46}{engine_s:9.2f}{km2 / engine_s:9.2f}"
          f"{engine_tiles:7d}{engine_tiles / engine_s:9.2f}")
    print(f"engine / naive throughput (km²/s): {naive_s / engine_s:.2f}x")


if __name__ == "__main__":
    main()
