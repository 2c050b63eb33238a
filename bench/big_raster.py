"""Big test rasters for the benchmarks, written strip by strip so they never sit in memory."""

import numpy as np
import rasterio
from rasterio.transform import from_origin

S2_L2A_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
PIXEL_SIZE_M = 10.0
STRIP_ROWS = 256


def write_s2_like_raster(path, size, seed=0):
    """A ``size`` x ``size`` 12-band uint16 Sentinel-2 L2A-like GeoTIFF (10 m, UTM 33N, reflectance x 10000):
    smooth land-cover-like patterns plus noise, bands described B01..B12."""
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "count": len(S2_L2A_BANDS), "height": size, "width": size, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(400000.0, 5900000.0, PIXEL_SIZE_M, PIXEL_SIZE_M),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "zlevel": 1,
               "BIGTIFF": "IF_SAFER"}
    band_levels = rng.uniform(500, 3500, size=(len(S2_L2A_BANDS), 1, 1))
    columns = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(S2_L2A_BANDS, start=1):
            dst.set_band_description(i, name)
        for top in range(0, size, STRIP_ROWS):
            rows = np.arange(top, min(top + STRIP_ROWS, size), dtype=np.float32)[:, None]
            pattern = np.sin(rows / 97.0) * np.cos(columns / 131.0) + 0.5 * np.sin((rows + columns) / 23.0)
            noise = rng.normal(0.0, 0.05, size=(len(S2_L2A_BANDS),) + pattern.shape)
            strip = band_levels * (1.0 + 0.4 * pattern[None] + noise)
            dst.write(np.clip(strip, 1, 10000).astype(np.uint16),
                      window=rasterio.windows.Window(0, top, size, len(rows)))
    return path


if __name__ == "__main__":
    import sys

    write_s2_like_raster(sys.argv[1], int(sys.argv[2]))
