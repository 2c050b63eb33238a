"""Segmentation scores: IoU, F1, precision, recall and boundary F1, on arrays, rasters or polygons.

Conventions for empty inputs: when prediction and reference are both empty every score is 1 (nothing to find,
nothing found); when only one is empty the scores that depend on the empty side are 0.
"""

from contextlib import nullcontext
from pathlib import Path

import numpy as np

EVALUATE_STRIP_ROWS = 512  # rows of the prediction evaluate_mask_raster scores at a time


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
    return _scores_of_counts(*confusion_counts(pred, ref, valid)[:3])


def _scores_of_counts(tp, fp, fn):
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
    return _boundary_f1_of_counts(*boundary_counts(pred, ref, tolerance_px, valid))


def boundary_counts(pred, ref, tolerance_px=2, valid=None, rows=slice(None)):
    """(predicted edge pixels, reference edge pixels, predicted ones matched, reference ones matched) in ``rows``;
    exact for rows at least ``tolerance_px`` + 1 away from a cut edge of the arrays (see evaluate_mask_raster)."""
    pred_edge, ref_edge = boundary(pred), boundary(ref)
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        pred_edge &= valid
        ref_edge &= valid
    pred_matched = pred_edge & _shift_any(ref_edge, tolerance_px)
    ref_matched = ref_edge & _shift_any(pred_edge, tolerance_px)
    return tuple(int(np.count_nonzero(a[rows])) for a in (pred_edge, ref_edge, pred_matched, ref_matched))


def _boundary_f1_of_counts(n_pred, n_ref, pred_matched, ref_matched):
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = pred_matched / n_pred, ref_matched / n_ref
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
                         extent_layer=None, strip_rows=EVALUATE_STRIP_ROWS, progress=None, is_canceled=None,
                         log=None):
    """Scores (as :func:`all_scores`) of a prediction raster against ``reference``: a mask raster on the same grid
    or a polygon layer (any CRS; reprojected and rasterised on the prediction's grid). The prediction is a mask (1
    footprint, 0 background, nodata ignored) or a probability raster written by MineC2F, thresholded at
    ``threshold`` (default: the one it was written with). With ``extent`` (polygons, any CRS: where the reference
    is complete) only the pixels inside it count. Read in strips of ``strip_rows`` rows (with a margin of
    ``tolerance_px`` + 1 rows for the boundaries), so memory does not grow with the raster's height. ``progress``
    gets 0-100, ``is_canceled()`` True stops it with Cancelled; ``log`` gets what reading the polygons noted
    (repairs, the layer read)."""
    import rasterio
    from rasterio.windows import Window

    from .errors import Cancelled, InputError
    from .rasters import MASK_CONTENT, PROBABILITY_CONTENT, check_threshold, decode_probability, read_output_tags

    if int(tolerance_px) < 0:
        raise InputError(f"boundary tolerance {tolerance_px} px must be 0 or more")
    reference = Path(reference)
    ref_is_raster = reference.suffix.lower() in (".tif", ".tiff", ".vrt", ".img")
    with rasterio.open(pred_path) as src, (rasterio.open(reference) if ref_is_raster else nullcontext()) as ref_src:
        tags = read_output_tags(src)
        content = tags.get("content")
        if content == PROBABILITY_CONTENT:
            threshold = check_threshold(tags.get("threshold", 0.5) if threshold is None else threshold)
        elif threshold is not None:
            kind = "a footprint mask" if content == MASK_CONTENT else "not a probability raster written by MineC2F"
            raise InputError(f"a threshold applies to a probability raster, and {Path(pred_path).name} is {kind}; "
                             "leave the threshold out or give the <name>_prob.tif that segment wrote")
        if ref_is_raster and (ref_src.shape != src.shape or ref_src.transform != src.transform
                              or ref_src.crs != src.crs):
            raise InputError(f"reference raster {reference.name} is not on the prediction's grid (size, pixels and "
                             "CRS); use a reference polygon layer or resample the reference")
        if ref_is_raster and ref_src.count != 1:
            raise InputError(f"reference raster {reference.name} has {ref_src.count} bands; give a one-band mask of 1 "
                             "(footprint) and 0, or reference polygons")
        crs_wkt = src.crs.to_wkt() if src.crs else ""
        ref_shapes = None if ref_is_raster else _reference_polygons(reference, layer, src, extent is not None, log)
        extent_shapes = (None if extent is None else
                         _polygons_in(extent, extent_layer, crs_wkt, "labelled extent file", log))
        halo = int(tolerance_px) + 1
        counts = np.zeros(9, dtype=np.int64)  # confusion (3), boundary (4), valid pixels, of them inside the extent
        for top in range(0, src.height, strip_rows):
            if is_canceled is not None and is_canceled():
                raise Cancelled("scoring was cancelled")
            bottom = min(src.height, top + strip_rows)
            start, stop = max(0, top - halo), min(src.height, bottom + halo)
            window = Window(0, start, src.width, stop - start)
            transform, bounds = src.window_transform(window), src.window_bounds(window)
            values, valid = src.read(1, window=window), src.read_masks(1, window=window) > 0
            if content == PROBABILITY_CONTENT:
                prob, valid_prob = decode_probability(values)
                pred, valid = prob >= threshold, valid & valid_prob
            else:
                pred = _zero_one(values, valid, pred_path, "the <name>_mask.tif or <name>_prob.tif that segment wrote, "
                                                           "or a mask of 0 and 1")
            if ref_is_raster:
                ref_valid = ref_src.read_masks(1, window=window) > 0
                ref = _zero_one(ref_src.read(1, window=window), ref_valid, reference,
                                "a reference mask of 0 and 1 (e.g. 255 -> 1 with the raster calculator), or polygons")
                valid &= ref_valid
            else:
                ref = _rasterize(ref_shapes, bounds, pred.shape, transform)
            core = slice(top - start, bottom - start)
            counts[7] += np.count_nonzero(valid[core])
            if extent_shapes is not None:
                valid &= _rasterize(extent_shapes, bounds, pred.shape, transform)
                counts[8] += np.count_nonzero(valid[core])
            counts[:3] += confusion_counts(pred[core], ref[core], valid[core])[:3]
            counts[3:7] += boundary_counts(pred, ref, tolerance_px, valid, rows=core)
            if progress is not None:
                progress(100.0 * bottom / src.height)
    if counts[7] == 0:
        raise InputError(f"{Path(pred_path).name} has no valid pixel (all nodata); give the mask or probability "
                         "raster segment wrote")
    if extent is not None and counts[8] == 0:
        raise InputError(f"the labelled extent {Path(extent).name} does not overlap the prediction's valid pixels; "
                         "give the extent of the reference polygons over this raster")
    scores = _scores_of_counts(*counts[:3].tolist())
    scores["boundary_f1"] = _boundary_f1_of_counts(*counts[3:7].tolist())
    return scores


def _zero_one(values, valid, path, fix):
    """A mask raster's ``values`` as footprint (True where 1); a valid value other than 0 or 1 is refused."""
    from .errors import InputError

    footprint = values == 1
    other = values[valid & ~footprint & (values != 0)]
    if other.size:
        raise InputError(f"{Path(path).name} holds {other[0]:g} where a footprint mask holds 1 (footprint) or 0; "
                         f"give {fix}")
    return footprint


def _polygons_in(path, layer, crs_wkt, what, log):
    """The polygons of ``path`` (any CRS) in the CRS ``crs_wkt``."""
    from .polygons import read_polygons, reproject_polygons

    return reproject_polygons(read_polygons(path, layer, what=what, log=log), crs_wkt)


def _reference_polygons(path, layer, src, with_extent, log):
    """The reference polygons of ``path`` in the CRS of raster ``src``. Without a labelled extent some must overlap
    the raster: none means the wrong layer, raster or CRS (scores of 0 would hide it). With one, a reference
    without footprints is an area without mines."""
    from .errors import InputError
    from .polygons import crs_name, overlapping, read_polygons, reproject_polygons

    crs_wkt = src.crs.to_wkt() if src.crs else ""
    polygons = read_polygons(path, layer, what="reference polygon file", allow_empty=with_extent, log=log)
    shapes = reproject_polygons(polygons, crs_wkt)
    if not with_extent and not overlapping(shapes, src.bounds):
        raise InputError(
            f"none of the {len(polygons.geometries)} reference polygons of {Path(path).name} overlap "
            f"{Path(src.name).name} (raster CRS {crs_name(crs_wkt) if crs_wkt else 'not set'}, polygons CRS "
            f"{polygons.describe_crs()}); check you picked the right layer and raster and that the layer's CRS is "
            "right, or give a labelled extent to score an area without footprints")
    return shapes


def _rasterize(shapes, bounds, shape, transform):
    """[H, W] bool: pixels of the grid (``shape``, ``transform``; ``bounds``) whose centre is inside ``shapes``."""
    import rasterio.features

    from .polygons import overlapping

    shapes = overlapping(shapes, bounds)
    if not shapes:
        return np.zeros(shape, dtype=bool)
    return rasterio.features.rasterize([(geom, 1) for geom in shapes], out_shape=shape, transform=transform,
                                       dtype="uint8").astype(bool)
