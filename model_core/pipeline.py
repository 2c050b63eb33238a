"""segment_scene: raster + model bundle -> probability raster, footprint mask and footprint polygons;
polygonize_probability: that probability raster -> a new mask and polygons at another threshold or minimum area.

The entry points the CLI and the QGIS plugin call. Each checks everything it can before any work (outputs
writable and not in the way, input readable and georeferenced, bands and radiometry resolved, parameters sane),
then writes its outputs into temporary files next to them, and renames them only when all succeeded: a failed or
cancelled run leaves nothing behind, and nothing the user had is touched unless ``overwrite`` is asked for.

With ``bounds`` (xmin, ymin, xmax, ymax in the raster's CRS) only that extent is segmented; the outputs then
cover the input pixels that intersect it (the bounds snapped outward to the input's pixel grid), so they stay
aligned with the input raster.
"""

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.errors
import rasterio.windows
from rasterio.windows import Window

from .bands import Radiometry, RasterBandInfo, match_bands, resolve_radiometry
from .bundle import Bundle, ModelSpec, load_bundle
from .device import resolve_device
from .errors import Cancelled, InputError, OutputError, write_error
from .infer import PRECISIONS, predict_raster, tiling
from .polygons import overlapping, read_polygons, reproject_polygons
from .rasters import (MASK_CONTENT, PROB_FORMATS, PROBABILITY_CONTENT, TAGS, check_threshold, decode_probability,
                      mask_profile, output_tags, read_output_tags, threshold_mask)
from .vectorize import check_crs_convertible, polygonize

INFERENCE_SHARE = 90.0  # percent of the progress bar given to inference; the rest is vectorizing
THRESHOLD_SHARE = 50.0  # polygonize_probability: percent given to writing the mask; the rest is vectorizing
STRIP_ROWS = 256  # rows of a probability raster thresholded at a time
DEFAULT_MIN_AREA_HA = ModelSpec.min_area_ha  # for probability rasters written without it


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


@dataclass(frozen=True)
class PolygonizeResult:
    mask_path: Path
    footprints_path: Path
    footprint_count: int
    total_area_ha: float
    threshold: float
    min_area_ha: float


def scene_stem(prob_path):
    """The scene's name in the name of a probability raster: without ".tif" and a trailing "_prob"."""
    return Path(prob_path).stem.removesuffix("_prob") or Path(prob_path).stem


def polygonize_outputs(prob_path, out_dir):
    """Default outputs of :func:`polygonize_probability` in ``out_dir``: <stem>_mask.tif and
    <stem>_footprints.gpkg, <stem> from :func:`scene_stem`."""
    stem, out_dir = scene_stem(prob_path), Path(out_dir)
    return out_dir / f"{stem}_mask.tif", out_dir / f"{stem}_footprints.gpkg"


def polygonize_probability(prob_path, mask_path, footprints_path, *, threshold=None, min_area_ha=None,
                           overwrite=False, progress=None, is_canceled=None, log=None):
    """Threshold a probability raster written by :func:`segment_scene` again and trace its footprints, without
    running the model: a new mask (``mask_path``) and polygons (``footprints_path``). Unset ``threshold`` and
    ``min_area_ha`` are those the probability raster was written with. Outputs are staged as in segment_scene.
    At segment's threshold the mask can differ from segment's at pixels within half a step of the stored
    probability (1/508 in uint8) of the threshold.
    Raises InputError (not a MineC2F probability raster, bad parameters) / OutputError / Cancelled."""
    progress = progress or (lambda percent: None)
    is_canceled = is_canceled or (lambda: False)
    log = log or (lambda message: None)
    prob_path = Path(prob_path)
    with StagedOutputs({"mask": mask_path, "footprints": footprints_path}, overwrite=overwrite,
                       protected=[prob_path]) as staged:
        with open_raster(prob_path) as src:
            tags = probability_tags(src, prob_path)
            threshold, min_area_ha = _check_footprint_settings(
                tags["threshold"] if threshold is None else threshold,
                tags.get("min_area_ha", DEFAULT_MIN_AREA_HA) if min_area_ha is None else min_area_ha)
            check_crs_convertible(src.crs, src.xy(src.height // 2, src.width // 2))
            log(f"{prob_path.name}: footprint where probability >= {threshold:g}, none smaller than "
                f"{min_area_ha:g} ha")
            profile = mask_profile(width=src.width, height=src.height, crs=src.crs, transform=src.transform)
            with rasterio.open(staged.temp["mask"], "w", **profile) as dst:
                kept = {key: value for key, value in tags.items() if key != "content"}
                dst.update_tags(**output_tags(MASK_CONTENT, **{**kept, "threshold": threshold,
                                                              "min_area_ha": min_area_ha}))
                strips = [Window(0, row, src.width, min(STRIP_ROWS, src.height - row))
                          for row in range(0, src.height, STRIP_ROWS)]
                for done, strip in enumerate(strips, 1):
                    if is_canceled():
                        raise Cancelled("polygonizing was cancelled; no output was written")
                    prob, valid = decode_probability(src.read(1, window=strip))
                    dst.write(threshold_mask(prob, valid, threshold), 1, window=strip)
                    progress(THRESHOLD_SHARE * done / len(strips))
        vectors = polygonize(staged.temp["mask"], prob_path, staged.temp["footprints"], min_area_ha=min_area_ha,
                             model_name=tags.get("model", ""), source=tags.get("source", prob_path.name),
                             progress=lambda p: progress(THRESHOLD_SHARE + p * (100.0 - THRESHOLD_SHARE) / 100.0),
                             is_canceled=is_canceled)
        staged.commit()
    log(f"{vectors.count} footprints, {vectors.total_area_ha:.2f} ha")
    return PolygonizeResult(mask_path=staged.final["mask"], footprints_path=staged.final["footprints"],
                            footprint_count=vectors.count, total_area_ha=vectors.total_area_ha, threshold=threshold,
                            min_area_ha=min_area_ha)


def probability_tags(src, path):
    """The MineC2F tags of probability raster ``src`` (opened from ``path``), with the threshold it was written
    with; anything else is refused with what to give instead."""
    tags = read_output_tags(src)
    if tags.get("content") == MASK_CONTENT:
        raise InputError(f"{Path(path).name} is a footprint mask; give the probability raster written beside it "
                         f"(<name>_prob.tif) to threshold it again")
    if tags.get("content") != PROBABILITY_CONTENT or "threshold" not in tags or src.count != 1:
        raise InputError(f"{Path(path).name} is not a footprint probability raster written by MineC2F (it lacks "
                         f"the {TAGS['content']} tag); give the <name>_prob.tif that segment wrote")
    return tags


def _exclusion(path, crs_wkt, bounds, log):
    """The polygons of the file ``path`` (any CRS) in the raster's CRS ``crs_wkt`` that touch ``bounds``."""
    layer = read_polygons(path, allow_empty=True, log=log, what="exclusion polygon file (--exclude)")
    shapes = overlapping(reproject_polygons(layer, crs_wkt), bounds)
    unset = "" if layer.crs_wkt else " (it has no CRS: taken to be the raster's)"
    log(f"not segmenting inside the {len(shapes)} polygon(s) of {Path(path).name} over the raster{unset}")
    return shapes


class StagedOutputs:
    """Outputs written under temporary names in their destination folders, renamed to their final names by
    :meth:`commit`. Leaving the ``with`` block removes the temporaries; on an exception (including a cancel) it
    also removes the folders it had to create, if still empty.

    ``paths`` maps a role to its final path. Missing or duplicate paths, existing files (unless ``overwrite``),
    paths that are ``protected`` (the input) and folders that cannot be written are refused here, before any work.
    """

    def __init__(self, paths, *, overwrite=False, protected=()):
        missing = [role for role, path in paths.items() if not path]
        if missing:
            raise OutputError(f"no path given for the {', '.join(missing)} output; give one for each output")
        self.final = {role: Path(path) for role, path in paths.items()}
        if len({path.resolve() for path in self.final.values()}) < len(self.final):
            raise OutputError("two outputs have the same path; give each output its own file name")
        protected = {Path(p).resolve() for p in protected}
        for path in self.final.values():
            if path.resolve() in protected:
                raise OutputError(f"output {path} is the input raster; choose another output name")
            if path.is_dir():
                raise OutputError(f"output {path} is a folder; give a file name")
            if path.exists() and not overwrite:
                raise OutputError(f"output {path} already exists; choose another output or allow overwriting "
                                  f"(--overwrite)")
        self.temp, self.created_folders = {}, []
        try:
            for role, path in self.final.items():
                self.temp[role] = self._reserve_temp_name(path)
        except BaseException:
            self._clean_up(failed=True)
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._clean_up(failed=exc_type is not None)
        return False

    def commit(self):
        for role, path in self.final.items():
            try:
                os.replace(self.temp[role], path)
            except OSError as error:
                raise write_error(path, error) from error

    def _reserve_temp_name(self, final):
        """A fresh hidden file name next to ``final`` with the same suffix, proving the folder can be written
        (creating it if needed). The name is left free so any driver can create the file."""
        folders = (final.parent, *final.parent.parents)
        blocking = [folder for folder in folders if folder.exists() and not folder.is_dir()]
        if blocking:
            raise OutputError(f"{blocking[0]} is a file, not a folder; choose another output folder")
        missing = [folder for folder in folders if not folder.exists()]
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.created_folders += [folder for folder in missing if folder not in self.created_folders]
            handle, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}",
                                            dir=final.parent)
        except OSError as error:
            raise write_error(f"to folder {final.parent}", error) from error
        os.close(handle)
        os.unlink(name)
        return Path(name)

    def _clean_up(self, failed):
        for temp in self.temp.values():
            for leftover in (temp, *(temp.with_name(temp.name + side) for side in ("-journal", "-wal", "-shm",
                                                                                      ".aux.xml"))):
                if leftover.exists():
                    leftover.unlink()
        if failed:
            for folder in self.created_folders:  # deepest first
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()


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
    return (tile, overlap, *_check_footprint_settings(threshold, min_area_ha))


def _check_footprint_settings(threshold, min_area_ha):
    """Checked (threshold, min_area_ha) as floats: how probabilities become footprint polygons."""
    threshold = check_threshold(threshold)
    if float(min_area_ha) < 0:
        raise InputError(f"minimum area {min_area_ha} ha must be 0 or more")
    return threshold, float(min_area_ha)
