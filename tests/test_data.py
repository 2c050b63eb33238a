"""Chips from rasters + polygons: labels (reprojection, repair, extent, nodata), split, sampling, augmentation,
the dataset and chip export; bad input gets a clear error."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
import shapely.geometry
import torch
from osgeo import osr
from rasterio.crs import CRS
from rasterio.transform import from_origin

from raster_files import write_raster
from model_core.bands import DEFAULT_MODEL_BANDS, Radiometry, resolve_radiometry
from model_core.data import (BALANCED_SPLIT, IGNORE, Augment, BalancedChipSampler, Chip, ChipDataset,
                             _chip_overlaps, _split_by_blocks, build_chip_index, build_datasets,
                             compute_band_stats, export_chips, footprint_balance, label_raster, label_rasters,
                             select_chips)
from model_core.errors import Cancelled, InputError, OutputError
from model_core.polygons import read_polygons
from model_core.vectorize import write_polygons_gpkg

REAL = Path("/work/shared/data/real")
X0, Y0, PIXEL = 500000.0, 5800000.0, 10.0  # conftest.write_raster's default grid (EPSG:32633)
BAND_NAMES = [b.name for b in DEFAULT_MODEL_BANDS]  # B02 B03 B04 B08 B11 B12
VEGETATION = [0.03, 0.06, 0.04, 0.35, 0.15, 0.07]  # reflectance per band
BARE = [0.20, 0.25, 0.30, 0.33, 0.45, 0.40]


def scene(size=64, bare_box=None, nodata_box=None):
    """uint16 DN (reflectance x 10000) scene of vegetation, with a bare-ground box and a zero (nodata) box."""
    image = np.empty((6, size, size), dtype=np.uint16)
    image[:] = (np.array(VEGETATION) * 10000).astype(np.uint16)[:, None, None]
    if bare_box:
        r0, r1, c0, c1 = bare_box
        image[:, r0:r1, c0:c1] = (np.array(BARE) * 10000).astype(np.uint16)[:, None, None]
    if nodata_box:
        r0, r1, c0, c1 = nodata_box
        image[:, r0:r1, c0:c1] = 0
    return image


def pixel_box(row0, row1, col0, col1):
    """Polygon (in the default UTM grid) covering pixel rows row0..row1-1 and columns col0..col1-1."""
    return shapely.box(X0 + col0 * PIXEL, Y0 - row1 * PIXEL, X0 + col1 * PIXEL, Y0 - row0 * PIXEL)


def write_polygons(path, geoms, crs="EPSG:32633"):
    write_polygons_gpkg(path, geoms, CRS.from_user_input(crs).to_wkt(), {}, layer="polygons")
    return path


def to_lonlat(geom):
    """Reproject a UTM 33N geometry to EPSG:4326 longitude/latitude (densified so edges stay straight in UTM)."""
    source, target = osr.SpatialReference(), osr.SpatialReference()
    source.ImportFromEPSG(32633)
    target.ImportFromEPSG(4326)
    for srs in (source, target):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(source, target)
    return shapely.transform(shapely.segmentize(geom, 5.0),
                             lambda xy: np.array(transform.TransformPoints(xy))[:, :2])


@pytest.fixture
def utm_raster(tmp_path):
    return write_raster(tmp_path / "scene.tif", scene(), descriptions=BAND_NAMES)


# ---------------------------------------------------------------------------------------------- labels

def test_polygons_in_lonlat_are_reprojected_onto_the_utm_grid(tmp_path, utm_raster):
    square = pixel_box(10, 30, 20, 40)  # 20 x 20 pixels
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [to_lonlat(square)], "EPSG:4326"))
    labels = label_raster(utm_raster, polygons, model_bands=DEFAULT_MODEL_BANDS).labels
    assert abs(int((labels == 1).sum()) - 400) <= 8
    rows, cols = np.nonzero(labels == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 29, 20, 39)


def test_polygons_outside_every_raster_are_counted_in_the_log(tmp_path, utm_raster):
    inside, far = to_lonlat(pixel_box(10, 30, 20, 40)), to_lonlat(pixel_box(5000, 5020, 0, 20))  # 50 km south
    polygons = write_polygons(tmp_path / "p.gpkg", [inside, far, far], "EPSG:4326")
    lines = []
    label_rasters([utm_raster], polygons, model_bands=DEFAULT_MODEL_BANDS, log=lines.append)
    assert "2 of the 3 polygons lie outside every raster and train nothing; check their CRS or add the rasters " \
           "they cover" in lines
    lines.clear()
    label_rasters([utm_raster], write_polygons(tmp_path / "in.gpkg", [inside], "EPSG:4326"),
                  model_bands=DEFAULT_MODEL_BANDS, log=lines.append)
    assert not any("outside every raster" in line for line in lines)


def test_geojson_polygons_label_rasters_in_two_utm_zones(tmp_path, utm_raster):
    square = pixel_box(10, 30, 20, 40)
    geojson = tmp_path / "p.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(to_lonlat(square))}]}))
    polygons = read_polygons(geojson)
    with rasterio.open(utm_raster) as src:  # the same ground in the neighbouring zone (32N)
        x, y = rasterio.warp.transform(src.crs, "EPSG:32632", [X0], [Y0])
    zone32 = write_raster(tmp_path / "z32.tif", scene(), crs="EPSG:32632",
                          transform=from_origin(x[0] - 200.0, y[0] + 200.0, PIXEL, PIXEL), descriptions=BAND_NAMES)
    for raster in (utm_raster, zone32):
        labels = label_raster(raster, polygons, model_bands=DEFAULT_MODEL_BANDS).labels
        assert abs(int((labels == 1).sum()) - 400) <= 40  # the grids are rotated against each other in zone 32


def test_missing_and_unreadable_rasters_are_refused(tmp_path):
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(0, 10, 0, 10)]))
    with pytest.raises(InputError, match="raster .*missing.tif does not exist"):
        label_raster(tmp_path / "missing.tif", polygons)
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(InputError, match="cannot read .*junk.tif as a raster"):
        label_raster(tmp_path / "junk.tif", polygons)


def test_invalid_bow_tie_is_repaired_and_counted(tmp_path, utm_raster):
    a, b = pixel_box(0, 20, 0, 20).bounds[:2], pixel_box(0, 20, 0, 20).bounds[2:]
    bow_tie = shapely.Polygon([(a[0], a[1]), (b[0], b[1]), (b[0], a[1]), (a[0], b[1])])
    assert not bow_tie.is_valid
    messages = []
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [bow_tie, pixel_box(40, 50, 40, 50)]),
                             log=messages.append)
    assert polygons.repaired == 1
    assert any("repaired 1 invalid geometries" in m for m in messages)
    labels = label_raster(utm_raster, polygons, model_bands=DEFAULT_MODEL_BANDS).labels
    assert abs(int((labels[:20, :20] == 1).sum()) - 200) <= 20  # both triangles: half the square
    assert (labels[40:50, 40:50] == 1).all()


def test_outside_the_labelled_extent_and_nodata_are_ignored(tmp_path):
    raster = write_raster(tmp_path / "s.tif", scene(nodata_box=(0, 8, 0, 8)), nodata=0, descriptions=BAND_NAMES)
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 20, 10, 20)]))
    extent = read_polygons(write_polygons(tmp_path / "e.gpkg", [pixel_box(0, 64, 0, 32)]))
    labelled = label_raster(raster, polygons, extent, model_bands=DEFAULT_MODEL_BANDS)
    labels = labelled.labels
    assert (labels[:, 32:] == IGNORE).all()
    assert (labels[:8, :8] == IGNORE).all() and not labelled.image_valid[:8, :8].any()
    assert (labels[10:20, 10:20] == 1).all()
    assert int((labels == 0).sum()) == 64 * 32 - 64 - 100
    reflectance = scene().astype(np.float32) / 10000
    reflectance[3, 60:, 60:] = np.nan  # float raster, no nodata value: NaN is nodata
    float_raster = write_raster(tmp_path / "f.tif", reflectance, descriptions=BAND_NAMES)
    labels = label_raster(float_raster, polygons, model_bands=DEFAULT_MODEL_BANDS).labels
    assert (labels[60:, 60:] == IGNORE).all() and (labels[:60] != IGNORE).all()
    undeclared = write_raster(tmp_path / "u.tif", scene(nodata_box=(0, 8, 0, 8)), descriptions=BAND_NAMES)
    labels = label_raster(undeclared, polygons, model_bands=DEFAULT_MODEL_BANDS).labels
    assert (labels[:8, :8] == IGNORE).all() and (labels[8:] != IGNORE).all()  # fill 0 in every band, no nodata set


def test_polygons_that_miss_the_raster_are_refused_naming_both_crs(tmp_path, utm_raster):
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(1000, 1010, 0, 10)] * 3))
    with pytest.raises(InputError, match=r"none of the 3 polygons overlap the raster extent .*EPSG:32633.*"
                                         r"right layer/raster"):
        label_raster(utm_raster, polygons, model_bands=DEFAULT_MODEL_BANDS)


def test_extent_that_misses_the_raster_is_refused(tmp_path, utm_raster):
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(0, 10, 0, 10)]))
    extent = read_polygons(write_polygons(tmp_path / "e.gpkg", [pixel_box(500, 600, 0, 10)]))
    with pytest.raises(InputError, match="labelled extent e.gpkg does not overlap scene.tif"):
        label_raster(utm_raster, polygons, extent, model_bands=DEFAULT_MODEL_BANDS)
    with pytest.raises(InputError, match=r"labelled extent file \(--extent\) .*missing.gpkg does not exist"):
        label_rasters([utm_raster], tmp_path / "p.gpkg", tmp_path / "missing.gpkg", model_bands=DEFAULT_MODEL_BANDS)
    write_polygons(tmp_path / "empty.gpkg", [])
    with pytest.raises(InputError, match=r"empty.gpkg \(labelled extent file \(--extent\)\) has no polygons"):
        label_rasters([utm_raster], tmp_path / "p.gpkg", tmp_path / "empty.gpkg", model_bands=DEFAULT_MODEL_BANDS)


def test_empty_missing_and_unreadable_polygon_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="has no polygons"):
        read_polygons(write_polygons(tmp_path / "empty.gpkg", []))
    assert read_polygons(tmp_path / "empty.gpkg", allow_empty=True).geometries == []
    with pytest.raises(InputError, match="does not exist"):
        read_polygons(tmp_path / "missing.gpkg")
    (tmp_path / "junk.gpkg").write_text("not a geopackage")
    with pytest.raises(InputError, match="cannot read .*junk.gpkg as a vector layer"):
        read_polygons(tmp_path / "junk.gpkg")


# ---------------------------------------------------------------------------------------------- chips

def labelled_scene(tmp_path, size=128, boxes=((10, 30, 10, 30), (70, 100, 80, 110)), bare_box=(40, 64, 96, 128)):
    raster = write_raster(tmp_path / "big.tif", scene(size, bare_box=bare_box), descriptions=BAND_NAMES)
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(*b) for b in boxes]))
    return label_raster(raster, polygons, model_bands=DEFAULT_MODEL_BANDS)


def test_chip_statistics_and_hard_negatives(tmp_path):
    raster = labelled_scene(tmp_path)
    chips = build_chip_index([raster], chip_size=32, stride=32, val_fraction=0)
    assert len(chips) == 16
    by_place = {(c.row, c.col): c for c in chips}
    assert by_place[(0, 0)].positive_fraction == pytest.approx(20 * 20 / 32**2)
    assert by_place[(32, 96)].hard_negative and by_place[(32, 96)].positive_fraction == 0
    assert not by_place[(0, 64)].hard_negative
    assert sum(c.hard_negative for c in chips) == 1


def test_spatial_split_keeps_train_and_val_apart_and_is_deterministic(tmp_path):
    raster = labelled_scene(tmp_path, size=256)
    chips = build_chip_index([raster], chip_size=32, stride=16, val_fraction=0.25, block_chips=2, seed=3)
    train = [c for c in chips if c.split == "train"]
    val = [c for c in chips if c.split == "val"]
    assert train and val
    for t in train:
        assert all(abs(t.row - v.row) >= 32 or abs(t.col - v.col) >= 32 for v in val)
    assert chips == build_chip_index([raster], chip_size=32, stride=16, val_fraction=0.25, block_chips=2, seed=3)
    other = build_chip_index([raster], chip_size=32, stride=16, val_fraction=0.25, block_chips=2, seed=4)
    assert {(c.row, c.col) for c in other if c.split == "val"} != {(c.row, c.col) for c in val}


def test_split_of_a_small_raster_leaves_a_batch_of_training_chips(tmp_path):
    """An area of interest clipped around a mine: 3 x 3 chip places. Validation blocks that would leave fewer
    training chips than a batch are passed over, so less than val_fraction goes to validation."""
    raster = labelled_scene(tmp_path, size=128)
    options = dict(chip_size=64, stride=32, val_fraction=0.2, seed=0)
    greedy = build_chip_index([raster], **options)
    chips = build_chip_index([raster], **options, min_train_chips=4)
    train = [c for c in chips if c.split == "train"]
    val = [c for c in chips if c.split == "val"]
    assert sum(c.split == "train" for c in greedy) < 4 <= len(train) and val
    for t in train:
        assert all(abs(t.row - v.row) >= 64 or abs(t.col - v.col) >= 64 for v in val)
    assert build_chip_index([raster], **options, min_train_chips=9) == greedy  # impossible: as without


def test_split_shares_the_footprints_between_train_and_val(tmp_path):
    """Two mines on one scene: a block order that puts every footprint in validation (or none) is passed over for
    one that leaves footprints on both sides, so the student trains on them and validation can measure it."""
    raster = labelled_scene(tmp_path, size=256, boxes=((20, 60, 20, 60), (150, 200, 160, 210)))
    options = dict(chip_size=32, stride=16, block_chips=4)
    everything = build_chip_index([raster], **options, val_fraction=0)
    overlaps = _chip_overlaps(everything)
    shares = {seed: footprint_balance(everything, _split_by_blocks(everything, overlaps, 0.2, 64, seed, 1), 0.2)
              for seed in range(20)}
    seed = min(shares, key=shares.get)
    assert shares[seed] == 0  # the seed's own order gives one side no footprint at all
    chips = build_chip_index([raster], **options, val_fraction=0.2, seed=seed)
    assert footprint_balance(everything, chips, 0.2) >= BALANCED_SPLIT
    assert any(c.is_footprint for c in chips if c.split == "val")
    assert any(c.is_footprint for c in chips if c.split == "train")
    train = [c for c in chips if c.split == "train"]
    for t in train:
        assert all(abs(t.row - v.row) >= 32 or abs(t.col - v.col) >= 32 for v in chips if v.split == "val")
    balanced_seed = max(shares, key=shares.get)
    assert shares[balanced_seed] >= BALANCED_SPLIT  # a balanced order is kept as it is
    assert build_chip_index([raster], **options, val_fraction=0.2, seed=balanced_seed) == \
        _split_by_blocks(everything, overlaps, 0.2, 64, balanced_seed, 1)


def test_too_few_chips_for_a_split_is_refused(tmp_path, utm_raster):
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 20, 10, 20)]))
    raster = label_raster(utm_raster, polygons, model_bands=DEFAULT_MODEL_BANDS)
    assert len(build_chip_index([raster], 64, val_fraction=0)) == 1
    with pytest.raises(InputError, match="only 1 chips: too few for a spatial train/validation split; add rasters "
                                         "or lower --chip-size .*to export chips without validation, pass "
                                         "--val-fraction 0"):
        build_chip_index([raster], 64, val_fraction=0.2)
    for val_fraction in (1.0, -0.1):
        with pytest.raises(InputError, match=f"--val-fraction {val_fraction} is not a share of the chips"):
            build_chip_index([raster], 64, val_fraction=val_fraction)


def make_chips(footprint, background, hard):
    chips = [Chip(0, k, 0, 8, 0.3, 1.0, False) for k in range(footprint)]
    chips += [Chip(0, k, 1, 8, 0.0, 1.0, k < hard) for k in range(background)]
    return chips


def test_balanced_sampler_draws_the_footprint_share_and_favours_hard_negatives():
    chips = make_chips(10, 90, 10)
    sampler = BalancedChipSampler(chips, footprint_share=0.5, hard_negative_weight=3.0, num_samples=20000, seed=1)
    queries = list(sampler)
    assert [draw for _, draw in queries] == list(range(20000))
    drawn = np.array([index for index, _ in queries])
    footprint = np.array([c.is_footprint for c in chips])[drawn]
    hard = np.array([c.hard_negative for c in chips])[drawn]
    assert footprint.mean() == pytest.approx(0.5, abs=0.02)
    assert hard.sum() / 10 == pytest.approx(3.0 * (~footprint & ~hard).sum() / 80, rel=0.1)
    sampler.set_epoch(1)
    assert list(sampler) != queries
    sampler.set_epoch(0)
    assert list(sampler) == queries


def test_chip_budget_is_balanced_nested_and_seeded():
    chips = make_chips(40, 200, 20)
    small, large = select_chips(chips, 8, seed=5), select_chips(chips, 32, seed=5)
    assert len(small) == 8 and sum(c.is_footprint for c in small) == 4
    assert set(small) <= set(large)
    assert select_chips(chips, 8, seed=6) != small
    assert sum(c.is_footprint for c in select_chips(make_chips(2, 50, 0), 8)) == 2  # short kind topped up


# ---------------------------------------------------------------------------------------------- dataset

def test_dataset_items_and_augmentation_keep_image_and_mask_aligned(tmp_path):
    raster = labelled_scene(tmp_path, boxes=((10, 30, 5, 12),), bare_box=(10, 30, 5, 12))  # bare == footprint
    chips = [c for c in build_chip_index([raster], 32, 32, val_fraction=0) if c.is_footprint]
    plain = ChipDataset([raster], chips, [0.0] * 6, [1.0] * 6)[0]
    assert plain["image"].shape == (6, 32, 32) and plain["image"].dtype == torch.float32
    assert plain["mask"].shape == plain["valid"].shape == (1, 32, 32)
    np.testing.assert_allclose(plain["image"][:, 0, 0].numpy(), VEGETATION, atol=1e-6)
    dataset = ChipDataset([raster], chips, [0.0] * 6, [1.0] * 6, augment=Augment(gain_jitter=0.02, offset_jitter=0.005),
                          seed=7)
    seen = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        item = dataset[0]
        bright = item["image"][4] > 0.3  # SWIR1: bare (footprint) 0.45 vs vegetation 0.15
        assert torch.equal(bright, item["mask"][0].bool())
        seen.add(tuple(item["mask"][0].flatten().nonzero()[:3, 0].tolist()))
        assert torch.equal(dataset[0]["image"], item["image"])  # same seed, epoch, index -> same sample
    assert len(seen) > 1  # the flips/rotations did move the footprint
    assert not torch.equal(dataset[(0, 1)]["image"], dataset[(0, 2)]["image"])  # two draws, two augmentations


def test_dataset_normalises_zeroes_nodata_and_works_in_loader_workers(tmp_path):
    raster_path = write_raster(tmp_path / "s.tif", scene(nodata_box=(0, 4, 0, 4)), nodata=0, descriptions=BAND_NAMES)
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 20, 10, 20)]))
    raster = label_raster(raster_path, polygons, model_bands=DEFAULT_MODEL_BANDS)
    chips = build_chip_index([raster], 32, 32, val_fraction=0)
    mean, std = compute_band_stats([raster])
    np.testing.assert_allclose(mean, VEGETATION, atol=1e-4)
    assert std == [1e-3] * 6  # constant bands: the floor
    mean, std = [0.1] * 6, [0.2] * 6
    in_memory = ChipDataset([raster], chips, mean, std)
    from_disk = ChipDataset([raster], chips, mean, std, cache_bytes=0)
    item = from_disk[0]
    assert torch.equal(item["image"], in_memory[0]["image"])
    assert (item["image"][:, :4, :4] == 0).all() and (item["valid"][0, :4, :4] == 0).all()
    np.testing.assert_allclose(item["image"][:, 8, 8].numpy(), (np.array(VEGETATION) - 0.1) / 0.2, atol=1e-5)
    loader = torch.utils.data.DataLoader(from_disk, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert torch.equal(batch["image"][0], item["image"])


def test_build_datasets_from_cli_arguments(tmp_path):
    raster = write_raster(tmp_path / "s.tif", scene(128, bare_box=(40, 64, 96, 128)), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30), pixel_box(70, 100, 80, 110)])
    data = build_datasets([raster], polygons, model_bands=DEFAULT_MODEL_BANDS, chip_size=32, stride=16,
                          val_fraction=0.2, block_chips=2, seed=0, max_chips=10, batch_size=4)
    assert len(data.train) == 10 and len(data.val) > 0
    assert data.summary["train_chips"] == 10 and data.summary["polygon_count"] == 2
    assert len(data.norm_mean) == 6
    with pytest.raises(InputError, match=r"only \d+ training chips .* fewer than one batch of 64; lower --batch"):
        build_datasets([raster], polygons, model_bands=DEFAULT_MODEL_BANDS, chip_size=32, batch_size=64)
    none = write_polygons(tmp_path / "none.gpkg", [])  # an empty layer inside a labelled extent: all background
    extent = write_polygons(tmp_path / "e.gpkg", [pixel_box(0, 128, 0, 128)])
    background = build_datasets([raster], none, extent=extent, model_bands=DEFAULT_MODEL_BANDS, chip_size=32,
                                val_fraction=0, batch_size=4)
    assert len(background.train) == 16 and not any(c.is_footprint for c in background.train.chips)
    assert len(list(background.sampler)) == 16


def test_labels_that_cannot_score_a_model_are_warned_about(tmp_path):
    """Validation without a footprint, or no background anywhere: validation IoU can pick nothing."""
    raster = write_raster(tmp_path / "s.tif", scene(128), descriptions=BAND_NAMES)
    lines = []
    everything = write_polygons(tmp_path / "all.gpkg", [pixel_box(0, 128, 0, 128)])
    build_datasets([raster], everything, model_bands=DEFAULT_MODEL_BANDS, chip_size=32, val_fraction=0.2,
                   batch_size=4, log=lines.append)
    assert any(line.startswith("warning: the polygons cover every labelled pixel") for line in lines)
    lines.clear()
    corner = write_polygons(tmp_path / "corner.gpkg", [pixel_box(0, 8, 0, 8)])
    data = build_datasets([raster], corner, model_bands=DEFAULT_MODEL_BANDS, chip_size=32, val_fraction=0.2,
                          batch_size=4, log=lines.append)
    assert data.summary["val_footprint_chips"] == 0  # the one footprint chip trains
    assert any(line.startswith("warning: none of the") and "holds a footprint" in line for line in lines)
    assert not any("cover every labelled pixel" in line for line in lines)


# ---------------------------------------------------------------------------------------------- export

def test_export_chips_writes_georeferenced_pairs_and_an_index(tmp_path):
    raster = write_raster(tmp_path / "s.tif", scene(), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30)])
    out = tmp_path / "chips"
    result = export_chips([raster], polygons, out, chip_size=32, val_fraction=0)
    with open(result.index_path) as f:
        rows = list(csv.DictReader(f))
    assert result.train_count == len(rows) == 4
    first = next(r for r in rows if r["row"] == "0" and r["col"] == "0")
    assert float(first["positive_fraction"]) == pytest.approx(20 * 20 / 32**2)
    with rasterio.open(out / first["image"]) as image, rasterio.open(out / first["mask"]) as mask:
        assert image.count == 6 and image.descriptions[4] == "B11" and image.transform == mask.transform
        assert image.transform.c == X0 and image.transform.f == Y0
        assert int((mask.read(1) == 1).sum()) == 400
        # the radiometry the labels were made with travels with the chips: an engine reads it back
        assert (float(first["scale"]), float(first["offset"])) == (1e-4, 0.0)
        assert resolve_radiometry(image) == (Radiometry(1e-4, 0.0), "the raster's scale/offset metadata")
    with pytest.raises(OutputError, match="holds an earlier chip export; .*--overwrite"):
        export_chips([raster], polygons, out, chip_size=32)
    (out / "image" / (Path(first["image"]).name + ".aux.xml")).write_text("<PAMDataset/>")  # QGIS's statistics
    export_chips([raster], polygons, out, chip_size=16, val_fraction=0, overwrite=True)
    assert len(list((out / "mask").iterdir())) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips", "p.gpkg", "s.tif"]


@pytest.mark.parametrize("user_file", ["image/drone_0001.jpg", "index.csv", "notes.txt", "mask/sub/a.tif"])
def test_export_chips_replaces_only_an_earlier_export(tmp_path, user_file):
    """--overwrite deletes the old folder, so a folder that merely looks like an export (the user's own files in
    image/, an index.csv of other columns) is refused and left as it was."""
    raster = write_raster(tmp_path / "s.tif", scene(), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30)])
    out = tmp_path / "survey"
    if user_file != "index.csv":
        export_chips([raster], polygons, out, chip_size=32, val_fraction=0)
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_text("the user's")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(OutputError, match="holds files that are not a MineC2F chip export; choose a new or empty"):
        export_chips([raster], polygons, out, chip_size=16, overwrite=True)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / user_file).read_text() == "the user's"


def test_export_chips_refuses_inputs_inside_the_folder_and_a_file(tmp_path):
    (tmp_path / "chips").mkdir()
    raster = write_raster(tmp_path / "chips" / "s.tif", scene(), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30)])
    with pytest.raises(OutputError, match="input .*s.tif lies inside the output folder .*chips, which an export"):
        export_chips([raster], polygons, tmp_path / "chips", chip_size=32, overwrite=True)
    assert raster.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        export_chips([raster], polygons, tmp_path / "file", chip_size=32, overwrite=True)
    export_chips([raster], polygons, tmp_path / "empty", chip_size=32)
    (tmp_path / "empty2").mkdir()  # an existing empty folder is taken without --overwrite
    export_chips([raster], polygons, tmp_path / "empty2", chip_size=32)
    assert (tmp_path / "empty2" / "index.csv").exists()


def test_cancelled_export_leaves_nothing(tmp_path):
    raster = write_raster(tmp_path / "s.tif", scene(), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30)])
    calls = []
    with pytest.raises(Cancelled):
        export_chips([raster], polygons, tmp_path / "chips", chip_size=16,
                     is_canceled=lambda: len(calls) > 3, progress=calls.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpkg", "s.tif"]


# ---------------------------------------------------------------------------------------------- real data

def test_real_sentinel2_scene_with_reference_polygons():
    raster = REAL / "s2_l1c_brandenburg_10m_10band.tif"
    polygons = read_polygons(REAL / "s2_l1c_brandenburg_ref_polygons.gpkg")
    labelled = label_raster(raster, polygons, model_bands=DEFAULT_MODEL_BANDS)
    assert len(polygons.geometries) == 30
    assert labelled.polygon_count == 29  # polygon 18 lies outside the image
    assert labelled.band_index == [1, 2, 3, 7, 9, 10]
    with rasterio.open(raster) as src:
        inside = shapely.union_all(polygons.geometries).intersection(shapely.box(*src.bounds))
    assert (labelled.labels == 1).sum() * 100.0 == pytest.approx(inside.area, rel=0.03)
    assert labelled.bare[267:286, 229:257].mean() > 0.5  # the sand patch reads as bare ground
    chips = build_chip_index([labelled], 128, 128, val_fraction=0.2, seed=0)
    assert any(c.split == "val" for c in chips) and any(c.is_footprint for c in chips)


def test_export_chips_command(tmp_path, capsys):
    from model_core.cli import main

    raster = write_raster(tmp_path / "s.tif", scene(), descriptions=BAND_NAMES)
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(10, 30, 10, 30)])
    assert main(["export-chips", "--raster", str(raster), "--polygons", str(polygons), "--out-dir",
                 str(tmp_path / "chips"), "--chip-size", "16", "--val-fraction", "0.25", "--seed", "1"]) == 0
    assert "validation chips in" in capsys.readouterr().out
    assert len(list((tmp_path / "chips" / "image").iterdir())) > 0
    assert main(["export-chips", "--raster", str(raster), "--polygons", str(polygons), "--out-dir",
                 str(tmp_path / "given"), "--chip-size", "16", "--scale", "2e-4", "--offset", "-0.1"]) == 0
    with rasterio.open(next((tmp_path / "given" / "image").iterdir())) as chip:
        assert chip.scales == (2e-4,) * 6 and chip.offsets == (-0.1,) * 6
    for bad, message in ((["--stride", "0"], "stride (0) must be positive"),
                         (["--bands", "B02=1"], "--bands maps the bands of a model: give its --model too")):
        assert main(["export-chips", "--raster", str(raster), "--polygons", str(polygons), "--out-dir",
                     str(tmp_path / "bad"), *bad]) == 1
        assert message in capsys.readouterr().err
    far = write_polygons(tmp_path / "far.gpkg", [pixel_box(1000, 1010, 0, 10)])
    assert main(["export-chips", "--raster", str(raster), "--polygons", str(far), "--out-dir",
                 str(tmp_path / "other")]) == 1
    assert "error: s.tif: none of the 1 polygons overlap" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_raster_smaller_than_one_chip_is_told_what_can_work(tmp_path):
    polygons = read_polygons(write_polygons(tmp_path / "p.gpkg", [pixel_box(0, 1, 2, 8)]))
    narrow = label_raster(write_raster(tmp_path / "narrow.tif", scene(64)[:, :40, :], descriptions=BAND_NAMES),
                          polygons, model_bands=DEFAULT_MODEL_BANDS)
    with pytest.raises(InputError, match=r"narrow.tif \(64 x 40 px\) is smaller than one chip \(64 px\); lower "
                                         r"--chip-size to 32 px or less \(a multiple of 16\)"):
        build_chip_index([narrow], chip_size=64)
    strip = label_raster(write_raster(tmp_path / "strip.tif", scene(64)[:, :1, :], descriptions=BAND_NAMES),
                         polygons, model_bands=DEFAULT_MODEL_BANDS)
    with pytest.raises(InputError, match=r"strip.tif \(64 x 1 px\) .*; train on rasters at least 16 px on each side"):
        build_chip_index([strip], chip_size=64)
