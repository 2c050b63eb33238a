"""minec2f:segment through processing.run: outputs, counts and areas on a scene with known footprints, model
defaults, extent, cancel, bad inputs, and use inside a Processing model."""

import numpy as np
import pytest
import rasterio
from known_scene import BLOCK_AREAS_HA, BLOCKS, MODEL_BANDS
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry,
                       QgsProcessingException,
                       QgsProcessingFeedback, QgsProject, QgsRasterDataProvider, QgsRasterLayer, QgsRectangle,
                       QgsVectorLayer)

import processing

TEMP = "TEMPORARY_OUTPUT"


def run_segment(**parameters):
    defaults = {"OUTPUT_PROBABILITY": TEMP, "OUTPUT_MASK": TEMP, "OUTPUT_FOOTPRINTS": TEMP}
    return processing.run("minec2f:segment", {**defaults, **parameters})


def footprint_areas(path):
    layer = QgsVectorLayer(f"{path}|layername=footprints", "footprints", "ogr")
    assert layer.isValid()
    return sorted(feature["area_ha"] for feature in layer.getFeatures())


def test_segment_writes_known_footprints_with_model_defaults(plugin, known_scene, constant_bundle_path):
    results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path))

    assert results["FOOTPRINT_COUNT"] == 2
    assert results["TOTAL_AREA_HA"] == pytest.approx(sum(BLOCK_AREAS_HA), rel=0.01)
    assert footprint_areas(results["OUTPUT_FOOTPRINTS"]) == pytest.approx(sorted(BLOCK_AREAS_HA), rel=0.01)
    with rasterio.open(known_scene) as src, rasterio.open(results["OUTPUT_MASK"]) as mask_src, \
            rasterio.open(results["OUTPUT_PROBABILITY"]) as prob_src:
        assert (mask_src.transform, mask_src.shape, mask_src.crs) == (src.transform, src.shape, src.crs)
        assert (prob_src.transform, prob_src.shape) == (src.transform, src.shape)
        expected = np.full(src.shape, 255, dtype=np.uint8)
        for rows, cols in BLOCKS:
            expected[rows, cols] = 1
        np.testing.assert_array_equal(mask_src.read(1), expected)
        prob = prob_src.read(1)
        assert (prob[expected == 1] >= 250).all() and (prob[expected == 255] == 255).all()


def test_parameters_override_model_defaults(plugin, known_scene, constant_bundle_path):
    results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), MIN_AREA_HA=5.0,
                          THRESHOLD=0.3, TILE_SIZE=32, OVERLAP=8, DEVICE=1,
                          BANDS=",".join(f"{name}={i}" for i, (name, _) in enumerate(MODEL_BANDS, start=1)))

    assert results["FOOTPRINT_COUNT"] == 1
    assert results["TOTAL_AREA_HA"] == pytest.approx(BLOCK_AREAS_HA[0], rel=0.01)


def test_extent_in_another_crs_limits_the_segmented_area(plugin, known_scene, constant_bundle_path):
    # The second block only (rows 60-80, cols 60-80 at 10 m from (500000, 5800000)), given in WGS 84.
    block = QgsRectangle(500000 + 55 * 10, 5800000 - 85 * 10, 500000 + 85 * 10, 5800000 - 55 * 10)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    extent = to_wgs84.transformBoundingBox(block)
    extent_text = (f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} "
                   f"[EPSG:4326]")

    results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), EXTENT=extent_text)

    assert results["FOOTPRINT_COUNT"] == 1
    assert results["TOTAL_AREA_HA"] == pytest.approx(BLOCK_AREAS_HA[1], rel=0.01)
    results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), EXTENT="")  # scripts: not set
    assert results["FOOTPRINT_COUNT"] == 2


def test_excluded_polygons_of_a_scratch_layer_in_another_crs_are_not_segmented(plugin, known_scene,
                                                                                constant_bundle_path):
    # A scratch layer in WGS 84 over the second block (rows 60-80, cols 60-80): only the first block is left.
    block = QgsRectangle(500000 + 55 * 10, 5800000 - 85 * 10, 500000 + 85 * 10, 5800000 - 55 * 10)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    water = QgsVectorLayer("Polygon?crs=EPSG:4326", "natural water", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(to_wgs84.transformBoundingBox(block)))
    water.dataProvider().addFeatures([feature])

    results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), EXCLUDE=water)

    assert results["FOOTPRINT_COUNT"] == 1
    assert results["TOTAL_AREA_HA"] == pytest.approx(BLOCK_AREAS_HA[0], rel=0.01)
    with rasterio.open(results["OUTPUT_MASK"]) as src:
        assert (src.read(1)[BLOCKS[1]] == 255).all()



def test_excluded_polygons_honour_selected_features_only(plugin, known_scene, constant_bundle_path):
    """'Selected features only' (a FeatureSourceDefinition, as the dialog and graphical models pass it) excludes the
    selected polygons; values that are not polygons are refused instead of being taken as not set."""
    from qgis.core import QgsProcessingFeatureSourceDefinition

    water = QgsVectorLayer("Polygon?crs=EPSG:32633", "natural water", "memory")
    features = []
    for rows, cols in BLOCKS:  # one polygon over each block, pixels of 10 m from (500000, 5800000)
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500000 + cols.start * 10, 5800000 - rows.stop * 10,
                                                              500000 + cols.stop * 10, 5800000 - rows.start * 10)))
        features.append(feature)
    water.dataProvider().addFeatures(features)
    QgsProject.instance().addMapLayer(water)
    try:
        water.selectByIds([next(water.getFeatures()).id()])  # the first block's polygon
        results = run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path),
                              EXCLUDE=QgsProcessingFeatureSourceDefinition(water.id(), True))
        assert results["FOOTPRINT_COUNT"] == 1
        assert results["TOTAL_AREA_HA"] == pytest.approx(BLOCK_AREAS_HA[1], rel=0.01)
        with pytest.raises(QgsProcessingException, match="every pixel .* is nodata .* or excluded"):  # both blocks
            run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path),
                        EXCLUDE=QgsProcessingFeatureSourceDefinition(water.id(), False))

        water.removeSelection()
        with pytest.raises(QgsProcessingException, match="EXCLUDE: 'Selected features only' is set but no feature "
                                                         "of layer 'natural water' is selected"):
            run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path),
                        EXCLUDE=QgsProcessingFeatureSourceDefinition(water.id(), True))
    finally:
        QgsProject.instance().removeMapLayer(water.id())
    points = QgsVectorLayer("Point?crs=EPSG:32633", "wells", "memory")
    with pytest.raises(QgsProcessingException, match="EXCLUDE: layer 'wells' holds point features, not polygons"):
        run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), EXCLUDE=points)
    with pytest.raises(QgsProcessingException, match="EXCLUDE: 'scene' is a raster layer, not polygons"):
        run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path),
                    EXCLUDE=QgsRasterLayer(str(known_scene), "scene"))

def test_cancel_leaves_no_output(plugin, known_scene, constant_bundle_path, tmp_path):
    class CancelOnFirstProgress(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802 (QGIS API)
            super().setProgress(progress)
            self.cancel()

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        processing.run("minec2f:segment", {
            "INPUT": str(known_scene), "MODEL": str(constant_bundle_path),
            "OUTPUT_PROBABILITY": str(out / "prob.tif"), "OUTPUT_MASK": str(out / "mask.tif"),
            "OUTPUT_FOOTPRINTS": str(out / "footprints.gpkg")}, feedback=CancelOnFirstProgress())
    assert list(out.iterdir()) == []


def test_vector_input_is_refused(plugin, tmp_path, constant_bundle_path):
    vector = QgsVectorLayer("Polygon?crs=EPSG:32633", "polygons", "memory")
    with pytest.raises(QgsProcessingException, match="INPUT: 'polygons' is a vector layer, not a raster; choose the "
                                                     "multispectral raster layer"):
        run_segment(INPUT=vector, MODEL=str(constant_bundle_path))


def test_one_band_raster_names_the_missing_bands(plugin, make_raster, constant_bundle_path):
    one_band = make_raster("one_band.tif", np.full((32, 32), 1500, dtype=np.uint16))
    with pytest.raises(QgsProcessingException, match="B03") as failure:
        run_segment(INPUT=str(one_band), MODEL=str(constant_bundle_path))
    # the fix is named as this algorithm's parameter, not as the command line's option
    assert "band mapping" in str(failure.value) and "(BANDS)" in str(failure.value)
    assert "--" not in str(failure.value)


def test_reflectance_scale_and_offset_reach_the_engine(plugin, known_scene, constant_bundle_path):
    class Log(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802 (QGIS API)
            super().pushInfo(info)
            self.lines.append(info)

    # The known scene is bright (no pixel below 1200 DN), so the engine takes it for Sentinel-2 L2A with the +1000
    # DN offset, says so and names the parameter that overrides it.
    detected = ("DN * 0.0001 - 0.1 (reflectance x 10000 with the Sentinel-2 L2A +1000 DN offset "
                "(no pixel darker than 1200 DN in any band; a bright desert without the offset looks the same: set "
                "the offset to 0 (OFFSET) if the raster has none))")
    for parameters, expected in (({}, detected), ({"OFFSET": 0.0}, "DN * 0.0001 + 0 (given)"),
                                 ({"SCALE": 0.0002, "OFFSET": -0.1}, "DN * 0.0002 - 0.1 (given)")):
        log = Log()
        results = processing.run("minec2f:segment", {"INPUT": str(known_scene), "MODEL": str(constant_bundle_path),
                                                     "OUTPUT_PROBABILITY": TEMP, "OUTPUT_MASK": TEMP,
                                                     "OUTPUT_FOOTPRINTS": TEMP, **parameters}, feedback=log)
        assert any(expected in line for line in log.lines), log.lines
        assert results["REFLECTANCE"] == f"reflectance = {expected}"  # also an output, for models and the dock


def test_unwritable_output_is_refused_before_any_work(plugin, known_scene, constant_bundle_path, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder is expected")
    with pytest.raises(QgsProcessingException, match="not_a_folder is a file, not a folder"):
        run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path),
                    OUTPUT_FOOTPRINTS=str(blocker / "footprints.gpkg"))


def test_virtual_raster_layer_is_refused_with_how_to_export_it(plugin, known_scene, constant_bundle_path):
    parameters = QgsRasterDataProvider.VirtualRasterParameters()
    parameters.crs = QgsCoordinateReferenceSystem("EPSG:32633")
    parameters.extent = QgsRectangle(500000, 5800000 - 960, 500000 + 960, 5800000)
    parameters.width = parameters.height = 96
    parameters.formula = '"scene@1" * 2'
    scene = QgsRasterDataProvider.VirtualRasterInputLayers()
    scene.name, scene.uri, scene.provider = "scene", str(known_scene), "gdal"
    parameters.rInputLayers = [scene]
    virtual = QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(parameters), "doubled",
                             "virtualraster")
    assert virtual.isValid()
    QgsProject.instance().addMapLayer(virtual)
    try:
        with pytest.raises(QgsProcessingException, match="'doubled' .* is not a raster file on disk; save it as"):
            run_segment(INPUT=virtual.id(), MODEL=str(constant_bundle_path))
    finally:
        QgsProject.instance().removeMapLayer(virtual.id())


def test_web_tile_layer_is_refused_with_how_to_export_it(plugin, constant_bundle_path):
    tiles = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/{z}/{x}/{y}.png&zmax=19&zmin=0", "web tiles", "wms")
    assert tiles.isValid()  # a WMS/XYZ layer loads without the network; it has no file to read
    QgsProject.instance().addMapLayer(tiles)
    try:
        with pytest.raises(QgsProcessingException, match="'web tiles' \\(wms\\) is not a raster file on disk; save "
                                                         "it as a GeoTIFF first"):
            run_segment(INPUT=tiles.id(), MODEL=str(constant_bundle_path))
    finally:
        QgsProject.instance().removeMapLayer(tiles.id())


def test_bad_band_mapping_fails_validation(plugin, known_scene, constant_bundle_path):
    with pytest.raises(QgsProcessingException, match="BANDS"):
        run_segment(INPUT=str(known_scene), MODEL=str(constant_bundle_path), BANDS="B02=one")


@pytest.mark.parametrize("parameters, message", [
    ({"THRESHOLD": 1.0}, r"THRESHOLD: threshold 1.0 must be between 0 and 1 \(exclusive\)"),
    ({"THRESHOLD": 0}, r"THRESHOLD: threshold 0.0 must be between 0 and 1 \(exclusive\)"),
    ({"MODEL": "scene.tif"}, "MODEL: scene.tif is not a .safetensors file; choose a MineC2F model bundle")])
def test_parameters_qgis_would_call_incorrect_are_named_with_the_fix(plugin, known_scene, constant_bundle_path,
                                                                     parameters, message):
    with pytest.raises(QgsProcessingException, match=message):
        run_segment(**{"INPUT": str(known_scene), "MODEL": str(constant_bundle_path), **parameters})


def test_runs_inside_a_processing_model(plugin, known_scene, constant_bundle_path):
    from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource, QgsProcessingModelOutput,
                           QgsProcessingModelParameter, QgsProcessingParameterRasterLayer)

    model = QgsProcessingModelAlgorithm("segment in a model", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "Scene"), QgsProcessingModelParameter("scene"))
    child = QgsProcessingModelChildAlgorithm("minec2f:segment")
    child.setChildId("segment")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    child.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue(
        str(constant_bundle_path))])
    output = QgsProcessingModelOutput("footprints", "Footprints")
    output.setChildOutputName("OUTPUT_FOOTPRINTS")
    child.setModelOutputs({"footprints": output})
    model.addChildAlgorithm(child)

    results = processing.run(model, {"scene": str(known_scene), "segment:footprints": TEMP})

    assert footprint_areas(results["segment:footprints"]) == pytest.approx(sorted(BLOCK_AREAS_HA), rel=0.01)


def test_results_loaded_by_processing_get_the_plugin_styles(plugin, known_scene, constant_bundle_path):
    QgsProject.instance().clear()
    processing.runAndLoadResults("minec2f:segment", {
        "INPUT": str(known_scene), "MODEL": str(constant_bundle_path), "OUTPUT_PROBABILITY": TEMP,
        "OUTPUT_MASK": TEMP, "OUTPUT_FOOTPRINTS": TEMP})
    try:
        layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
        assert layers["Footprint probability"].renderer().type() == "singlebandpseudocolor"
        footprints = layers["Mining footprints"]
        assert footprints.renderer().symbol().symbolLayer(0).strokeColor().name() == "#ff3d9a"
        assert not footprints.labelsEnabled()
    finally:
        QgsProject.instance().clear()


def test_runs_in_the_batch_dialog(plugin, qgis_iface, known_scene, constant_bundle_path, tmp_path):
    """Two rows of Processing's batch dialog, filled and run as an analyst would; the second drops small
    footprints."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from qgis.core import QgsApplication, QgsProcessingContext

    dialog = BatchAlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("minec2f:segment"))
    panel = dialog.mainWidget()
    panel.addRow()
    context = QgsProcessingContext()
    for row, min_area in enumerate((0.5, 5.0)):
        for name, value in (("INPUT", str(known_scene)), ("MODEL", str(constant_bundle_path)),
                            ("MIN_AREA_HA", min_area)):
            panel.wrappers[row][panel.parameter_to_column[name]].setParameterValue(value, context)
        for name, suffix in (("OUTPUT_PROBABILITY", ".tif"), ("OUTPUT_MASK", ".tif"), ("OUTPUT_FOOTPRINTS", ".gpkg")):
            output = panel.tblParameters.cellWidget(row + 1, panel.parameter_to_column[name])
            output.setValue(str(tmp_path / f"row{row}_{name.lower()}{suffix}"))
    dialog.runAlgorithm()

    assert footprint_areas(tmp_path / "row0_output_footprints.gpkg") == pytest.approx(sorted(BLOCK_AREAS_HA), rel=0.01)
    assert footprint_areas(tmp_path / "row1_output_footprints.gpkg") == pytest.approx([BLOCK_AREAS_HA[0]], rel=0.01)
    dialog.deleteLater()


def test_the_toolbox_groups_footprint_and_training_algorithms(plugin):
    from qgis.core import QgsApplication

    provider = QgsApplication.processingRegistry().providerById("minec2f")
    groups = {algorithm.name(): algorithm.groupId() for algorithm in provider.algorithms()}
    assert groups == {"segment": "footprints", "polygonize": "footprints", "evaluate": "footprints",
                      "export_chips": "training", "train_teacher": "training", "finetune_student": "training"}
    assert not provider.supportsNonFileBasedOutput()  # no 'Save to GeoPackage table' the engine cannot write
