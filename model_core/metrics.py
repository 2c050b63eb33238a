"""Segmentation scores: IoU, F1, precision, recall and boundary F1, on arrays, rasters or polygons.

Conventions for empty inputs: when prediction and reference are both empty every score is 1 (nothing to find,
nothing found); when only one is empty the scores that depend on the empty side are 0.
"""

from pathlib import Path

import numpy as np


def confusion_counts(pred, ref, valid=None):
    """(true positives, false positives, false negatives, true negatives) over ``valid`` pixels."""
    pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    valid = np.ones(pred.shape, dtype=bool) if valid is None else np.asarray(valid).astype(bool)
    tp = int(np.count_nonzero(pred & ref & valid))
    fp = int(np.count_nonzero(pred & ~ref & valid))
    fn = int(np.count_nonzero(~pred & ref & valid))
    tn = int(np.count_nonzero(~pred & ~ref & valid))
    return tp, fp, fn, tn


def _ratio(numerator, denominator, empty):
    return numerator / denominator if denominator else empty


def segmentation_scores(pred, ref, valid=None):
    """dict(iou, f1, precision, recall) of the footprint class."""
    tp, fp, fn, _ = confusion_counts(pred, ref, valid)
    both_empty = float(tp + fp + fn == 0)
    return {"iou": _ratio(tp, tp + fp + fn, both_empty),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "precision": _ratio(tp, tp + fp, both_empty),
            "recall": _ratio(tp, tp + fn, both_empty)}


def _shift_any(mask, radius):
    """Binary dilation of ``mask`` by a (2r+1)^2 square."""
    out = mask.copy()
    height, width = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            src = mask[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
            out[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)] |= src
    return out


def boundary(mask):
    """Pixels of ``mask`` with a 4-neighbour outside it (the footprint's edge)."""
    mask = np.asarray(mask).astype(bool)
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def boundary_f1(pred, ref, tolerance_px=2, valid=None):
    """F1 of boundary pixels matched within ``tolerance_px`` (square neighbourhood), over ``valid`` pixels."""
    valid = None if valid is None else np.asarray(valid).astype(bool)
    pred_edge, ref_edge = boundary(pred), boundary(ref)
    if valid is not None:
        pred_edge &= valid
        ref_edge &= valid
    n_pred, n_ref = int(pred_edge.sum()), int(ref_edge.sum())
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if n_pred == 0 or n_ref == 0:
        return 0.0
    precision = np.count_nonzero(pred_edge & _shift_any(ref_edge, tolerance_px)) / n_pred
    recall = np.count_nonzero(ref_edge & _shift_any(pred_edge, tolerance_px)) / n_ref
    return _ratio(2 * precision * recall, precision + recall, 0.0)


def all_scores(pred, ref, valid=None, tolerance_px=2):
    scores = segmentation_scores(pred, ref, valid)
    scores["boundary_f1"] = boundary_f1(pred, ref, tolerance_px, valid)
    return scores


def iou_by_threshold(prob_path, reference_mask_path, thresholds):
    """IoU of a probability GeoTIFF as the engine writes it, thresholded at each of ``thresholds``, against a
    reference mask raster on the same grid (1 footprint) -> {threshold: IoU}; nodata probabilities ignored."""
    import rasterio

    from .rasters import decode_probability

    with rasterio.open(prob_path) as src:
        prob, valid = decode_probability(src.read(1))
    with rasterio.open(reference_mask_path) as src:
        truth = src.read(1) == 1
    return {t: segmentation_scores(prob >= t, truth, valid)["iou"] for t in thresholds}


def evaluate_mask_raster(pred_path, reference, *, tolerance_px=2, layer=None, threshold=None, extent=None,
                         extent_layer=None):
    """Scores of a prediction raster against ``reference``: a mask raster on the same grid or a polygon layer
    (any CRS; reprojected and rasterised on the prediction's grid). The prediction is a mask (1 footprint, 0
    background, nodata ignored) or a probability raster written by MineC2F, thresholded at ``threshold`` (default:
    the one it was written with). With ``extent`` (polygons, any CRS: where the reference is complete) only the
    pixels inside it count."""
    import rasterio

    from .errors import InputError
    from .rasters import MASK_CONTENT, PROBABILITY_CONTENT, decode_probability, read_output_tags

    if int(tolerance_px) < 0:
        raise InputError(f"boundary tolerance {tolerance_px} px must be 0 or more")
    with rasterio.open(pred_path) as src:
        values = src.read(1)
        valid = src.read_masks(1) > 0
        grid = src.transform, src.crs, src.shape
        tags = read_output_tags(src)
    content = tags.get("content")
    if content == PROBABILITY_CONTENT:
        threshold = float(tags.get("threshold", 0.5) if threshold is None else threshold)
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} must be between 0 and 1 (exclusive), e.g. 0.5")
        prob, valid_prob = decode_probability(values)
        pred, valid = prob >= threshold, valid & valid_prob
    elif threshold is not None:
        kind = "a footprint mask" if content == MASK_CONTENT else "not a probability raster written by MineC2F"
        raise InputError(f"a threshold applies to a probability raster, and {Path(pred_path).name} is {kind}; "
                         "leave the threshold out or give the <name>_prob.tif that segment wrote")
    else:
        pred = values == 1
    reference = Path(reference)
    if reference.suffix.lower() in (".tif", ".tiff", ".vrt", ".img"):
        with rasterio.open(reference) as ref_src:
            if ref_src.shape != grid[2] or ref_src.transform != grid[0]:
                raise InputError(f"reference raster {reference.name} is not on the prediction's grid; "
                                 "use a reference polygon layer or resample the reference")
            ref = ref_src.read(1) == 1
            valid &= ref_src.read_masks(1) > 0
    else:
        ref = _rasterize_polygons(reference, layer, grid, "reference polygon file")
    if extent is not None:
        inside = _rasterize_polygons(extent, extent_layer, grid, "labelled extent file")
        if not (inside & valid).any():
            raise InputError(f"the labelled extent {Path(extent).name} does not overlap the prediction's valid "
                             "pixels; give the extent of the reference polygons over this raster")
        valid &= inside
    if not valid.any():
        raise InputError(f"{Path(pred_path).name} has no valid pixel (all nodata); give the mask or probability "
                         "raster segment wrote")
    return all_scores(pred, ref, valid, tolerance_px)


def _rasterize_polygons(path, layer, grid, what):
    """[H, W] bool: pixels of ``grid`` (transform, CRS, shape) inside the polygons of ``path`` (any CRS)."""
    import rasterio.features

    from .data import read_polygons, reproject_polygons

    polygons = reproject_polygons(read_polygons(path, layer, what=what), grid[1].to_wkt())
    if not polygons:
        return np.zeros(grid[2], dtype=bool)
    return rasterio.features.rasterize([(geom, 1) for geom in polygons], out_shape=grid[2], transform=grid[0],
                                       dtype="uint8").astype(bool)
