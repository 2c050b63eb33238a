"""Scores on hand-computable cases, empty inputs, and raster/polygon evaluation."""

import numpy as np
import pytest
import rasterio
import shapely

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
