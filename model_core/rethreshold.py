"""polygonize_probability: a probability raster written by ``pipeline.segment_scene`` -> a new footprint mask and
polygons at another threshold or minimum area, without the model (so without torch)."""

from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.windows import Window

from .defaults import MIN_AREA_HA
from .errors import Cancelled, InputError
from .rasters import (MASK_CONTENT, PROBABILITY_CONTENT, TAGS, check_footprint_settings, decode_probability,
                      mask_profile, open_raster, output_tags, read_output_tags, threshold_mask)
from .staging import StagedOutputs
from .vectorize import check_crs_convertible, polygonize

THRESHOLD_SHARE = 50.0  # percent of the progress bar given to writing the mask; the rest is vectorizing
STRIP_ROWS = 256  # rows of a probability raster thresholded at a time


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
    """Threshold a probability raster written by ``pipeline.segment_scene`` again and trace its footprints, without
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
            threshold, min_area_ha = check_footprint_settings(
                tags["threshold"] if threshold is None else threshold,
                tags.get("min_area_ha", MIN_AREA_HA) if min_area_ha is None else min_area_ha)
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
