"""segment_scene: the whole run, its outputs, and every way bad input is refused without leaving files."""

import errno
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from osgeo import ogr
from rasterio.transform import Affine, from_origin

from model_core.bundle import UNFINISHED, load_bundle, save_bundle
from model_core.errors import BandMismatchError, BundleError, Cancelled, InputError, OutputError
from model_core.paths import DEFAULT_MODEL
from model_core.pipeline import output_paths, segment_scene
from model_core.rasters import UINT8_NODATA, decode_probability, read_output_tags
from model_core.rethreshold import polygonize_outputs, polygonize_probability

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


def scene_dn(height=96, width=96, seed=0):
    """Six-band L2A-like reflectance x 10000 with a bright bare square (a pit-like patch) in the middle."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(300, 1500, size=(len(BANDS), height, width)).astype(np.uint16)
    dn[:, height // 4: height // 2, width // 4: width // 2] += 2500
    return dn


@pytest.fixture
def scene(make_raster):
    return make_raster("scene.tif", scene_dn(), descriptions=BANDS)


@pytest.fixture
def outputs(tmp_path):
    return output_paths("scene.tif", tmp_path / "out")


def run(scene, bundle, outputs, **kwargs):
    return segment_scene(scene, bundle, *outputs, device="cpu", tile=64, overlap=16, **kwargs)


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("south_up", [False, True])
def test_outputs_on_the_input_grid_and_areas_match_the_mask(scene, tiny_bundle_path, outputs, make_raster, south_up):
    if south_up:  # rows run south to north (positive pixel height), as some exports store them
        scene = make_raster("scene.tif", scene_dn()[:, ::-1], descriptions=BANDS,
                            transform=Affine(10.0, 0.0, 500000.0, 0.0, 10.0, 5800000.0 - 960.0))
    result = run(scene, tiny_bundle_path, outputs, threshold=0.5, min_area_ha=0.0)
    assert [result.prob_path, result.mask_path, result.footprints_path] == list(outputs)
    assert files_in(outputs[0].parent) == sorted(p.name for p in outputs)  # no temporaries left
    with rasterio.open(scene) as src, rasterio.open(outputs[0]) as prob, rasterio.open(outputs[1]) as mask:
        for out in (prob, mask):
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        mask_pixels = int((mask.read(1) == 1).sum())
    dataset = ogr.Open(str(outputs[2]))
    layer = dataset.GetLayerByName("footprints")
    assert layer.GetFeatureCount() == result.footprint_count
    areas = [f.GetField("area_ha") for f in layer]
    assert sum(areas) == pytest.approx(result.total_area_ha, abs=1e-3)
    xmin, xmax, ymin, ymax = layer.GetExtent()
    assert 500000.0 <= xmin < xmax <= 500960.0 and 5799040.0 <= ymin < ymax <= 5800000.0
    # 10 m pixels = 0.01 ha each (UTM scale error ~0.1 %); one-pixel simplification moves outlines a little
    assert result.total_area_ha == pytest.approx(mask_pixels * 0.01, rel=0.05, abs=0.05)
    assert result.device_name and result.radiometry_reason


def test_bounds_segment_only_the_extent_on_the_input_pixel_grid(scene, tiny_bundle_path, outputs):
    # pixels 10.5..40.2 in x and 20.7..50 in y (origin 500000, 5800000, 10 m) snap outward to cols 10..40, rows 20..49
    bounds = (500105.0, 5800000.0 - 500.0, 500402.0, 5800000.0 - 207.0)
    run(scene, tiny_bundle_path, outputs, bounds=bounds)
    with rasterio.open(outputs[0]) as prob:
        assert prob.shape == (30, 31)
        assert prob.transform == from_origin(500100.0, 5800000.0 - 200.0, 10.0, 10.0)


def test_geographic_crs_raster_works(make_raster, tiny_bundle_path, outputs):
    scene = make_raster("geo.tif", scene_dn(), descriptions=BANDS, crs="EPSG:4326",
                        transform=from_origin(12.5, 52.5, 1e-4, 1e-4))
    result = run(scene, tiny_bundle_path, outputs, min_area_ha=0.0)
    with rasterio.open(outputs[1]) as mask:
        footprint_pixels = int((mask.read(1) == 1).sum())
    pixel_ha = 1e-4 * 111_320 * np.cos(np.radians(52.5)) * 1e-4 * 111_250 / 1e4  # ~6.8 m x 11.1 m
    assert result.total_area_ha == pytest.approx(footprint_pixels * pixel_ha, rel=0.05, abs=0.05)


def test_nodata_pixels_are_never_footprints(make_raster, tiny_bundle_path, outputs):
    dn = scene_dn()
    dn[:, 20:60, 20:60] = 0
    scene = make_raster("holey.tif", dn, descriptions=BANDS, nodata=0)
    run(scene, tiny_bundle_path, outputs, threshold=0.01)  # nearly everything with data becomes footprint
    with rasterio.open(outputs[1]) as mask, rasterio.open(outputs[0]) as prob:
        assert (mask.read(1)[20:60, 20:60] == UINT8_NODATA).all()
        assert (prob.read(1)[20:60, 20:60] == UINT8_NODATA).all()
    layer_ds = ogr.Open(str(outputs[2]))
    layer = layer_ds.GetLayerByName("footprints")
    hole = ogr.CreateGeometryFromWkt("POLYGON ((500210 5799790, 500590 5799790, 500590 5799410, 500210 5799410, "
                                     "500210 5799790))")
    assert layer.GetFeatureCount() > 0
    assert all(f.GetGeometryRef().Intersection(hole).GetArea() < 1.0 for f in layer)


def test_cancel_leaves_nothing_behind(scene, tiny_bundle_path, outputs):
    calls = []
    with pytest.raises(Cancelled, match="cancelled"):
        run(scene, tiny_bundle_path, outputs, batch=1, progress=calls.append, is_canceled=lambda: len(calls) >= 2)
    assert not outputs[0].parent.exists()  # not even the output folder it created


def test_existing_outputs_are_kept_unless_overwrite(scene, tiny_bundle_path, outputs):
    outputs[0].parent.mkdir()
    outputs[2].write_text("precious")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        run(scene, tiny_bundle_path, outputs)
    assert outputs[2].read_text() == "precious" and files_in(outputs[0].parent) == [outputs[2].name]
    run(scene, tiny_bundle_path, outputs, overwrite=True)
    assert ogr.Open(str(outputs[2])) is not None

    with rasterio.open(outputs[1]) as src:  # as QGIS leaves it: statistics of the mask in a sidecar
        src.statistics(1, approx=False)  # writes mask.tif.aux.xml
    assert (outputs[1].parent / (outputs[1].name + ".aux.xml")).exists()
    run(scene, tiny_bundle_path, outputs, threshold=0.01, overwrite=True)
    with rasterio.open(outputs[1]) as src:  # the old statistics are not read as the new mask's
        assert not src.tags(1) or "STATISTICS_MEAN" not in src.tags(1)
    assert sorted(files_in(outputs[0].parent)) == sorted(p.name for p in outputs)


def test_unwritable_output_folder_is_refused_before_work(scene, tiny_bundle_path, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not_a_folder is a file, not a folder; choose another output folder"):
        run(scene, tiny_bundle_path, output_paths(scene, blocker / "out"))


def test_folder_without_write_permission_is_refused_naming_the_fix(scene, tiny_bundle_path, tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("model_core.staging.tempfile.mkstemp", denied)  # root may write anywhere: simulate it
    with pytest.raises(OutputError, match="cannot write to folder .*out: Permission denied; choose a folder you can "
                                          "write to"):
        run(scene, tiny_bundle_path, output_paths(scene, tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # the output folder it made is removed again


def test_output_may_not_replace_the_input(scene, tiny_bundle_path, tmp_path):
    prob, mask, footprints = output_paths(scene, tmp_path / "out")
    with pytest.raises(OutputError, match="is the input raster"):
        run(scene, tiny_bundle_path, (scene, mask, footprints), overwrite=True)


def test_missing_input(tiny_bundle_path, outputs, tmp_path):
    with pytest.raises(InputError, match="input raster not found: .*missing.tif"):
        run(tmp_path / "missing.tif", tiny_bundle_path, outputs)


def test_not_a_raster(tiny_bundle_path, outputs, tmp_path):
    fake = tmp_path / "notes.tif"
    fake.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.tif is not a raster GDAL can read"):
        run(fake, tiny_bundle_path, outputs)
    assert not outputs[0].parent.exists()  # not even the output folder it created


def test_a_virtual_raster_missing_a_file_is_named_not_a_traceback(make_raster, tiny_bundle_path, outputs, tmp_path):
    """The first read of the data (sampling it for the reflectance scale) fails when a VRT's band file is gone."""
    from osgeo import gdal

    files = [str(make_raster(f"{name}.tif", scene_dn()[k:k + 1], descriptions=[name])) for k, name in enumerate(BANDS)]
    vrt = tmp_path / "stack.vrt"
    gdal.BuildVRT(str(vrt), files, separate=True).FlushCache()
    Path(files[-1]).unlink()
    with pytest.raises(InputError, match=r"cannot read stack.vrt \(sampling its values for the reflectance scale\): "
                                         r".*B12.tif.*: copy or download it again"):
        run(vrt, tiny_bundle_path, outputs, band_mapping={name: k for k, name in enumerate(BANDS, 1)})
    assert not outputs[0].parent.exists()


def test_too_few_bands(make_raster, tiny_bundle_path, outputs):
    single = make_raster("single.tif", scene_dn()[:1])
    with pytest.raises(BandMismatchError, match="B03"):
        run(single, tiny_bundle_path, outputs)


def test_band_mismatch_names_missing_bands_and_the_mapping_fix(make_raster, tiny_bundle_path, outputs):
    wrong = make_raster("wrong.tif", scene_dn(), descriptions=["B01", "B02", "B03", "B04", "B05", "B06"])
    with pytest.raises(BandMismatchError, match=r"B08.*(--bands|mapping)"):
        run(wrong, tiny_bundle_path, outputs)
    run(wrong, tiny_bundle_path, outputs,
        band_mapping={"B02": 2, "B03": 3, "B04": 4, "B08": 5, "B11": 6, "B12": 1})


def test_all_nodata_raster(make_raster, tiny_bundle_path, outputs):
    empty = make_raster("empty.tif", np.zeros((6, 40, 40), np.uint16), descriptions=BANDS, nodata=0)
    with pytest.raises(InputError, match="every pixel .* is nodata"):
        run(empty, tiny_bundle_path, outputs)
    assert not outputs[0].parent.exists()  # not even the output folder it created


@pytest.mark.parametrize("bounds,message", [
    ((600000.0, 5700000.0, 600100.0, 5700100.0), "does not overlap the raster"),
    ((500100.0, 5799500.0, 500100.0, 5799600.0), "is empty"),
])
def test_zero_size_window(scene, tiny_bundle_path, outputs, bounds, message):
    with pytest.raises(InputError, match=message):
        run(scene, tiny_bundle_path, outputs, bounds=bounds)


def test_raster_without_crs(make_raster, tiny_bundle_path, outputs):
    bare = make_raster("bare.tif", scene_dn(), descriptions=BANDS, crs=None)
    with pytest.raises(InputError, match="no coordinate reference system.*Raster > Projections > Assign Projection"):
        run(bare, tiny_bundle_path, outputs)


def test_raster_with_unknown_crs(make_raster, tiny_bundle_path, outputs):
    local = make_raster("local.tif", scene_dn(), descriptions=BANDS, crs='LOCAL_CS["unknown",UNIT["metre",1]]')
    with pytest.raises(InputError, match="CRS is unknown or cannot be converted.*Assign Projection"):
        run(local, tiny_bundle_path, outputs)


def test_corrupt_bundle(scene, tiny_bundle_path, outputs, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_bundle_path.read_bytes()[:500])
    with pytest.raises(BundleError, match="truncated.safetensors is not a readable model bundle .*get a fresh copy"):
        run(scene, truncated, outputs)
    assert not outputs[0].parent.exists()  # not even the output folder it created


@pytest.mark.parametrize("kwargs,message", [
    ({"threshold": 1.5}, "threshold 1.5 must be between 0 and 1"),
    ({"min_area_ha": float("nan")}, "minimum area nan ha must be a number, 0 or more"),
    ({"min_area_ha": float("inf")}, "minimum area inf ha must be a number, 0 or more"),
    ({"prob_format": "int16"}, "unknown probability format"),
])
def test_bad_parameters(scene, tiny_bundle_path, outputs, kwargs, message):
    with pytest.raises(InputError, match=message):
        run(scene, tiny_bundle_path, outputs, **kwargs)


@pytest.mark.parametrize("tile,overlap,message", [
    (0, None, "tile size 0 is too small; give --tile 32 or more"),
    (64, 40, "overlap 40 must be between 0 and half the tile size \\(32\\); change --overlap or --tile"),
])
def test_bad_tiling_names_the_option_to_change(scene, tiny_bundle_path, outputs, tile, overlap, message):
    with pytest.raises(InputError, match=message):
        segment_scene(scene, tiny_bundle_path, *outputs, device="cpu", tile=tile, overlap=overlap)


def test_a_smaller_tile_alone_gets_an_overlap_that_fits_it(scene, outputs):
    lines = []
    assert load_bundle(DEFAULT_MODEL).spec.overlap > 64 // 2  # the bundled model's overlap does not fit 64 px tiles
    segment_scene(scene, DEFAULT_MODEL, *outputs, device="cpu", tile=64, log=lines.append)
    assert any("tile 64, overlap 16," in line for line in lines), lines


def test_a_model_from_an_unfinished_training_run_is_named_as_such(scene, tiny_bundle, outputs, tmp_path):
    """A cancelled or interrupted training leaves its best epoch so far: usable, but not what the run would give."""
    lines = []
    segment_scene(scene, tiny_bundle, *outputs, device="cpu", log=lines.append)
    assert not any(line.startswith("warning:") for line in lines)
    spec = replace(tiny_bundle.spec, metrics={"best_epoch": 2, UNFINISHED: True})
    unfinished = save_bundle(tmp_path / "unfinished.safetensors", tiny_bundle.net, spec)
    segment_scene(scene, unfinished, *outputs, device="cpu", overwrite=True, log=lines.append)
    assert "warning: model tiny-test is the best epoch (2) of a training run that did not finish; finish it with " \
           "--resume while its .resume.safetensors checkpoint remains (or train it again) before relying on it" in lines


def read_band(path):
    with rasterio.open(path) as src:
        return src.read(1)


def test_outputs_record_what_they_hold_and_how_they_were_made(scene, tiny_bundle_path, outputs):
    run(scene, tiny_bundle_path, outputs, threshold=0.4, min_area_ha=0.3)
    expected = {"model": "tiny-test", "threshold": "0.4", "min_area_ha": "0.3", "source": "scene.tif"}
    for path, content in ((outputs[0], "footprint probability"), (outputs[1], "footprint mask")):
        with rasterio.open(path) as src:
            assert read_output_tags(src) == {"content": content, **expected}


def test_polygonize_rethresholds_the_probability_raster_without_the_model(scene, tiny_bundle_path, outputs, tmp_path):
    segmented = run(scene, tiny_bundle_path, outputs, threshold=0.5, min_area_ha=0.0)
    prob, valid = decode_probability(read_band(outputs[0]))
    again = polygonize_probability(outputs[0], *polygonize_outputs(outputs[0], tmp_path / "same"))
    assert (again.threshold, again.min_area_ha) == (0.5, 0.0)  # as segment wrote them
    assert [p.name for p in (again.mask_path, again.footprints_path)] == ["scene_mask.tif", "scene_footprints.gpkg"]
    mask = read_band(again.mask_path)
    np.testing.assert_array_equal(mask, np.where(valid, prob >= 0.5, UINT8_NODATA))
    # segment thresholded the probabilities before they were stored in steps of 1/254
    differs = mask != read_band(outputs[1])
    assert (np.abs(prob[differs] - 0.5) <= 0.5 / 254 + 1e-6).all()
    assert abs(again.total_area_ha - segmented.total_area_ha) <= 0.01 * differs.sum() + 1e-6

    lower = polygonize_probability(outputs[0], *polygonize_outputs(outputs[0], tmp_path / "lower"), threshold=0.3,
                                   min_area_ha=0.0)
    lower_mask = read_band(lower.mask_path)
    assert ((lower_mask == 1) >= (mask == 1)).all() and (lower_mask == 1).sum() > (mask == 1).sum()
    with rasterio.open(lower.mask_path) as src, rasterio.open(scene) as source:
        assert read_output_tags(src)["threshold"] == "0.3"
        assert (src.crs, src.transform, src.shape) == (source.crs, source.transform, source.shape)
    bigger = polygonize_probability(outputs[0], *polygonize_outputs(outputs[0], tmp_path / "bigger"),
                                    threshold=0.3, min_area_ha=1000.0)
    assert (bigger.footprint_count, bigger.total_area_ha) == (0, 0.0)


def test_polygonize_refuses_other_rasters_and_keeps_existing_outputs(scene, tiny_bundle_path, outputs, tmp_path):
    run(scene, tiny_bundle_path, outputs)
    targets = polygonize_outputs(outputs[0], tmp_path / "again")
    with pytest.raises(InputError, match="scene_mask.tif is a footprint mask; give the probability raster"):
        polygonize_probability(outputs[1], *targets)
    with pytest.raises(InputError, match="scene.tif is not a footprint probability raster written by MineC2F"):
        polygonize_probability(scene, *targets)
    with pytest.raises(InputError, match="threshold 1.5 must be between 0 and 1"):
        polygonize_probability(outputs[0], *targets, threshold=1.5)
    assert files_in(tmp_path / "again") == []
    with pytest.raises(OutputError, match="scene_mask.tif already exists"):
        polygonize_probability(outputs[0], *polygonize_outputs(outputs[0], outputs[0].parent))
    assert files_in(outputs[0].parent) == sorted(p.name for p in outputs)


def test_polygonize_cancel_leaves_nothing_behind(scene, tiny_bundle_path, outputs, tmp_path):
    run(scene, tiny_bundle_path, outputs)
    with pytest.raises(Cancelled):
        polygonize_probability(outputs[0], *polygonize_outputs(outputs[0], tmp_path / "cancelled"),
                               is_canceled=lambda: True)
    assert files_in(tmp_path / "cancelled") == []


def test_polygonize_and_evaluate_run_without_torch(scene, tiny_bundle_path, outputs, tmp_path):
    """Thresholding a probability raster again and scoring it need no model: the commands never import torch
    (seconds and hundreds of MB)."""
    run(scene, tiny_bundle_path, outputs)
    code = ("import json, sys; from model_core.cli import main; "
            f"main(['polygonize', {str(outputs[0])!r}, '--out-dir', {str(tmp_path / 'again')!r}]); "
            f"main(['evaluate', {str(outputs[0])!r}, '--reference', {str(outputs[2])!r}]); "
            "print(json.dumps(list(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert files_in(tmp_path / "again") == ["scene_footprints.gpkg", "scene_mask.tif"]
    assert {"model_core.rethreshold", "model_core.metrics", "rasterio"} <= modules and "torch" not in modules
