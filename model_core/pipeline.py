"""segment_scene: raster + model bundle -> probability raster, footprint mask and footprint polygons (to threshold
that probability raster again: ``rethreshold.polygonize_probability``).

The entry point the CLI and the QGIS plugin call. It checks everything it can before any work (outputs
writable and not in the way, input readable and georeferenced, bands and radiometry resolved, parameters sane),
then writes its outputs into temporary files next to them (``staging.StagedOutputs``), and renames them only
when all succeeded: a failed or cancelled run leaves nothing behind, and nothing the user had is touched unless
``overwrite`` is asked for.

With ``bounds`` (xmin, ymin, xmax, ymax in the raster's CRS) only that extent is segmented; the outputs then
cover the input pixels that intersect it (the bounds snapped outward to the input's pixel grid), so they stay
aligned with the input raster.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import rasterio.windows
from rasterio.windows import Window

from .bands import Radiometry, RasterBandInfo, match_bands, resolve_radiometry
from .bundle import Bundle, load_bundle
from .device import resolve_device
from .errors import InputError
from .infer import PRECISIONS, predict_raster, tiling
from .polygons import overlapping, read_polygons, reproject_polygons
from .rasters import PROB_FORMATS, check_footprint_settings, open_raster
from .staging import StagedOutputs
from .vectorize import check_crs_convertible, polygonize

INFERENCE_SHARE = 90.0  # percent of the progress bar given to inference; the rest is vectorizing


@dataclass(frozen=True)
class SegmentationResult:
    prob_path: Path
    mask_path: Path
    footprints_path: Path
    footprint_count: int
    total_area_ha: float
    device_name: str
    radiometry: Radiometry
    radiometry_reason: str


def output_paths(input_path, out_dir):
    """Default outputs for ``input_path`` in ``out_dir``: <stem>_prob.tif, <stem>_mask.tif, <stem>_footprints.gpkg."""
    stem, out_dir = Path(input_path).stem, Path(out_dir)
    return out_dir / f"{stem}_prob.tif", out_dir / f"{stem}_mask.tif", out_dir / f"{stem}_footprints.gpkg"


def segment_scene(input_path, model, prob_path, mask_path, footprints_path, *, device="auto", tile=None,
                  overlap=None, batch=None, threshold=None, min_area_ha=None, band_mapping=None, scale=None,
                  offset=None, bounds=None, exclude=None, overwrite=False, prob_format="uint8", precision="auto",
                  progress=None, is_canceled=None, log=None):
    """Segment mining footprints in ``input_path`` with ``model`` (bundle path or loaded Bundle).

    Unset ``tile``, ``overlap``, ``threshold``, ``min_area_ha`` come from the bundle's spec, an unset ``batch``
    from the device. ``precision``: "auto" (float16 on CUDA, bfloat16 on CPUs that compute it natively) or
    "float32". ``exclude``: a polygon file (any CRS) whose pixels are not segmented (nodata in the outputs), such as
    water bodies known to be natural.
    Raises InputError / BandMismatchError / BundleError / OutputError / Cancelled with a one-line message.
    """
    progress = progress or (lambda percent: None)
    log = log or (lambda message: None)
    input_path = Path(input_path)
    if prob_format not in PROB_FORMATS:
        raise InputError(f"unknown probability format {prob_format!r}; use one of {', '.join(PROB_FORMATS)}")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    with StagedOutputs({"prob": prob_path, "mask": mask_path, "footprints": footprints_path},
                       overwrite=overwrite, protected=[input_path]) as staged:
        bundle = model if isinstance(model, Bundle) else load_bundle(model)
        spec = bundle.spec
        tile, overlap, threshold, min_area_ha = _check_parameters(
            spec, tile, overlap, batch, spec.threshold if threshold is None else threshold,
            spec.min_area_ha if min_area_ha is None else min_area_ha)
        with open_raster(input_path) as src:
            window = window_for_bounds(src, bounds)
            check_crs_convertible(src.crs, src.xy(window.row_off + window.height // 2,
                                                   window.col_off + window.width // 2))
            band_index = match_bands(RasterBandInfo.from_dataset(src), spec.band_list(), band_mapping)
            radiometry, radiometry_reason = resolve_radiometry(src, explicit_scale=scale, explicit_offset=offset,
                                                                bands=band_index)
            exclude_shapes = _exclusion(exclude, src.crs.to_wkt(), src.window_bounds(window), log) if exclude else []
        device_info = resolve_device(device)
        batch = batch or device_info.inference_batch
        log(f"model {spec.name}: raster bands {band_index} for {[b.name for b in spec.band_list()]}")
        if spec.unfinished_note():
            log(f"warning: {spec.unfinished_note()}")
        log(f"{radiometry} ({radiometry_reason})")
        log(f"device {device_info.name}; {window.width} x {window.height} px, tile {tile}, overlap {overlap}, "
            f"batch {batch}")
        predict_raster(input_path, bundle, staged.temp["prob"], device=device_info, tile=tile, overlap=overlap,
                       batch=batch, band_index=band_index, radiometry=radiometry, window=window,
                       mask_path=staged.temp["mask"], threshold=threshold, prob_format=prob_format,
                       precision=precision, exclude=exclude_shapes,
                       tags={"min_area_ha": min_area_ha, "source": input_path.name},
                       progress=lambda p: progress(p * INFERENCE_SHARE / 100.0), is_canceled=is_canceled)
        vectors = polygonize(staged.temp["mask"], staged.temp["prob"], staged.temp["footprints"],
                             min_area_ha=min_area_ha, model_name=spec.name, source=input_path.name,
                             progress=lambda p: progress(INFERENCE_SHARE + p * (100.0 - INFERENCE_SHARE) / 100.0),
                             is_canceled=is_canceled)
        staged.commit()
    log(f"{vectors.count} footprints, {vectors.total_area_ha:.2f} ha")
    return SegmentationResult(prob_path=staged.final["prob"], mask_path=staged.final["mask"],
                              footprints_path=staged.final["footprints"], footprint_count=vectors.count,
                              total_area_ha=vectors.total_area_ha, device_name=device_info.name,
                              radiometry=radiometry, radiometry_reason=radiometry_reason)


def _exclusion(path, crs_wkt, bounds, log):
    """The polygons of the file ``path`` (any CRS) in the raster's CRS ``crs_wkt`` that touch ``bounds``."""
    layer = read_polygons(path, allow_empty=True, log=log, what="exclusion polygon file (--exclude)")
    shapes = overlapping(reproject_polygons(layer, crs_wkt), bounds)
    unset = "" if layer.crs_wkt else " (it has no CRS: taken to be the raster's)"
    log(f"not segmenting inside the {len(shapes)} polygon(s) of {Path(path).name} over the raster{unset}")
    return shapes


def window_for_bounds(src, bounds):
    """The window of ``src`` covering ``bounds`` (xmin, ymin, xmax, ymax in the raster CRS), snapped outward to
    whole pixels and clipped to the raster; the whole raster when ``bounds`` is None."""
    if bounds is None:
        return Window(0, 0, src.width, src.height)
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    extent = ", ".join(f"{v:.6g}" for v in src.bounds)
    if not (xmin < xmax and ymin < ymax):
        raise InputError(f"the extent ({xmin}, {ymin}, {xmax}, {ymax}) is empty; give xmin < xmax and ymin < ymax "
                         f"in the raster's CRS")
    exact = rasterio.windows.from_bounds(xmin, ymin, xmax, ymax, transform=src.transform)
    col_start = max(0, math.floor(round(exact.col_off, 6)))
    row_start = max(0, math.floor(round(exact.row_off, 6)))
    col_stop = min(src.width, math.ceil(round(exact.col_off + exact.width, 6)))
    row_stop = min(src.height, math.ceil(round(exact.row_off + exact.height, 6)))
    if col_stop <= col_start or row_stop <= row_start:
        raise InputError(f"the extent ({xmin}, {ymin}, {xmax}, {ymax}) does not overlap the raster (its extent is "
                         f"{extent}; both in the raster's CRS); give an extent inside the raster")
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)


def _check_parameters(spec, tile, overlap, batch, threshold, min_area_ha):
    """Checked (tile, overlap, threshold, min_area_ha); unset tiling as :func:`infer.tiling` sets it."""
    tile, overlap = tiling(spec, tile, overlap)
    if tile < 32:
        raise InputError(f"tile size {tile} is too small; give --tile 32 or more (256-512 px is typical)")
    if not 0 <= overlap <= tile // 2:
        raise InputError(f"overlap {overlap} must be between 0 and half the tile size ({tile // 2}); change "
                         "--overlap or --tile")
    if batch is not None and int(batch) < 1:
        raise InputError(f"batch size {batch} must be 1 or more")
    return (tile, overlap, *check_footprint_settings(threshold, min_area_ha))


