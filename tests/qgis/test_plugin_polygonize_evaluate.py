"""minec2f:polygonize and minec2f:evaluate through processing.run, on the outputs of minec2f:segment for the scene
whose footprints are known."""

import pytest
from known_scene import BLOCK_AREAS_HA, BLOCKS, PIXEL_M
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry,
                       QgsProcessingException, QgsProject, QgsRectangle, QgsVectorLayer)

import processing

TEMP = "TEMPORARY_OUTPUT"
ORIGIN_X, ORIGIN_Y = 500000.0, 5800000.0  # the known scene's top-left corner, EPSG:32633


@pytest.fixture
def segmented(plugin, known_scene, constant_bundle_path):
    """The segment outputs of the known scene (probability 0.996 in both blocks, nodata elsewhere)."""
    return processing.run("minec2f:segment", {"INPUT": str(known_scene), "MODEL": str(constant_bundle_path),
                                              "OUTPUT_PROBABILITY": TEMP, "OUTPUT_MASK": TEMP,
                                              "OUTPUT_FOOTPRINTS": TEMP})


def block_layer(name, blocks, crs="EPSG:4326"):
    """A memory polygon layer with the outlines of ``blocks`` (row slice, column slice), in ``crs``."""
    layer = QgsVectorLayer(f"Polygon?crs={crs}", name, "memory")
    to_crs = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"), QgsCoordinateReferenceSystem(crs),
                                    QgsProject.instance())
    features = []
    for rows, cols in blocks:
        rectangle = QgsRectangle(ORIGIN_X + cols.start * PIXEL_M, ORIGIN_Y - rows.stop * PIXEL_M,
                                 ORIGIN_X + cols.stop * PIXEL_M, ORIGIN_Y - rows.start * PIXEL_M)
        geometry = QgsGeometry.fromRect(rectangle)
        geometry.transform(to_crs)
        feature = QgsFeature()
        feature.setGeometry(geometry)
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_polygonize_rethresholds_and_filters_without_the_model(segmented, tmp_path):
    prob = segmented["OUTPUT_PROBABILITY"]
    out = tmp_path / "out"
    same = processing.run("minec2f:polygonize", {"INPUT": prob, "OUTPUT_MASK": str(out / "mask.tif"),
                                                 "OUTPUT_FOOTPRINTS": str(out / "footprints.gpkg")})
    assert same["FOOTPRINT_COUNT"] == 2
    assert same["TOTAL_AREA_HA"] == pytest.approx(sum(BLOCK_AREAS_HA), rel=0.01)
    assert sorted(p.name for p in out.iterdir()) == ["footprints.gpkg", "mask.tif"]  # no temporaries left

    big_only = processing.run("minec2f:polygonize", {"INPUT": prob, "MIN_AREA_HA": 5.0, "OUTPUT_FOOTPRINTS": TEMP})
    assert (big_only["FOOTPRINT_COUNT"], big_only["TOTAL_AREA_HA"]) == (1, pytest.approx(BLOCK_AREAS_HA[0], rel=0.01))
    none = processing.run("minec2f:polygonize", {"INPUT": prob, "THRESHOLD": 0.999, "OUTPUT_FOOTPRINTS": TEMP})
    assert (none["FOOTPRINT_COUNT"], none["TOTAL_AREA_HA"]) == (0, 0.0)


def test_polygonize_refuses_a_mask_and_a_multispectral_raster(segmented, known_scene, tmp_path):
    for given, message in ((segmented["OUTPUT_MASK"], "is a footprint mask; give the probability raster"),
                           (str(known_scene), "known_scene.tif is not a footprint probability raster")):
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("minec2f:polygonize", {"INPUT": given,
                                                  "OUTPUT_FOOTPRINTS": str(tmp_path / "out" / "footprints.gpkg")})
    assert not (tmp_path / "out").exists()


def test_evaluate_scores_against_reference_polygons_in_another_crs(segmented):
    both = processing.run("minec2f:evaluate", {"PREDICTION": segmented["OUTPUT_MASK"],
                                               "REFERENCE": block_layer("truth", BLOCKS), "OUTPUT": TEMP})
    for score in ("IOU", "F1", "PRECISION", "RECALL", "BOUNDARY_F1"):
        assert both[score] == pytest.approx(1.0, abs=0.02)
    table = both["OUTPUT"]
    table = table if isinstance(table, QgsVectorLayer) else QgsVectorLayer(table, "scores", "ogr")
    rows = list(table.getFeatures())
    assert len(rows) == 1 and rows[0]["reference"] == "truth" and rows[0]["iou"] == pytest.approx(both["IOU"])

    # only the big block digitised: the small one is a false alarm, unless scored inside the big block's extent
    big = block_layer("big block", BLOCKS[:1])
    partial = processing.run("minec2f:evaluate", {"PREDICTION": segmented["OUTPUT_PROBABILITY"], "REFERENCE": big})
    assert partial["IOU"] == pytest.approx(BLOCK_AREAS_HA[0] / sum(BLOCK_AREAS_HA), abs=0.02)
    inside = processing.run("minec2f:evaluate", {"PREDICTION": segmented["OUTPUT_MASK"], "REFERENCE": big,
                                                 "EXTENT": block_layer("extent", BLOCKS[:1], "EPSG:32633")})
    assert inside["IOU"] == pytest.approx(1.0, abs=0.02)


def test_evaluate_names_the_parameter_of_a_threshold_given_for_a_mask(segmented):
    with pytest.raises(QgsProcessingException, match="a threshold applies to a probability raster, and .* is a "
                                                     "footprint mask"):
        processing.run("minec2f:evaluate", {"PREDICTION": segmented["OUTPUT_MASK"], "THRESHOLD": 0.5,
                                            "REFERENCE": block_layer("truth", BLOCKS)})
