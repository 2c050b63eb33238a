"""python -m model_core segment: outputs, printed summary, one-line errors and exit codes."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from model_core import cli, defaults
from model_core.errors import Cancelled, InputError

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]


@pytest.fixture
def scene(make_raster):
    dn = np.random.default_rng(0).integers(300, 3000, size=(6, 48, 64)).astype(np.uint16)
    return make_raster("scene.tif", dn, descriptions=BANDS)


def segment(*args):
    return cli.main(["segment", *map(str, args)])


def test_segment_writes_outputs_and_prints_where(scene, tiny_bundle_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(scene, "--model", tiny_bundle_path, "--out-dir", out, "--device", "cpu", "--tile", "64",
                   "--overlap", "8", "--batch", "2", "--threshold", "0.5", "--min-area-ha", "0", "--quiet") == 0
    printed = capsys.readouterr().out
    assert "footprints," in printed and " ha in total" in printed
    for name in ("scene_prob.tif", "scene_mask.tif", "scene_footprints.gpkg"):
        assert (out / name).exists() and str(out / name) in printed


def test_quiet_keeps_warnings(scene, tiny_bundle, tmp_path, capsys):
    from dataclasses import replace

    from model_core.bundle import UNFINISHED, save_bundle

    unfinished = save_bundle(tmp_path / "halfway.safetensors", tiny_bundle.net,
                             replace(tiny_bundle.spec, metrics={"best_epoch": 1, UNFINISHED: True}))
    assert segment(scene, "--model", unfinished, "--out-dir", tmp_path / "out", "--tile", "64", "--quiet") == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: model tiny-test is the best epoch (1) of a training run that did not finish")
    assert err.count("\n") == 1  # nothing else: --quiet


def test_existing_outputs_need_overwrite(scene, tiny_bundle_path, tmp_path, capsys):
    args = (scene, "--model", tiny_bundle_path, "--out-dir", tmp_path, "--tile", "64", "--quiet")
    assert segment(*args) == 0
    capsys.readouterr()
    assert segment(*args) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: output ") and "already exists" in error and error.count("\n") == 1
    assert segment(*args, "--overwrite") == 0


def test_bad_input_is_one_line_and_exit_1(tiny_bundle_path, tmp_path, capsys):
    assert segment(tmp_path / "nope.tif", "--model", tiny_bundle_path, "--out-dir", tmp_path) == 1
    error = capsys.readouterr().err
    assert error == f"error: input raster not found: {tmp_path / 'nope.tif'}; check the path\n"


def test_a_damaged_raster_is_one_line_without_gdal_s_own_error_lines(make_raster, tiny_bundle_path, tmp_path):
    """GDAL prints 'ERROR 1: TIFFFillTile...' lines of its own; the command's stderr stays its one-line message."""
    dn = np.random.default_rng(1).integers(300, 3000, size=(6, 256, 256)).astype(np.uint16)
    whole = make_raster("whole.tif", dn, descriptions=["B02", "B03", "B04", "B08", "B11", "B12"], tiled=True,
                        blockxsize=256, blockysize=256, compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = subprocess.run([sys.executable, "-m", "model_core", "segment", str(cut), "--model", str(tiny_bundle_path),
                             "--out-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read cut.tif") and result.stderr.count("\n") == 1, result.stderr


def test_band_mapping_option_is_parsed(make_raster, tiny_bundle_path, tmp_path, capsys):
    dn = np.random.default_rng(1).integers(300, 3000, size=(6, 40, 40)).astype(np.uint16)
    unnamed = make_raster("unnamed.tif", dn)
    assert segment(unnamed, "--model", tiny_bundle_path, "--out-dir", tmp_path, "--tile", "64", "--quiet",
                   "--bands", "B02=1,B03=2,B04=3,B08=4,B11=5,B12=6") == 0


def test_cancel_exits_130(monkeypatch, scene, tmp_path, capsys):
    def cancelled(*args, **kwargs):
        raise Cancelled("segmentation was cancelled; no output was written")
    monkeypatch.setattr("model_core.pipeline.segment_scene", cancelled)
    assert segment(scene, "--out-dir", tmp_path) == 130
    assert "cancelled" in capsys.readouterr().err


def test_interrupted_training_says_what_is_kept_and_how_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("model_core.train.finetune_student", interrupted)
    out = tmp_path / "s.safetensors"
    args = ["finetune", "--teacher", "t.safetensors", "--raster", "r.tif", "--polygons", "p.gpkg", "--out", str(out)]
    assert cli.main(args) == 130
    assert "before the first epoch ended; nothing was written" in capsys.readouterr().err
    (tmp_path / "s.resume.safetensors").write_bytes(b"a checkpoint after an epoch")
    assert cli.main(args) == 130
    assert "no epoch has beaten the teacher yet, so no model was written, and the same command with --resume " \
           "continues" in capsys.readouterr().err
    out.write_bytes(b"the best epoch so far")
    assert cli.main(args) == 130
    assert "interrupted; the best model so far is at --out, and the same command with --resume continues the run" \
        in capsys.readouterr().err


def test_sigterm_is_handled_as_an_interrupt(monkeypatch, capsys, tmp_path):
    """kill or a scheduler's stop: the staged outputs are removed as on Ctrl+C, and the exit status is 130."""
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")
    monkeypatch.setattr("model_core.pipeline.segment_scene", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["segment", "in.tif", "--out-dir", str(tmp_path)]) == 130
    assert "interrupted; no output was written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_joint_takes_the_coarse_data_from_its_own_options(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("model_core.train.finetune_student", lambda *args, **kwargs: calls.append(kwargs) or 1 / 0)
    args = ["finetune", "--teacher", "t.safetensors", "--raster", "r.tif", "--polygons", "p.gpkg",
            "--out", "s.safetensors"]
    assert cli.main(args + ["--coarse-raster", "c.tif"]) == 1
    assert "--coarse-raster and --coarse-polygons go together, with --method joint only" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):
        cli.main(args + ["--method", "joint", "--coarse-raster", "c1.tif", "--coarse-raster", "c2.tif",
                         "--coarse-polygons", "c.gpkg"])
    assert calls[0]["coarse"] == (["c1.tif", "c2.tif"], "c.gpkg")


def test_module_entry_point_lists_commands():
    result = subprocess.run([sys.executable, "-m", "model_core", "--help"], capture_output=True, text=True,
                            check=True)
    assert "segment" in result.stdout


def test_the_parser_is_built_without_torch():
    """--help and a mistyped option answer at once: building the parser imports neither torch nor smp."""
    code = ("import json, sys; from model_core.cli import build_parser; build_parser(); "
            "print(json.dumps(list(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(result.stdout))
    assert "argparse" in modules and not modules & {"torch", "segmentation_models_pytorch", "rasterio"}


@pytest.mark.parametrize("command, run_defaults", [("train", defaults.TEACHER), ("finetune", defaults.STUDENT)])
def test_an_epoch_is_at_least_the_commands_minimum_unless_set(command, run_defaults):
    """A teacher's epoch: one pass over its chips, at least 20 steps; a student's (a few polygons): at least 100."""
    required = ["--raster", "r.tif", "--polygons", "p.gpkg", "--out", "o.safetensors"]
    required += ["--teacher", "t.safetensors"] if command == "finetune" else []
    config, _ = cli._training_call(cli.build_parser().parse_args([command, *required]))
    assert (config.steps_per_epoch, config.min_steps_per_epoch) == (None, run_defaults["min_steps_per_epoch"])
    assert config.epochs == run_defaults["epochs"]
    assert config.gain_jitter == run_defaults["gain_jitter"]
    _, options = cli._training_call(cli.build_parser().parse_args([command, *required, "--layer", "fine_labels",
                                                                   "--extent-layer", "area"]))
    assert (options["polygon_layer"], options["extent_layer"]) == ("fine_labels", "area")
    config, _ = cli._training_call(cli.build_parser().parse_args([command, *required, "--steps-per-epoch", "7",
                                                                  "--gain-jitter", "0.3"]))
    assert config.steps_per_epoch == 7 and config.gain_jitter == 0.3
    with pytest.raises(InputError, match="steps per epoch must be at least 1"):
        type(config)(steps_per_epoch=0).check()
    for chip_size in (0, 100):
        with pytest.raises(InputError, match=f"chip size {chip_size} must be a positive multiple of 16"):
            type(config)(chip_size=chip_size).check()
    assert config.val_fraction == defaults.VAL_FRACTION
    config, _ = cli._training_call(cli.build_parser().parse_args([command, *required, "--val-fraction", "0.3"]))
    assert config.val_fraction == 0.3
    for val_fraction in (0, 1, -0.1):
        with pytest.raises(InputError, match=f"--val-fraction {val_fraction}: training needs chips held out"):
            type(config)(val_fraction=val_fraction).check()


def test_landsat_level2_stack_with_its_thermal_band(make_raster, tiny_bundle_path, tmp_path, capsys):
    """A Landsat 9 Collection 2 Level-2 stack: SR_B1..SR_B7 at 2.75e-5 - 0.2 and ST_B10 at its own scale. The model
    reads six SR bands, so the thermal band's scale does not matter, and the log says how the DN were read."""
    import rasterio

    dn = np.random.default_rng(2).integers(8000, 20000, size=(8, 40, 40)).astype(np.uint16)
    stack = make_raster("lc09_l2sp.tif", dn, descriptions=[f"SR_B{i}" for i in range(1, 8)] + ["ST_B10"])
    with rasterio.open(stack, "r+") as dst:
        dst.scales, dst.offsets = [2.75e-5] * 7 + [0.00341802], [-0.2] * 7 + [149.0]
    assert segment(stack, "--model", tiny_bundle_path, "--out-dir", tmp_path / "out", "--tile", "64") == 0
    printed = capsys.readouterr()
    log = printed.out + printed.err
    assert "raster bands [2, 3, 4, 5, 6, 7]" in log, log
    assert "reflectance = DN * 2.75e-05 - 0.2 (the raster's scale/offset metadata)" in log, log


def test_exclude_polygons_in_another_crs(scene, tiny_bundle_path, tmp_path, capsys):
    """--exclude takes polygons in any CRS: a box in longitude/latitude over the scene's western half (UTM 33N,
    10 m pixels from x 500000) leaves those pixels nodata."""
    import rasterio
    import shapely
    import shapely.affinity
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    from model_core.vectorize import write_polygons_gpkg

    west = shapely.box(499000.0, 5799000.0, 500320.0, 5801000.0)  # columns 0-31 of 64
    lonlat = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", shapely.geometry.mapping(
        shapely.segmentize(west, 10.0))))
    mask_file = tmp_path / "water.gpkg"
    elsewhere = shapely.affinity.translate(lonlat, xoff=1.0)  # a lake a degree east: not counted
    write_polygons_gpkg(mask_file, [lonlat, elsewhere], CRS.from_epsg(4326).to_wkt(), {}, layer="water")
    out = tmp_path / "out"
    assert segment(scene, "--model", tiny_bundle_path, "--out-dir", out, "--tile", "64", "--exclude", mask_file) == 0
    assert "not segmenting inside the 1 polygon(s) of water.gpkg over the raster" in capsys.readouterr().err
    with rasterio.open(out / "scene_mask.tif") as src:
        mask = src.read(1)
    assert (mask[:, :31] == 255).all() and (mask[:, 33:] != 255).all()


def test_polygonize_and_evaluate_a_segmented_scene_at_another_threshold(scene, tiny_bundle_path, tmp_path, capsys):
    import shapely
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from model_core.vectorize import write_polygons_gpkg

    out, again = tmp_path / "out", tmp_path / "again"
    assert segment(scene, "--model", tiny_bundle_path, "--out-dir", out, "--tile", "64", "--quiet") == 0
    capsys.readouterr()
    assert cli.main(["polygonize", str(out / "scene_prob.tif"), "--out-dir", str(again), "--threshold", "0.45",
                     "--min-area-ha", "0"]) == 0
    printed = capsys.readouterr()
    assert "footprint where probability >= 0.45" in printed.err
    for name in ("scene_mask.tif", "scene_footprints.gpkg"):  # named after the scene, not after scene_prob
        assert str(again / name) in printed.out

    # reference: the whole scene is mine, so precision is 1 and recall the footprint share at each threshold
    x0, y1 = from_origin(500000.0, 5800000.0, 10.0, 10.0) * (0, 0)
    reference = tmp_path / "ref.gpkg"
    write_polygons_gpkg(reference, [shapely.box(x0, y1 - 480, x0 + 640, y1)], CRS.from_epsg(32633).to_wkt(),
                        {"id": [1]})
    scores = {}
    for prediction, extra in ((again / "scene_mask.tif", []), (out / "scene_prob.tif", ["--threshold", "0.45"]),
                              (out / "scene_prob.tif", [])):
        assert cli.main(["evaluate", str(prediction), "--reference", str(reference), *extra]) == 0
        line = capsys.readouterr().out.split()
        scores[(prediction.name, *extra)] = dict(zip(line[::2], map(float, line[1::2])))
    at_045 = scores[("scene_mask.tif",)]
    assert at_045 == scores[("scene_prob.tif", "--threshold", "0.45")] and at_045["precision"] == 1.0
    assert at_045["recall"] > scores[("scene_prob.tif",)]["recall"]  # 0.45 finds more than segment's 0.5

    assert cli.main(["evaluate", str(again / "scene_mask.tif"), "--reference", str(reference),
                     "--extent", str(tmp_path / "missing.gpkg")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.gpkg'} does not exist; check the path\n"
