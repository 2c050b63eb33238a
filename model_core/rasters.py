"""Input rasters opened and read with errors that say what to do, which of their pixels hold data, and how MineC2F
writes its output rasters: GeoTIFF profiles and the probability encoding.

Probability rasters come in two formats:

- ``"uint8"`` (default, 4x smaller): probability p in [0, 1] is stored as ``round(p * 254)``, so 0..254;
  255 is nodata. Decode with :func:`decode_probability`.
- ``"float32"``: p stored as is; nodata is NaN.

The mask raster is uint8: 1 = footprint, 0 = background, 255 = nodata.

Both carry dataset tags (:data:`TAGS`): what they hold, the model, the threshold of the mask, and (written by
``pipeline.segment_scene``) the minimum footprint area and the source raster, so a probability raster can be
thresholded again and scored, and a mask told from it.
"""

import math
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.enums import MaskFlags

from .errors import InputError

PROB_FORMATS = ("uint8", "float32")
PROB_UINT8_MAX = 254
UINT8_NODATA = 255
MASK_FOOTPRINT, MASK_BACKGROUND, MASK_NODATA = 1, 0, UINT8_NODATA
BLOCK_SIZE = 256
# dataset tags of MineC2F's output rasters, by the key read_output_tags gives them
TAGS = {"content": "MINEC2F_CONTENT", "model": "MINEC2F_MODEL", "threshold": "MINEC2F_THRESHOLD",
        "min_area_ha": "MINEC2F_MIN_AREA_HA", "source": "MINEC2F_SOURCE"}
PROBABILITY_CONTENT, MASK_CONTENT = "footprint probability", "footprint mask"


def valid_pixels(src, bands, data, window=None):
    """[H, W] bool: where ``data`` (``bands`` of the open dataset ``src`` read in ``window``, any out_shape) holds
    data in every band: not NaN, not masked by the raster's nodata, per-band or alpha masks, and - in a raster that
    declares none of these - not 0 in every band (the fill of Sentinel-2 and Landsat products and of exports that
    drop their nodata value)."""
    valid = np.isfinite(data).all(axis=0)
    if any(MaskFlags.all_valid not in src.mask_flag_enums[band - 1] for band in bands):
        valid &= src.read_masks(bands, window=window, out_shape=data.shape).all(axis=0)
    else:
        valid &= (data != 0).any(axis=0)
    return valid


def geotiff_profile(dtype, nodata, *, width, height, crs, transform):
    """Tiled (256 px), DEFLATE-compressed single-band GeoTIFF profile on the given grid."""
    return {
        "driver": "GTiff", "count": 1, "dtype": dtype, "nodata": nodata,
        "width": width, "height": height, "crs": crs, "transform": transform,
        "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE,
        "compress": "deflate", "predictor": 3 if dtype == "float32" else 2, "BIGTIFF": "IF_SAFER",
    }


def probability_profile(prob_format, **grid):
    """GeoTIFF profile of a probability raster in ``prob_format`` ("uint8" or "float32")."""
    if prob_format == "uint8":
        return geotiff_profile("uint8", UINT8_NODATA, **grid)
    return geotiff_profile("float32", float("nan"), **grid)


def mask_profile(**grid):
    """GeoTIFF profile of a footprint mask raster (1 footprint, 0 background, 255 nodata)."""
    return geotiff_profile("uint8", MASK_NODATA, **grid)


def encode_probability(prob, valid, prob_format):
    """Probabilities (float, 0..1) -> stored values; pixels where ``valid`` is False become nodata."""
    if prob_format == "uint8":
        encoded = np.rint(np.clip(prob, 0.0, 1.0) * PROB_UINT8_MAX).astype(np.uint8)
        encoded[~valid] = UINT8_NODATA
        return encoded
    encoded = prob.astype(np.float32)
    encoded[~valid] = np.nan
    return encoded


def decode_probability(values):
    """Stored probability values -> (float32 probabilities 0..1, valid mask)."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / PROB_UINT8_MAX, values != UINT8_NODATA
    return values.astype(np.float32), np.isfinite(values)


def check_threshold(threshold):
    """``threshold`` as a float, refused unless strictly between 0 and 1."""
    if not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold {threshold} must be between 0 and 1 (exclusive), e.g. 0.5")
    return float(threshold)


def check_footprint_settings(threshold, min_area_ha):
    """Checked (threshold, min_area_ha) as floats: how probabilities become footprint polygons."""
    threshold = check_threshold(threshold)
    if not float(min_area_ha) >= 0 or math.isinf(float(min_area_ha)):  # NaN fails the first test
        raise InputError(f"minimum area {min_area_ha} ha must be a number, 0 or more")
    return threshold, float(min_area_ha)


def threshold_mask(prob, valid, threshold):
    """Footprint mask from probabilities: 1 where prob >= threshold, 255 where not valid, else 0."""
    mask = (prob >= threshold).astype(np.uint8)
    mask[~valid] = MASK_NODATA
    return mask


def output_tags(content, **values):
    """Dataset tags for an output raster holding ``content`` (PROBABILITY_CONTENT or MASK_CONTENT); ``values``
    by the keys of :data:`TAGS`, None left out."""
    tags = {TAGS["content"]: content}
    tags.update({TAGS[key]: str(value) for key, value in values.items() if value is not None})
    return tags


def read_output_tags(src):
    """The MineC2F tags of the open dataset ``src`` by the keys of :data:`TAGS` ({} for other rasters)."""
    tags = src.tags()
    return {key: tags[name] for key, name in TAGS.items() if name in tags}


def open_raster(path):
    """Open ``path`` with rasterio, turning every way it can fail into an InputError that says what to do."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input raster not found: {path}; check the path")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        detail = str(error).splitlines()[0][:120]
        raise InputError(f"{path.name} is not a raster GDAL can read ({detail}); give a GeoTIFF or another "
                         f"GDAL-readable raster") from error
    if src.count == 0:
        src.close()
        raise InputError(f"{path.name} has no raster bands (a container of subdatasets?); open one of its "
                         f"subdatasets or export it to GeoTIFF")
    if src.crs is None and src.gcps[0]:
        src.close()
        raise InputError(f"{path.name} is georeferenced only by ground control points; warp it first "
                         f"(QGIS: Raster > Projections > Warp, or gdalwarp)")
    return src


def read_bands(src, bands, *, where="", **options):
    """``src.read(bands, **options)``, a failed read (a damaged file, a missing file behind a VRT) raised as an
    InputError naming the file, ``where`` in it (e.g. " at pixel rows 0-255"), and what to do."""
    try:
        return src.read(bands, **options)
    except rasterio.errors.RasterioIOError as error:
        raise InputError(f"cannot read {Path(src.name).name}{where}: {str(error).splitlines()[0][:160]}; the file is "
                         "damaged or incomplete (or a file it refers to is missing): copy or download it again") \
            from error

