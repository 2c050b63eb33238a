"""Training chips from GIS data: rasters + a polygon layer (+ the extent where the labels are complete).

Pipeline (torchgeo-like: explicit datasets and samplers)::

    footprints = read_polygons("mines.gpkg")                      # any CRS; invalid geometries repaired, counted
    extent = read_polygons("labelled_area.gpkg")                  # optional
    rasters = [label_raster(path, footprints, extent, model_bands=bands) for path in paths]
    chips = build_chip_index(rasters, chip_size=256, stride=128, val_fraction=0.2, seed=0)
    train_chips = select_chips([c for c in chips if c.split == "train"], max_chips=32, seed=0)
    mean, std = compute_band_stats(rasters)                       # reflectance units; store in the bundle spec
    train = ChipDataset(rasters, train_chips, mean, std, augment=Augment(), seed=0)
    sampler = BalancedChipSampler(train_chips, footprint_share=0.5, seed=0)
    loader = DataLoader(train, batch_size=8, sampler=sampler, num_workers=2)  # call set_epoch on both each epoch

or all of it at once from CLI-style arguments: ``build_datasets(...) -> TrainingData``.

Labels (uint8, on the raster grid): 1 = footprint, 0 = background, ``IGNORE`` (255) = outside the labelled
extent or nodata in the raster. Dataset samples are dicts of float32 tensors: ``image`` [C, H, W]
(reflectance normalised with the given mean/std, nodata pixels 0), ``mask`` [1, H, W] in {0, 1} and
``valid`` [1, H, W] in {0, 1} (0 = ignore in the loss). ``export_chips`` writes the chips as GeoTIFF pairs.

A chip is a ``chip_size`` square window; chips step by ``stride`` and the last row/column of chips is flush
with the raster edge. The train/validation split is by location: blocks of ``block_chips`` x ``block_chips``
chip positions (smaller blocks if the rasters hold too few) go to validation whole, and training chips that
overlap a validation chip are dropped (the buffer), so no pixel is seen in both splits. On a small raster, blocks
that would leave fewer training chips than a batch stay in training. When the seed's order of blocks would leave
footprints badly shared (a scene with a few mines: all in validation, none, or most lost to the buffer), other
seeded orders and smaller blocks are tried and the most balanced split is kept (:func:`footprint_balance`).
"""

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.transform
import shapely
import torch
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from . import defaults
from .bands import Band, Radiometry, RasterBandInfo, match_bands, resolve_radiometry
from .errors import BandMismatchError, Cancelled, InputError, OutputError
from .polygons import PolygonLayer, crs_name, overlapping, read_polygons, reproject_polygons
from .rasters import read_bands, valid_pixels

IGNORE = 255
MIN_CHIP_SIZE = 16  # px: the smallest chip a 4-level encoder (stride 16) can take
FOOTPRINT, BACKGROUND = 1, 0

# Bare-ground spectra (hard negatives): bright in SWIR1, little vegetation. Reflectance units.
BARE_SWIR1_MIN = 0.25
BARE_NDVI_MAX = 0.2
HARD_NEGATIVE_MIN_BARE_FRACTION = 0.05
_BARE_GROUND_BANDS = [Band("B04", 665.0), Band("B08", 842.0), Band("B11", 1610.0)]  # red, NIR, SWIR1

# Spatial split: the seed's block order is kept unless footprint_balance is below BALANCED_SPLIT; then other
# seeded orders and smaller blocks are tried, SPLIT_ORDERS orders per block size, and the most balanced is kept.
BALANCED_SPLIT = 0.5
SPLIT_ORDERS = 16

_STRIP_ROWS = 256


@dataclass
class LabelledRaster:
    """A raster with its labels rasterised on its grid and what the chips need from it."""
    path: str
    band_index: list   # 1-based raster band per selected band
    scale: float       # reflectance = DN * scale + offset
    offset: float
    radiometry_reason: str
    labels: np.ndarray       # uint8 [H, W]: 1 footprint, 0 background, IGNORE
    image_valid: np.ndarray  # bool [H, W]: data in every selected band
    bare: np.ndarray         # bool [H, W]: bare-ground-like spectra (all False if red/NIR/SWIR1 are unknown)
    polygon_count: int       # footprint polygons that overlap the raster
    crs: object
    transform: object

    @property
    def shape(self):
        return self.labels.shape


@dataclass(frozen=True)
class Chip:
    """One chip window of ``rasters[raster]`` with its label statistics and split."""
    raster: int
    row: int
    col: int
    size: int
    positive_fraction: float  # footprint pixels / chip pixels
    valid_fraction: float     # labelled (not IGNORE) pixels / chip pixels
    hard_negative: bool       # no footprint, but bare-ground-like spectra
    split: str = "train"      # "train" | "val"

    @property
    def is_footprint(self):
        return self.positive_fraction > 0

    @property
    def window(self):
        return Window(self.col, self.row, self.size, self.size)


# ---------------------------------------------------------------------------------------------- labels

def label_raster(raster_path, polygons, extent=None, *, model_bands=None, band_mapping=None, scale=None,
                 offset=None, log=None):
    """Rasterise ``polygons`` (a PolygonLayer, any CRS) on the grid of ``raster_path`` -> LabelledRaster.

    ``model_bands`` (list of Band) selects and orders the raster's bands (``bands.match_bands``; ``band_mapping``
    overrides); None keeps every band. Pixels outside ``extent`` (a PolygonLayer) or nodata in a selected band
    are IGNORE. Raises InputError when no polygon overlaps the raster (unless an extent says the raster is
    labelled: then it is all background), when the extent misses it, or when the raster cannot be read.
    """
    log = log or (lambda message: None)
    path = Path(raster_path)
    if not path.exists():
        raise InputError(f"raster {path} does not exist; check the path")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"cannot read {path} as a raster ({exc}); give a GeoTIFF or another GDAL raster") from exc
    with src:
        if src.crs is None:
            raise InputError(f"{path.name} has no coordinate reference system, so polygons cannot be placed on it; "
                             "assign one (gdal_edit.py -a_srs EPSG:XXXX or QGIS Assign Projection)")
        info = RasterBandInfo.from_dataset(src)
        try:
            band_index = (match_bands(info, model_bands, band_mapping) if model_bands is not None
                          else list(range(1, src.count + 1)))
        except BandMismatchError as error:  # which of several rasters
            raise BandMismatchError(f"{path.name}: {error}") from error
        radiometry, reason = resolve_radiometry(src, explicit_scale=scale, explicit_offset=offset,
                                               bands=band_index)
        raster_wkt = src.crs.to_wkt()
        shape, transform = (src.height, src.width), src.transform
        footprints = overlapping(reproject_polygons(polygons, raster_wkt), src.bounds)
        if polygons.crs_wkt is None:
            log(f"{Path(polygons.path).name} has no CRS; assuming the raster's ({crs_name(raster_wkt)})")
        labelled = np.ones(shape, dtype=bool)
        if extent is not None:
            extent_shapes = overlapping(reproject_polygons(extent, raster_wkt), src.bounds)
            if not extent_shapes:
                raise InputError(
                    f"the labelled extent {Path(extent.path).name} does not overlap {path.name} (raster CRS "
                    f"{crs_name(raster_wkt)}, extent CRS {extent.describe_crs()}); draw the extent over the "
                    "imagery or leave it out")
            labelled = rasterio.features.rasterize(extent_shapes, out_shape=shape, transform=transform,
                                                   fill=0, default_value=1, dtype="uint8").astype(bool)
        elif not footprints:
            raise InputError(
                f"{path.name}: none of the {len(polygons.geometries)} polygons overlap the raster extent (raster CRS "
                f"{crs_name(raster_wkt)}, polygons CRS {polygons.describe_crs()}); check you picked the right "
                "layer/raster")
        labels = (rasterio.features.rasterize(footprints, out_shape=shape, transform=transform, fill=BACKGROUND,
                                              default_value=FOOTPRINT, dtype="uint8")
                  if footprints else np.zeros(shape, dtype=np.uint8))
        image_valid, bare = _scan_pixels(src, band_index, _bare_ground_band_index(info, band_mapping), radiometry)
    labels[~(labelled & image_valid)] = IGNORE
    log(f"{path.name}: {len(footprints)} polygon{'s' * (len(footprints) != 1)}, {np.mean(labels == FOOTPRINT):.1%} "
        f"footprint, {np.mean(labels == IGNORE):.1%} ignored pixels; {radiometry} ({reason})")
    return LabelledRaster(str(path), list(band_index), radiometry.scale, radiometry.offset, reason, labels,
                          image_valid, bare, len(footprints), src.crs, transform)


def _scan_pixels(src, band_index, bare_index, radiometry):
    """Read the raster strip by strip: where every selected band has data (``rasters.valid_pixels``), and where
    spectra look like bare ground (needs red, NIR, SWIR1: ``bare_index``; otherwise nothing is bare)."""
    height, width = src.height, src.width
    image_valid = np.ones((height, width), dtype=bool)
    bare = np.zeros((height, width), dtype=bool)
    bands = sorted(set(band_index) | set(bare_index or ()))  # each band read once per strip
    for row in range(0, height, _STRIP_ROWS):
        window = Window(0, row, width, min(_STRIP_ROWS, height - row))
        rows = slice(row, row + window.height)
        strip = dict(zip(bands, read_bands(src, bands, window=window, out_dtype="float32",
                                           where=f" at pixel rows {row}-{row + window.height - 1}")))
        image_valid[rows] = valid_pixels(src, band_index, np.stack([strip[b] for b in band_index]), window)
        if bare_index is not None:
            red, nir, swir1 = (strip[b] * radiometry.scale + radiometry.offset for b in bare_index)
            ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
            bare[rows] = (swir1 >= BARE_SWIR1_MIN) & (ndvi <= BARE_NDVI_MAX)
    return image_valid, bare & image_valid


def _bare_ground_band_index(info, band_mapping):
    try:
        return match_bands(info, _BARE_GROUND_BANDS, band_mapping)
    except BandMismatchError:
        return None


# ---------------------------------------------------------------------------------------------- chips

def chip_origins(length, chip_size, stride):
    """Chip start offsets along one axis: every ``stride``, the last one flush with the edge."""
    last = length - chip_size
    origins = list(range(0, last + 1, stride))
    if origins[-1] != last:
        origins.append(last)
    return origins


def build_chip_index(rasters, chip_size=256, stride=None, *, val_fraction=defaults.VAL_FRACTION, block_chips=4,
                     seed=0, min_valid_fraction=0.25, min_train_chips=1):
    """All chips of ``rasters`` (LabelledRaster list) with at least ``min_valid_fraction`` labelled pixels, each
    with its statistics and a spatial train/val split (see the module docstring) that leaves at least
    ``min_train_chips`` training chips if it can (on a small raster less than ``val_fraction`` then goes to
    validation). Deterministic given ``seed``."""
    stride = chip_size if stride is None else stride
    if chip_size <= 0 or stride <= 0:
        raise InputError(f"chip size ({chip_size}) and stride ({stride}) must be positive; pass e.g. 256 and 128")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction {val_fraction} is not a share of the chips; pass at least 0 and below 1 "
                         f"(e.g. {defaults.VAL_FRACTION})")
    chips = []
    for number, raster in enumerate(rasters):
        height, width = raster.shape
        if height < chip_size or width < chip_size:
            fits = min(height, width) // MIN_CHIP_SIZE * MIN_CHIP_SIZE
            fix = (f"lower --chip-size to {fits} px or less (a multiple of {MIN_CHIP_SIZE})" if fits else
                   f"train on rasters at least {MIN_CHIP_SIZE} px on each side")
            raise InputError(f"{Path(raster.path).name} ({width} x {height} px) is smaller than one chip "
                             f"({chip_size} px); {fix}")
        for row in chip_origins(height, chip_size, stride):
            for col in chip_origins(width, chip_size, stride):
                chip = _measure_chip(raster, number, row, col, chip_size)
                if chip.valid_fraction >= min_valid_fraction:
                    chips.append(chip)
    if not chips:
        raise InputError(f"no chip of {chip_size} px has {min_valid_fraction:.0%} labelled pixels; check the "
                         "labelled extent and nodata, or lower --chip-size")
    if val_fraction <= 0:
        return chips
    sides = sorted({max(1, block_chips >> halving) for halving in range(block_chips.bit_length())}, reverse=True)
    overlaps = _chip_overlaps(chips)
    for floor in sorted({max(1, min_train_chips), 1}, reverse=True):  # min_train_chips if it can be, else 1
        candidates = []
        for blocks_side in sides:  # smaller blocks when the rasters hold too few, or their footprints split badly
            for order in range(SPLIT_ORDERS):
                order_seed = [seed, order] if order else seed
                split = _split_by_blocks(chips, overlaps, val_fraction, blocks_side * stride, order_seed, floor)
                if split is None:  # no block of this size can go to validation, in any order
                    break
                balance = footprint_balance(chips, split, val_fraction)
                if balance >= BALANCED_SPLIT:
                    return split
                candidates.append((balance, split))
        if candidates:
            return max(candidates, key=lambda candidate: candidate[0])[1]  # the first of the most balanced
    raise InputError(f"only {len(chips)} chips: too few for a spatial train/validation split; add rasters or lower "
                     "--chip-size (or, to export chips without validation, pass --val-fraction 0)")


def footprint_balance(chips, split, val_fraction):
    """How fairly ``split`` (a subset of ``chips`` with their splits) shares the footprint pixels: the smaller of
    (training share / (1 - val_fraction)) and (validation share / val_fraction), at most 1; 1 without footprints.
    Low when validation holds nearly all footprints, or none, or when the buffer drops most of them."""
    total = sum(c.positive_fraction for c in chips)
    if total == 0:
        return 1.0
    train = sum(c.positive_fraction for c in split if c.split == "train") / total
    val = sum(c.positive_fraction for c in split if c.split == "val") / total
    return min(1.0, train / (1 - val_fraction), val / val_fraction)


def _measure_chip(raster, number, row, col, size):
    labels = raster.labels[row:row + size, col:col + size]
    pixels = labels.size
    positives = int(np.count_nonzero(labels == FOOTPRINT))
    valid = int(np.count_nonzero(labels != IGNORE))
    bare = int(np.count_nonzero(raster.bare[row:row + size, col:col + size] & (labels != IGNORE)))
    hard_negative = positives == 0 and valid > 0 and bare >= HARD_NEGATIVE_MIN_BARE_FRACTION * valid
    return Chip(number, row, col, size, positives / pixels, valid / pixels, hard_negative)


def _chip_overlaps(chips):
    """For each chip, the indices of the chips of its raster that share a pixel with it (itself included)."""
    size = chips[0].size
    index = {(c.raster, c.row, c.col): k for k, c in enumerate(chips)}
    rows, cols = {}, {}
    for c in chips:
        rows.setdefault(c.raster, set()).add(c.row)
        cols.setdefault(c.raster, set()).add(c.col)
    rows = {r: np.array(sorted(v)) for r, v in rows.items()}
    cols = {r: np.array(sorted(v)) for r, v in cols.items()}

    def near(origins, at):
        return origins[(origins > at - size) & (origins < at + size)]

    return [[index[key] for row in near(rows[c.raster], c.row) for col in near(cols[c.raster], c.col)
             if (key := (c.raster, row, col)) in index] for c in chips]


def _split_by_blocks(chips, overlaps, val_fraction, block_px, seed, min_train_chips):
    """Whole blocks of chips (in seeded random order) go to validation until ``val_fraction`` of the chips are
    there; training chips that overlap a validation chip (``overlaps``: :func:`_chip_overlaps`) are dropped. A
    block that would leave fewer than ``min_train_chips`` training chips is skipped; returns None if no block
    could go to validation."""
    blocks = {}
    for k, chip in enumerate(chips):
        blocks.setdefault((chip.raster, chip.row // block_px, chip.col // block_px), []).append(k)
    keys = sorted(blocks)
    is_val = np.zeros(len(chips), dtype=bool)
    taken = np.zeros(len(chips), dtype=bool)  # validation chips and the training chips they overlap
    val_count, free = 0, len(chips)
    for i in np.random.default_rng(seed).permutation(len(keys)):
        if val_count >= val_fraction * len(chips):
            break
        members = blocks[keys[i]]
        near = {n for k in members for n in overlaps[k] if not taken[n]}
        if free - len(near) < min_train_chips:
            continue
        is_val[members] = True
        taken[list(near)] = True
        val_count, free = val_count + len(members), free - len(near)
    if not is_val.any():
        return None
    return [replace(c, split="val") if is_val[k] else c for k, c in enumerate(chips) if is_val[k] or not taken[k]]


def select_chips(chips, max_chips=None, *, footprint_share=0.5, hard_negative_weight=2.0, seed=0):
    """A deterministic budget of at most ``max_chips`` chips: ``footprint_share`` of them footprint chips (the
    rest background, hard negatives ``hard_negative_weight`` times as likely), topped up from the other kind when
    one runs short. Budgets are nested: for one seed the 8 chips are among the 32, the 32 among the 128."""
    if max_chips is None or max_chips >= len(chips):
        return list(chips)
    rng = np.random.default_rng(seed)
    footprint = [c for c in chips if c.is_footprint]
    background = [c for c in chips if not c.is_footprint]
    footprint = [footprint[i] for i in rng.permutation(len(footprint))]
    weights = np.array([hard_negative_weight if c.hard_negative else 1.0 for c in background])
    keys = rng.random(len(background)) ** (1.0 / weights) if background else np.empty(0)
    background = [background[i] for i in np.argsort(-keys, kind="stable")]
    n_footprint = min(len(footprint), max(round(max_chips * footprint_share), max_chips - len(background)))
    return footprint[:n_footprint] + background[:max_chips - n_footprint]


class BalancedChipSampler(torch.utils.data.Sampler):
    """Draws chips with replacement so that footprint chips make up ``footprint_share`` of the draws and, among
    background chips, hard negatives are ``hard_negative_weight`` times as likely. ``num_samples`` draws per
    epoch (default: one per chip); call :meth:`set_epoch` each epoch for a new, reproducible order.

    Yields ``(chip index, draw number)`` queries for :class:`ChipDataset`, so a chip drawn twice in an epoch
    gets two different augmentations."""

    def __init__(self, chips, *, footprint_share=0.5, hard_negative_weight=2.0, num_samples=None, seed=0):
        is_footprint = np.array([c.is_footprint for c in chips])
        weights = np.array([hard_negative_weight if c.hard_negative else 1.0 for c in chips])
        footprint_mass = weights[is_footprint].sum()
        background_mass = weights[~is_footprint].sum()
        if footprint_mass and background_mass:
            weights = np.where(is_footprint, footprint_share * weights / footprint_mass,
                               (1 - footprint_share) * weights / background_mass)
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples or len(chips)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()
        return iter(list(zip(drawn, range(self.num_samples))))

    def __len__(self):
        return self.num_samples


# ---------------------------------------------------------------------------------------------- band statistics

def compute_band_stats(rasters, *, chips=None, max_pixels=1_000_000):
    """Per-band reflectance mean and std over valid pixels (of ``chips`` if given, else of the whole rasters),
    from a regular subsample of at most about ``max_pixels`` pixels. Returns (mean list, std list)."""
    windows = ([(c.raster, c.window) for c in chips] if chips is not None
               else [(k, Window(0, 0, r.shape[1], r.shape[0])) for k, r in enumerate(rasters)])
    total = sum(w.width * w.height for _, w in windows)
    step = max(1, int(np.ceil(np.sqrt(total / max_pixels))))
    samples = []
    for number, window in windows:
        raster = rasters[number]
        out_shape = (len(raster.band_index), -(-int(window.height) // step), -(-int(window.width) // step))
        with rasterio.open(raster.path) as src:  # decimated reads: every step-th pixel, data and mask alike
            dn = src.read(raster.band_index, window=window, out_shape=out_shape, out_dtype="float32",
                          resampling=Resampling.nearest)
            valid = src.read_masks(raster.band_index, window=window, out_shape=out_shape,
                                   resampling=Resampling.nearest).all(axis=0) & np.isfinite(dn).all(axis=0)
        samples.append((dn * raster.scale + raster.offset)[:, valid])
    values = np.concatenate(samples, axis=1).astype(np.float64)
    if values.shape[1] == 0:
        raise InputError("no valid pixels to compute band statistics from; check the rasters' nodata")
    std = np.maximum(values.std(axis=1), 1e-3)  # a constant band must not blow up
    return [float(v) for v in values.mean(axis=1)], [float(v) for v in std]


# ---------------------------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augment:
    """Random flips, 90 degree rotations (applied alike to image, mask and valid) and radiometric jitter in
    reflectance units: per-band gain x U(1-g, 1+g) and offset U(-o, o), plus, on half the chips, one offset for
    all bands U(-r, r) (``reflectance_offset_jitter``, e.g. 0.1 to survive a wrong L2A +1000 DN offset)."""
    flips: bool = True
    rotations: bool = True
    gain_jitter: float = 0.05
    offset_jitter: float = 0.01
    reflectance_offset_jitter: float = 0.0

    def __call__(self, image, planes, rng):
        """image [C, H, W] reflectance and label planes [K, H, W] (mask, valid, ...) -> augmented copies, the
        geometric changes applied alike to both. The same rng state gives the same result."""
        bands = image.shape[0]
        gain = rng.uniform(1 - self.gain_jitter, 1 + self.gain_jitter, bands).astype(np.float32)
        offset = rng.uniform(-self.offset_jitter, self.offset_jitter, bands).astype(np.float32)
        if rng.random() < 0.5:  # half the chips keep their true level, so the jitter costs little accuracy
            offset += np.float32(rng.uniform(-self.reflectance_offset_jitter, self.reflectance_offset_jitter))
        image = image * gain[:, None, None] + offset[:, None, None]
        if self.flips and rng.random() < 0.5:
            image, planes = image[:, :, ::-1], planes[:, :, ::-1]
        if self.flips and rng.random() < 0.5:
            image, planes = image[:, ::-1, :], planes[:, ::-1, :]
        if self.rotations:
            turns = int(rng.integers(4))
            image, planes = np.rot90(image, turns, axes=(1, 2)), np.rot90(planes, turns, axes=(1, 2))
        return np.ascontiguousarray(image), np.ascontiguousarray(planes)


# ---------------------------------------------------------------------------------------------- dataset

class ChipDataset(torch.utils.data.Dataset):
    """Chips of ``rasters`` read on the fly (windowed reads; files opened lazily once per process, so DataLoader
    workers are safe) or from memory when a raster's selected bands fit in ``cache_bytes`` (float32 reflectance,
    one copy per worker process unless loaded before the workers fork).

    Item: dict(image float32 [C, H, W] normalised ((reflectance - mean) / std, nodata 0), mask float32 [1, H, W]
    in {0, 1}, valid float32 [1, H, W] in {0, 1}). Indexed by chip index or by a ``(chip index, draw)`` query
    (from :class:`BalancedChipSampler`). With ``augment``, a query gives the same sample for the same ``seed`` and
    epoch; call :meth:`set_epoch` before each epoch (with DataLoader workers that are not persistent).
    """

    def __init__(self, rasters, chips, norm_mean, norm_std, *, augment=None, seed=0, cache_bytes=256 * 2**20):
        self.rasters, self.chips = rasters, list(chips)
        self.mean = np.asarray(norm_mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(norm_std, np.float32).reshape(-1, 1, 1)
        bands = {len(r.band_index) for r in rasters}
        if bands != {self.mean.shape[0]}:
            raise InputError(f"normalisation has {self.mean.shape[0]} bands but the rasters give {sorted(bands)}; "
                             "use the statistics of the same band selection")
        self.augment, self.seed, self.epoch, self.cache_bytes = augment, seed, 0, cache_bytes
        self._open, self._pid = {}, os.getpid()  # raster number -> open dataset or reflectance array, per process

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.chips)

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def view(self, chips, *, augment=None, seed=None):
        """A dataset of other ``chips`` of the same rasters (by default not augmented) that shares this one's open
        files and in-memory rasters."""
        view = ChipDataset.__new__(ChipDataset)
        view.__dict__.update(self.__dict__, chips=list(chips), augment=augment,
                             seed=self.seed if seed is None else seed)
        return view

    def __getitem__(self, query):
        index, draw = query if isinstance(query, tuple) else (query, 0)
        chip = self.chips[index]
        raster = self.rasters[chip.raster]
        rows, cols = slice(chip.row, chip.row + chip.size), slice(chip.col, chip.col + chip.size)
        image = self.read_reflectance(chip)
        labels = raster.labels[rows, cols]
        image_valid = raster.image_valid[rows, cols]
        planes = np.stack([labels == FOOTPRINT, labels != IGNORE, image_valid])
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index, draw))
            image, planes = self.augment(image, planes, rng)
        image = (image - self.mean) / self.std
        image[:, ~planes[2]] = 0.0
        return {"image": torch.from_numpy(image.astype(np.float32, copy=False)),
                "mask": torch.from_numpy(planes[0:1].astype(np.float32)),
                "valid": torch.from_numpy(planes[1:2].astype(np.float32))}

    def read_reflectance(self, chip):
        """Reflectance of the chip's selected bands, float32 [C, size, size]."""
        source = self._source(chip.raster)
        if isinstance(source, np.ndarray):
            return source[:, chip.row:chip.row + chip.size, chip.col:chip.col + chip.size].copy()
        raster = self.rasters[chip.raster]
        dn = source.read(raster.band_index, window=chip.window, out_dtype="float32")
        return dn * np.float32(raster.scale) + np.float32(raster.offset)

    def _source(self, number):
        if self._pid != os.getpid():  # a forked DataLoader worker: keep cached arrays, not the parent's GDAL handles
            self._open = {k: v for k, v in self._open.items() if isinstance(v, np.ndarray)}
            self._pid = os.getpid()
        if number not in self._open:
            raster = self.rasters[number]
            height, width = raster.shape
            src = rasterio.open(raster.path)
            if len(raster.band_index) * height * width * 4 <= self.cache_bytes:
                with src:
                    dn = src.read(raster.band_index, out_dtype="float32")
                self._open[number] = dn * np.float32(raster.scale) + np.float32(raster.offset)
            else:
                self._open[number] = src
        return self._open[number]


# ---------------------------------------------------------------------------------------------- from CLI arguments

@dataclass
class TrainingData:
    """What a training loop needs: datasets, the training sampler, the normalisation and a summary for the
    bundle spec's ``training`` field."""
    train: ChipDataset
    val: ChipDataset
    labelled: ChipDataset  # the training and validation chips, not augmented: where the threshold is set
    sampler: BalancedChipSampler
    norm_mean: list
    norm_std: list
    summary: dict
    imagery: ChipDataset = None  # every training-area chip, its labels unused: where distillation may also look


def label_rasters(rasters, polygons, extent=None, *, model_bands=None, band_mapping=None, scale=None, offset=None,
                  polygon_layer=None, extent_layer=None, log=None):
    """Read the polygon (and extent) files and label every raster -> (list of LabelledRaster, PolygonLayer,
    extent PolygonLayer or None)."""
    if not rasters:
        raise InputError("no raster given; pass at least one --raster")
    # Within a labelled extent, an empty footprint layer is a statement: no footprints there.
    footprints = read_polygons(polygons, polygon_layer, allow_empty=extent is not None, log=log)
    extent_polygons = (read_polygons(extent, extent_layer, log=log, what="labelled extent file (--extent)")
                       if extent is not None else None)
    labelled = [label_raster(path, footprints, extent_polygons, model_bands=model_bands, band_mapping=band_mapping,
                             scale=scale, offset=offset, log=log) for path in rasters]
    outside = _outside_every_raster(footprints, labelled)
    if outside and log:
        lie = "lies outside every raster and trains" if outside == 1 else "lie outside every raster and train"
        log(f"{outside} of the {len(footprints.geometries)} polygons {lie} nothing; check their CRS or add the "
            "rasters they cover")
    return labelled, footprints, extent_polygons


def _outside_every_raster(polygons, labelled):
    """How many of ``polygons`` (a PolygonLayer) touch none of the ``labelled`` rasters."""
    boxes = [shapely.box(*rasterio.transform.array_bounds(*r.shape, r.transform)) for r in labelled]
    if polygons.crs_wkt:  # else taken to be in each raster's CRS
        boxes = [box for r, raster_box in zip(labelled, boxes) for box in reproject_polygons(
            PolygonLayer("", "", [raster_box], r.crs.to_wkt(), 0), polygons.crs_wkt)]
    covered = shapely.union_all(boxes) if boxes else shapely.Polygon()
    return sum(not geometry.intersects(covered) for geometry in polygons.geometries)


def build_datasets(rasters, polygons, *, model_bands, extent=None, chip_size=256, stride=None,
                   val_fraction=defaults.VAL_FRACTION, seed=0, max_chips=None, batch_size=8, norm=None,
                   band_mapping=None, scale=None, offset=None, augment=Augment(), footprint_share=0.5,
                   hard_negative_weight=2.0, block_chips=4, polygon_layer=None, extent_layer=None, log=None):
    """Train/val datasets from CLI-style arguments (raster paths, polygon and extent paths, model bands ...).

    ``norm``: (mean, std) to reuse (e.g. the teacher's when fine-tuning); default: computed from the rasters.
    ``max_chips``: budget of training chips (:func:`select_chips`). Raises InputError when there are fewer
    training chips than ``batch_size``.
    """
    labelled, footprints, extent_polygons = label_rasters(
        rasters, polygons, extent, model_bands=model_bands, band_mapping=band_mapping, scale=scale, offset=offset,
        polygon_layer=polygon_layer, extent_layer=extent_layer, log=log)
    chips = build_chip_index(labelled, chip_size, stride, val_fraction=val_fraction, block_chips=block_chips,
                             seed=seed, min_train_chips=batch_size)
    train_chips = select_chips([c for c in chips if c.split == "train"], max_chips, footprint_share=footprint_share,
                               hard_negative_weight=hard_negative_weight, seed=seed)
    val_chips = [c for c in chips if c.split == "val"]
    footprint_chips = sum(c.is_footprint for c in train_chips)
    if len(train_chips) < batch_size:
        raise InputError(f"only {len(train_chips)} training chips of {chip_size} px ({footprint_chips} with "
                         f"footprints), fewer than one batch of {batch_size}; lower --batch or add "
                         "polygons/rasters (or lower --chip-size / --val-fraction)")
    mean, std = norm if norm is not None else compute_band_stats(labelled)
    summary = {
        "rasters": [Path(r.path).name for r in labelled],
        "polygons": Path(footprints.path).name, "polygon_layer": footprints.layer,
        "polygon_count": len(footprints.geometries), "repaired_geometries": footprints.repaired,
        "extent": Path(extent_polygons.path).name if extent_polygons else None,
        "chip_size": chip_size, "stride": stride or chip_size, "val_fraction": val_fraction,
        "block_chips": block_chips, "seed": seed, "max_chips": max_chips,
        "train_chips": len(train_chips), "train_footprint_chips": int(footprint_chips),
        "train_hard_negatives": int(sum(c.hard_negative for c in train_chips)), "val_chips": len(val_chips),
        "val_footprint_chips": int(sum(c.is_footprint for c in val_chips)),
        "radiometry": [r.radiometry_reason for r in labelled],
        "reflectance": [str(Radiometry(r.scale, r.offset)) for r in labelled],
        "raster_bands": [[int(band) for band in r.band_index] for r in labelled],  # per raster, for each model band
    }
    if log:
        log(f"{len(train_chips)} training chips ({footprint_chips} with footprints, "
            f"{summary['train_hard_negatives']} hard negatives), {len(val_chips)} validation chips "
            f"({summary['val_footprint_chips']} with footprints)")
        if val_chips and not summary["val_footprint_chips"]:
            log(f"warning: none of the {len(val_chips)} validation chips holds a footprint, so the validation IoU "
                "that picks the best epoch sees only false alarms; digitise footprints over more of the raster or "
                "raise --val-fraction")
        if all(c.positive_fraction >= c.valid_fraction - 1e-9 for c in train_chips + val_chips):
            log("warning: the polygons cover every labelled pixel, so there is no background to learn from and "
                "any model scores perfectly; label a wider area (a labelled extent around the footprints)")
    all_train_chips = [c for c in chips if c.split == "train"]
    train = ChipDataset(labelled, train_chips, mean, std, augment=augment, seed=seed)  # the others share its rasters
    return TrainingData(
        train=train, val=train.view(val_chips), labelled=train.view(train_chips + val_chips),
        imagery=train.view(all_train_chips, augment=augment, seed=seed + 1),
        sampler=BalancedChipSampler(train_chips, footprint_share=footprint_share,
                                    hard_negative_weight=hard_negative_weight, seed=seed),
        norm_mean=list(mean), norm_std=list(std), summary=summary)


# ---------------------------------------------------------------------------------------------- export

@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    index_path: str
    train_count: int
    val_count: int


INDEX_FIELDS = ["image", "mask", "split", "raster", "row", "col", "positive_fraction", "valid_fraction",
                "hard_negative", "scale", "offset"]


def export_chips(rasters, polygons, out_dir, extent=None, chip_size=256, stride=None, *,
                 val_fraction=defaults.VAL_FRACTION, block_chips=4, seed=0, model_bands=None, band_mapping=None,
                 scale=None, offset=None, overwrite=False, polygon_layer=None, extent_layer=None, progress=None,
                 is_canceled=None, log=None):
    """Write every chip as a georeferenced GeoTIFF pair, ``image/<name>.tif`` (the raster's DN of the selected
    bands: ``model_bands`` or all, with the reflectance scale/offset used as the bands' scale/offset metadata)
    and ``mask/<name>.tif`` (uint8 1/0, 255 = ignore), plus ``index.csv`` (:data:`INDEX_FIELDS`). ``scale``,
    ``offset``: as for training (not set: each raster's). ``out_dir`` appears only when complete; an existing one
    is replaced only with ``overwrite`` and only when it is empty or an earlier export (:func:`check_export_folder`)."""
    progress = progress or (lambda percent: None)
    is_canceled = is_canceled or (lambda: False)
    out_dir = Path(out_dir)
    check_export_folder(out_dir, [*rasters, polygons, *([extent] if extent else [])], overwrite=overwrite)
    labelled, _, _ = label_rasters(rasters, polygons, extent, model_bands=model_bands, band_mapping=band_mapping,
                                   scale=scale, offset=offset, polygon_layer=polygon_layer,
                                   extent_layer=extent_layer, log=log)
    chips = build_chip_index(labelled, chip_size, stride, val_fraction=val_fraction, block_chips=block_chips,
                             seed=seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        (staging / "image").mkdir()
        (staging / "mask").mkdir()
        rows, stems = [], _unique_stems([r.path for r in labelled])
        for number, raster in enumerate(labelled):
            with rasterio.open(raster.path) as src:
                for chip in (c for c in chips if c.raster == number):
                    if is_canceled():
                        raise Cancelled("chip export was cancelled; no output was written")
                    rows.append(_write_chip_pair(src, raster, chip, f"{stems[number]}_r{chip.row}_c{chip.col}.tif",
                                                 staging))
                    progress(100.0 * len(rows) / len(chips))
        with open(staging / "index.csv", "w", newline="") as index:
            writer = csv.DictWriter(index, INDEX_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    val_count = sum(c.split == "val" for c in chips)
    if log:
        log(f"wrote {len(chips)} chip pairs ({len(chips) - val_count} train, {val_count} val) to {out_dir}")
    return ExportResult(str(out_dir), str(out_dir / "index.csv"), len(chips) - val_count, val_count)


def check_export_folder(out_dir, inputs, *, overwrite):
    """Refuse ``out_dir`` unless it is new, empty, or (with ``overwrite``) an earlier chip export: an index.csv
    with the export's columns, and image/ and mask/ holding only the chips it lists (and the .aux.xml files GIS
    software writes beside them). Replacing it deletes it, so nothing else may be in it, ``inputs`` included."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder; choose a new folder for the chips")
    inside = [Path(p) for p in inputs if out_dir.resolve() in Path(p).resolve().parents]
    if inside:
        raise OutputError(f"input {inside[0]} lies inside the output folder {out_dir}, which an export replaces; "
                          f"choose a new folder for the chips")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not _is_chip_export(out_dir):
        raise OutputError(f"{out_dir} exists and holds files that are not a MineC2F chip export; choose a new or "
                          f"empty folder (only an earlier export is replaced)")
    if not overwrite:
        raise OutputError(f"{out_dir} holds an earlier chip export; choose a new folder or pass --overwrite to "
                          f"replace it")


def _is_chip_export(folder):
    """Whether ``folder`` holds only what :func:`export_chips` writes: see :func:`check_export_folder`."""
    names = {p.name for p in folder.iterdir()}
    if not names <= {"index.csv", "image", "mask"} or not (folder / "index.csv").is_file():
        return False
    try:
        with open(folder / "index.csv", newline="") as index:
            reader = csv.DictReader(index)
            if reader.fieldnames != INDEX_FIELDS:
                return False
            listed = {Path(row[kind]) for row in reader for kind in ("image", "mask")}
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    for kind in ("image", "mask"):
        sub = folder / kind
        if not sub.exists():
            continue
        if not sub.is_dir():
            return False
        for entry in sub.iterdir():  # a listed chip, or the .aux.xml beside one
            names = {Path(kind, entry.name), Path(kind, entry.name.removesuffix(".aux.xml"))}
            if entry.is_dir() or not names & listed:
                return False
    return True


def _write_chip_pair(src, raster, chip, name, folder):
    labels = raster.labels[chip.row:chip.row + chip.size, chip.col:chip.col + chip.size]
    data = read_bands(src, raster.band_index, window=chip.window)
    common = {"driver": "GTiff", "width": chip.size, "height": chip.size, "crs": src.crs,
              "transform": src.window_transform(chip.window), "compress": "deflate"}
    with rasterio.open(folder / "image" / name, "w", count=len(raster.band_index), dtype=data.dtype,
                       nodata=src.nodata, **common) as dst:
        dst.write(data)
        dst.scales, dst.offsets = [raster.scale] * dst.count, [raster.offset] * dst.count
        for k, band in enumerate(raster.band_index, start=1):
            if src.descriptions[band - 1]:
                dst.set_band_description(k, src.descriptions[band - 1])
    with rasterio.open(folder / "mask" / name, "w", count=1, dtype="uint8", nodata=IGNORE, **common) as dst:
        dst.write(labels, 1)
    return {"image": f"image/{name}", "mask": f"mask/{name}", "split": chip.split, "raster": raster.path,
            "row": chip.row, "col": chip.col, "positive_fraction": round(chip.positive_fraction, 6),
            "valid_fraction": round(chip.valid_fraction, 6), "hard_negative": int(chip.hard_negative),
            "scale": raster.scale, "offset": raster.offset}


def _unique_stems(paths):
    """File stems, prefixed with the raster's number where two rasters share a stem."""
    stems = [Path(p).stem for p in paths]
    return [f"{k}_{stem}" if stems.count(stem) > 1 else stem for k, stem in enumerate(stems)]


def _move_into_place(staging, out_dir):
    """Rename the finished ``staging`` folder to ``out_dir``; an existing ``out_dir`` is removed only after."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.rename(out_dir, old / out_dir.name)
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)

