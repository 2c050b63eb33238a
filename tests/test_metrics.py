"""Scores on hand-computable cases, empty inputs, and raster/polygon evaluation."""

import numpy as np
import pytest
import rasterio
import shapely

from model_core.errors import Cancelled, InputError
from model_core.metrics import (all_scores, boundary, boundary_f1, evaluate_mask_raster, iou_by_threshold,
                                segmentation_scores)
from model_core.vectorize import write_polygons_gpkg


def squares(shift):
    pred = np.zeros((20, 20), bool)
    ref = np.zeros((20, 20), bool)
    ref[5:15, 5:15] = True            # 100 px
    pred[5:15, 5 + shift:15 + shift] = True
    return pred, ref


def test_two_squares_with_known_overlap():
    pred, ref = squares(5)             # overlap 10 x 5 = 50 px
    scores = segmentation_scores(pred, ref)
    assert scores["iou"] == pytest.approx(50 / 150)
    assert scores["f1"] == pytest.approx(100 / 200)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)


def test_valid_mask_ignores_pixels():
    pred, ref = squares(5)
    valid = np.ones_like(pred)
    valid[:, 15:] = False              # hide the 50 false-positive pixels
    assert segmentation_scores(pred, ref, valid)["precision"] == pytest.approx(1.0)


def test_empty_conventions():
    empty = np.zeros((8, 8), bool)
    full = np.ones((8, 8), bool)
    assert segmentation_scores(empty, empty) == {"iou": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert segmentation_scores(empty, full)["iou"] == 0.0 and segmentation_scores(empty, full)["recall"] == 0.0
    square = squares(0)[1][:8, :8]
    assert boundary_f1(empty, empty) == 1.0 and boundary_f1(square, empty[:8, :8]) == 0.0


def test_boundary_f1_tolerance():
    pred, ref = squares(1)
    assert boundary(ref).sum() == 36
    assert boundary_f1(pred, ref, tolerance_px=1) == pytest.approx(1.0)
    assert boundary_f1(pred, ref, tolerance_px=0) < 0.8
    far, ref = squares(4)
    assert boundary_f1(far, ref, tolerance_px=2) < boundary_f1(pred, ref, tolerance_px=2)


def test_evaluate_against_raster_and_polygons(tmp_path, make_raster):
    from rasterio.transform import from_origin

    pred, ref = squares(5)
    pred_path = make_raster("pred.tif", pred.astype("uint8"), nodata=255)
    ref_path = make_raster("ref.tif", ref.astype("uint8"))
    from_raster = evaluate_mask_raster(pred_path, ref_path)
    assert from_raster["iou"] == pytest.approx(50 / 150)
    # the same reference square as a polygon, in geographic coordinates
    transform = from_origin(500000.0, 5800000.0, 10.0, 10.0)
    x0, y0 = transform * (5, 15)
    x1, y1 = transform * (15, 5)
    from rasterio.warp import transform_geom
    square = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326",
                                                   shapely.geometry.mapping(shapely.box(x0, y0, x1, y1))))
    gpkg = tmp_path / "ref.gpkg"
    write_polygons_gpkg(gpkg, [square], rasterio.crs.CRS.from_epsg(4326).to_wkt(), {"id": [1]})
    from_polygons = evaluate_mask_raster(pred_path, gpkg)
    assert from_polygons["iou"] == pytest.approx(50 / 150, abs=0.02)
    assert set(all_scores(pred, ref)) == {"iou", "f1", "precision", "recall", "boundary_f1"}


def test_evaluate_refuses_a_reference_raster_that_is_no_mask_of_this_grid(make_raster):
    """A 0/255 mask, an image or a mask in another CRS used to score 0 (or nonsense) without a word."""
    pred, ref = squares(5)
    pred_path = make_raster("pred.tif", pred.astype("uint8"), nodata=255)
    with pytest.raises(InputError, match=r"ref255.tif holds 255 where a footprint mask holds 1 \(footprint\) or 0; "
                                         r"give a reference mask of 0 and 1"):
        evaluate_mask_raster(pred_path, make_raster("ref255.tif", ref.astype("uint8") * 255))
    with pytest.raises(InputError, match="image.tif has 3 bands; give a one-band mask"):
        evaluate_mask_raster(pred_path, make_raster("image.tif", np.stack([ref.astype("uint8")] * 3)))
    with pytest.raises(InputError, match="wgs84.tif is not on the prediction's grid"):
        evaluate_mask_raster(pred_path, make_raster("wgs84.tif", ref.astype("uint8"), crs="EPSG:4326"))
    nodata_ref = make_raster("ref_nodata.tif", np.where(ref, 1, 255).astype("uint8"), nodata=255)
    scores = evaluate_mask_raster(pred_path, nodata_ref)  # only its footprint pixels are scored: no false alarm
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5)


def test_iou_by_threshold_reads_an_engine_probability_raster_and_ignores_its_nodata(tmp_path):
    from rasterio.transform import from_origin

    from model_core.rasters import encode_probability, mask_profile, probability_profile

    grid = {"width": 4, "height": 1, "crs": "EPSG:32633", "transform": from_origin(0, 0, 10, 10)}
    prob = np.array([[0.9, 0.6, 0.2, 0.9]], np.float32)
    valid = np.array([[True, True, True, False]])  # the last pixel is nodata: its 0.9 must not count
    with rasterio.open(tmp_path / "p.tif", "w", **probability_profile("uint8", **grid)) as dst:
        dst.write(encode_probability(prob, valid, "uint8"), 1)
    with rasterio.open(tmp_path / "r.tif", "w", **mask_profile(**grid)) as dst:
        dst.write(np.array([[1, 1, 0, 0]], np.uint8), 1)
    ious = iou_by_threshold(tmp_path / "p.tif", tmp_path / "r.tif", (0.1, 0.5, 0.8))
    assert ious == {0.1: pytest.approx(2 / 3), 0.5: 1.0, 0.8: 0.5}


def write_engine_output(path, values, content, **tags):
    """A one-band uint8 raster on the test grid tagged as MineC2F writes ``content``."""
    from rasterio.transform import from_origin

    from model_core.rasters import mask_profile, output_tags

    grid = {"width": values.shape[1], "height": values.shape[0], "crs": "EPSG:32633",
            "transform": from_origin(500000.0, 5800000.0, 10.0, 10.0)}
    with rasterio.open(path, "w", **mask_profile(**grid)) as dst:
        dst.write(values.astype(np.uint8), 1)
        dst.update_tags(**output_tags(content, **tags))
    return path


def polygon_file(path, pixel_boxes):
    """A GeoPackage of boxes given as (col0, row0, col1, row1) pixel edges of the test grid, in UTM 33N."""
    from rasterio.transform import from_origin

    transform = from_origin(500000.0, 5800000.0, 10.0, 10.0)
    boxes = []
    for col0, row0, col1, row1 in pixel_boxes:
        (x0, y0), (x1, y1) = transform * (col0, row1), transform * (col1, row0)
        boxes.append(shapely.box(x0, y0, x1, y1))
    write_polygons_gpkg(path, boxes, rasterio.crs.CRS.from_epsg(32633).to_wkt(), {"id": list(range(len(boxes)))})
    return path


def test_evaluate_thresholds_a_probability_raster_at_its_written_threshold_or_the_one_given(tmp_path):
    pred, _ = squares(5)  # rows 5-14, columns 10-19; the reference: rows and columns 5-14 (50 px shared)
    prob = np.where(pred, 230, 20)  # 0.91 inside the predicted square, 0.08 outside
    prob[0:3, 0:3] = 150  # 0.59: footprint only at a threshold below it
    prob_path = write_engine_output(tmp_path / "p.tif", prob, "footprint probability", threshold=0.9)
    reference = polygon_file(tmp_path / "ref.gpkg", [(5, 5, 15, 15)])
    assert evaluate_mask_raster(prob_path, reference)["iou"] == pytest.approx(50 / 150)
    assert evaluate_mask_raster(prob_path, reference, threshold=0.5)["iou"] == pytest.approx(50 / 159)
    mask_path = write_engine_output(tmp_path / "m.tif", pred, "footprint mask", threshold=0.9)
    assert evaluate_mask_raster(mask_path, reference)["iou"] == pytest.approx(50 / 150)
    with pytest.raises(InputError, match="a threshold applies to a probability raster, and m.tif is a footprint mask"):
        evaluate_mask_raster(mask_path, reference, threshold=0.5)


def test_evaluate_scores_only_inside_the_labelled_extent(tmp_path):
    pred, _ = squares(5)
    mask_path = write_engine_output(tmp_path / "m.tif", pred, "footprint mask")
    # the prediction: rows 5-14, columns 10-19; the reference only digitised columns 10-14 of it
    reference = polygon_file(tmp_path / "ref.gpkg", [(10, 5, 15, 15)])
    assert evaluate_mask_raster(mask_path, reference)["precision"] == pytest.approx(50 / 100)
    extent = polygon_file(tmp_path / "extent.gpkg", [(0, 0, 15, 20)])  # where the reference is complete
    inside = evaluate_mask_raster(mask_path, reference, extent=extent)
    assert (inside["iou"], inside["precision"], inside["recall"]) == (1.0, 1.0, 1.0)
    away = polygon_file(tmp_path / "away.gpkg", [(1000, 1000, 1010, 1010)])
    with pytest.raises(InputError, match="the labelled extent away.gpkg does not overlap the prediction"):
        evaluate_mask_raster(mask_path, reference, extent=away)
    with pytest.raises(InputError, match="boundary tolerance -1 px must be 0 or more"):
        evaluate_mask_raster(mask_path, reference, tolerance_px=-1)


def test_evaluate_refuses_reference_polygons_off_the_raster_unless_an_extent_says_where(tmp_path):
    """Footprints that all miss the raster mean the wrong layer, raster or CRS: scores of 0 would hide it. Inside a
    labelled extent, a reference without footprints there is an area without mines."""
    pred, _ = squares(5)
    mask_path = write_engine_output(tmp_path / "m.tif", pred, "footprint mask")
    away = polygon_file(tmp_path / "away.gpkg", [(1000, 1000, 1010, 1010), (2000, 0, 2010, 10)])
    with pytest.raises(InputError, match=r"none of the 2 reference polygons of away.gpkg overlap m.tif \(raster CRS "
                                         r"WGS 84 / UTM zone 33N \(EPSG:32633\), polygons CRS WGS 84 / UTM zone 33N"):
        evaluate_mask_raster(mask_path, away)
    extent = polygon_file(tmp_path / "extent.gpkg", [(0, 0, 20, 20)])
    scores = evaluate_mask_raster(mask_path, away, extent=extent)
    assert (scores["iou"], scores["precision"]) == (0.0, 0.0)  # every predicted pixel a false alarm
    empty = tmp_path / "empty.gpkg"
    write_polygons_gpkg(empty, [], rasterio.crs.CRS.from_epsg(32633).to_wkt(), {})
    assert evaluate_mask_raster(mask_path, empty, extent=extent) == scores


def test_evaluate_refuses_a_prediction_without_valid_pixels_or_that_is_no_mask(tmp_path, make_raster):
    reference = polygon_file(tmp_path / "ref.gpkg", [(5, 5, 15, 15)])
    mask_path = write_engine_output(tmp_path / "m.tif", np.full((20, 20), 255), "footprint mask")
    with pytest.raises(InputError, match="m.tif has no valid pixel"):
        evaluate_mask_raster(mask_path, reference)
    # a probability raster without MineC2F's tags, or a mask of 0 and 255 without nodata, is not scored as a mask
    untagged = make_raster("untagged.tif", np.array([[0, 1, 128, 254]] * 4, np.uint8))
    with pytest.raises(InputError, match="untagged.tif holds 128 where a footprint mask holds 1"):
        evaluate_mask_raster(untagged, polygon_file(tmp_path / "corner.gpkg", [(0, 0, 2, 2)]))


def test_evaluate_in_strips_scores_exactly_as_the_whole_arrays(tmp_path, make_raster):
    rng = np.random.default_rng(3)
    pred = np.zeros((61, 47), bool)
    ref = np.zeros((61, 47), bool)
    for mask in (pred, ref):  # rectangles whose edges cross the strips' cuts
        for _ in range(6):
            row, col = rng.integers(0, 55), rng.integers(0, 40)
            mask[row:row + rng.integers(2, 20), col:col + rng.integers(2, 15)] = True
    valid = np.ones_like(pred)
    valid[20:30, 5:25] = False
    pred_path = write_engine_output(tmp_path / "m.tif", np.where(valid, pred, 255), "footprint mask")
    ref_path = make_raster("ref.tif", ref.astype("uint8"))
    for tolerance in (0, 2):
        whole = all_scores(pred & valid, ref, valid, tolerance)  # nodata is no footprint in the file
        assert 0 < whole["boundary_f1"] < 1 and 0 < whole["iou"] < 1
        for rows in (1, 7, 64):
            assert evaluate_mask_raster(pred_path, ref_path, tolerance_px=tolerance, strip_rows=rows) == whole
    reported = []
    evaluate_mask_raster(pred_path, ref_path, strip_rows=20, progress=reported.append)
    assert reported == pytest.approx([100 * 20 / 61, 100 * 40 / 61, 100 * 60 / 61, 100.0])
    with pytest.raises(Cancelled, match="scoring was cancelled"):
        evaluate_mask_raster(pred_path, ref_path, strip_rows=20, is_canceled=lambda: True)


def test_evaluate_reads_the_named_layer_of_a_multi_layer_file_and_says_which(tmp_path, capsys):
    from osgeo import ogr

    from model_core.cli import main

    pred, _ = squares(5)
    mask_path = write_engine_output(tmp_path / "m.tif", pred, "footprint mask")
    both = polygon_file(tmp_path / "both.gpkg", [(0, 0, 2, 2)])  # layer "footprints": a wrong corner
    fine = polygon_file(tmp_path / "fine.gpkg", [(10, 5, 20, 15)])  # the predicted square exactly
    dataset, source = ogr.Open(str(both), update=1), ogr.Open(str(fine))  # the source kept open while copied
    dataset.CopyLayer(source.GetLayer(0), "fine_labels")
    dataset = source = None
    assert main(["evaluate", str(mask_path), "--reference", str(both)]) == 0
    captured = capsys.readouterr()
    assert "both.gpkg holds 2 layers (footprints, fine_labels); reading the first, 'footprints'" in captured.err
    assert "iou 0.000" in captured.out
    assert main(["evaluate", str(mask_path), "--reference", str(both), "--layer", "fine_labels"]) == 0
    assert "iou 1.000" in capsys.readouterr().out

