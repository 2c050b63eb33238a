"""GeoTIFF writing for tests (a module of its own: both conftest.py files are named ``conftest``)."""

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(path, data, *, crs="EPSG:32633", transform=None, nodata=None, descriptions=None, **profile):
    """Write ``data`` ([bands, H, W] or [H, W]) as a GeoTIFF; default grid: 10 m pixels at (500000, 5800000)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    meta = {"driver": "GTiff", "count": count, "height": height, "width": width, "dtype": data.dtype.name,
            "crs": crs, "transform": transform or from_origin(500000.0, 5800000.0, 10.0, 10.0), "nodata": nodata,
            **profile}
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
        for i, description in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, description)
    return path
