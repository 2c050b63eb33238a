"""Synthetic scenes: deterministic, realistic enough to train on, with fine and coarse labels."""

import numpy as np
import pytest
import rasterio

from model_core.synthetic import BAND_NAMES, CLASSES, DARK_CLASSES, DomainShift, make_scene, write_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(256, seed=7, mines=2)


def reflectance(scene):
    return scene.image.astype(np.float32) / 10000.0


def test_deterministic_and_varied():
    a, b = make_scene(128, seed=1), make_scene(128, seed=1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.fine, b.fine)
    assert not np.array_equal(a.image, make_scene(128, seed=2).image)


def test_layout_and_types(scene):
    assert scene.image.shape == (12, 256, 256) and scene.image.dtype == np.uint16
    assert scene.band_names == BAND_NAMES and BAND_NAMES[8] == "B8A" and "B10" not in BAND_NAMES
    assert scene.fine.dtype == np.uint8 and set(np.unique(scene.fine)) <= {0, 1}
    assert scene.image.min() >= 1  # 0 is reserved for nodata


def test_fine_inside_coarse_and_coarse_larger(scene):
    fine, coarse = scene.fine.astype(bool), scene.coarse.astype(bool)
    assert fine.sum() > 200
    assert coarse.sum() > 1.3 * fine.sum()
    assert (fine & coarse).sum() / fine.sum() > 0.6


def test_spectra_are_plausible(scene):
    refl = reflectance(scene)
    red, nir, swir1 = refl[3], refl[7], refl[10]
    ndvi = (nir - red) / (nir + red)
    kinds = scene.kinds
    assert np.median(ndvi[kinds == CLASSES.index("forest")]) > 0.5
    assert np.median(nir[kinds == CLASSES.index("water")]) < 0.05
    assert np.median(swir1[scene.fine == 1]) > 0.2


def test_hard_negatives_are_mine_like_but_unlabelled():
    scene = make_scene(256, seed=11, mines=1, shift=DomainShift(landscape="arid"))
    bare = scene.kinds == CLASSES.index("natural_bare")
    assert bare.sum() > 1000 and not scene.fine[bare].any()
    swir1 = reflectance(scene)[10]
    assert abs(np.median(swir1[bare]) - np.median(swir1[scene.fine == 1])) < 0.1


def test_offset_and_domain_shift():
    plain = make_scene(128, seed=3, mines=1)
    offset = make_scene(128, seed=3, mines=1, l2a_offset=True)
    assert np.allclose(offset.image.astype(int) - plain.image.astype(int), 1000, atol=1)
    hazy = make_scene(128, seed=3, mines=1, shift=DomainShift(haze=0.05, gain=1.1))
    assert hazy.image[1].mean() > plain.image[1].mean() * 1.2
    assert np.array_equal(hazy.fine, plain.fine)


def test_spectral_jitter_varies_each_material_per_band():
    plain = make_scene(128, seed=3, mines=1)
    jittered = make_scene(128, seed=3, mines=1, shift=DomainShift(spectral_jitter=0.15))
    assert np.array_equal(jittered.fine, plain.fine)
    forest = plain.kinds == CLASSES.index("forest")
    ratio = np.median(reflectance(jittered)[:, forest], axis=1) / np.median(reflectance(plain)[:, forest], axis=1)
    assert ratio.std() > 0.03 and np.all(np.abs(ratio - 1) < 0.25)  # a gain would move every band alike


def test_dark_mines_are_coal_inside_the_footprint_and_bring_dark_negatives():
    dark = make_scene(256, seed=7, mines=2, shift=DomainShift(dark_mines=1.0))
    coal = np.isin(dark.kinds, [CLASSES.index("coal_pit"), CLASSES.index("coal_dump")])
    assert coal.sum() > 500 and dark.fine[coal].all()
    assert not (dark.kinds == CLASSES.index("pit")).any()
    pit_reflectance = reflectance(dark)[:, dark.kinds == CLASSES.index("coal_pit")].mean(axis=1)
    assert pit_reflectance.max() < 0.1  # dark in every band
    negatives = [make_scene(256, seed=s, mines=0, shift=DomainShift(dark_mines=0.5)).kinds for s in range(6)]
    for name in ("burn_scar", "turbid_water"):
        assert any((kinds == CLASSES.index(name)).any() for kinds in negatives)
    plain = make_scene(256, seed=7, mines=2)
    assert not np.isin(plain.kinds, [CLASSES.index(name) for name in DARK_CLASSES]).any()


def test_mine_size_scales_the_mines_and_leaves_the_land(scene):
    big = make_scene(256, seed=7, mines=2, shift=DomainShift(mine_size=2.0))
    pit = CLASSES.index("pit")
    assert 2.5 < big.fine.sum() / scene.fine.sum() < 5  # twice the radius: about four times the area
    assert (big.kinds == pit).sum() > 3 * (scene.kinds == pit).sum()
    land = (big.fine == 0) & (scene.fine == 0) & (big.coarse == 0) & (scene.coarse == 0)
    assert np.array_equal(big.kinds[land], scene.kinds[land])
    huge = make_scene(128, seed=7, mines=1, shift=DomainShift(mine_size=5.0))
    assert huge.fine.mean() < 0.95  # capped below half the scene, so that a centre can be drawn


def test_no_mines_means_empty_labels():
    scene = make_scene(128, seed=5, mines=0)
    assert scene.fine.sum() == 0 and scene.coarse.sum() == 0


def test_write_scene_is_georeferenced_and_polygons_match(tmp_path, scene):
    from osgeo import ogr

    paths = write_scene(scene, tmp_path, "s")
    with rasterio.open(paths["image"]) as src:
        assert src.count == 12 and src.crs.to_epsg() == 32633 and src.transform == scene.transform
        assert src.descriptions == BAND_NAMES and src.nodata == 0
        assert src.tags(12)["wavelength_nm"] == "2190"
        assert np.array_equal(src.read(), scene.image)
    with rasterio.open(paths["fine_mask"]) as src:
        assert np.array_equal(src.read(1), scene.fine)
    source = ogr.Open(str(paths["fine_polygons"]))  # keep the data source alive while its layer is read
    area = sum(feature.GetGeometryRef().GetArea() for feature in source.GetLayer(0))
    assert area == pytest.approx(scene.fine.sum() * 100.0)
