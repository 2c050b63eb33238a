"""The dock driven as a user would: pick the layer, see the band mapping and model card, click Run, wait for the
background task, find the styled results in a group named after the input; cancel; a screenshot for the docs.

Set MINEC2F_DOCK_SCREENSHOT=docs/dock.png to refresh the README's screenshot."""

import os
import sys
import time
from pathlib import Path

import pytest
from dock_tasks import wait_for_task
from known_scene import MODEL_BANDS
from qgis.core import (QgsApplication, QgsFeature, QgsGeometry, QgsLayerTreeGroup, QgsProject, QgsRasterLayer,
                       QgsRectangle, QgsSingleBandPseudoColorRenderer, QgsSingleSymbolRenderer, QgsVectorLayer)
from qgis.PyQt.QtCore import QEvent, Qt
from qgis.PyQt.QtGui import QTextDocument

from minec2f_qgis import models
from minec2f_qgis.dock import MineC2FDock
from minec2f_qgis.layers import FOOTPRINTS_LAYER_NAME, PROBABILITY_LAYER_NAME


@pytest.fixture
def dock(plugin, qgis_iface, known_scene, constant_bundle_path, tmp_path, monkeypatch):
    """The dock with the known scene as the active layer and the constant bundle in the user models folder."""
    user_models = tmp_path / "user_models"
    user_models.mkdir()
    (user_models / constant_bundle_path.name).write_bytes(constant_bundle_path.read_bytes())
    monkeypatch.setattr(models, "user_models_dir", lambda: user_models)
    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(known_scene), "Known scene")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    widget = MineC2FDock(qgis_iface)
    widget.refresh_models(select=user_models / constant_bundle_path.name)
    widget.folder_widget.setFilePath(str(tmp_path / "results"))
    yield widget
    widget.deleteLater()
    QgsProject.instance().clear()


def test_dock_shows_layer_model_card_and_band_mapping(dock):
    assert dock.layer_box.currentLayer().name() == "Known scene"
    assert "constant-test" in dock.card.text() and "val_iou 0.500" in dock.card.text()
    assert dock.threshold_box.value() == 0.5 and dock.min_area_box.value() == 0.5
    assert dock.band_mapping_text() == ",".join(f"{name}={i}" for i, (name, _) in enumerate(MODEL_BANDS, 1))
    assert [dock.device_box.itemData(i) for i in range(dock.device_box.count())][:2] == ["auto", "cpu"]
    assert dock.device_box.itemData(0, Qt.ToolTipRole).startswith("CPU (")  # no GPU here: what auto runs on


def test_a_model_from_an_unfinished_training_is_labelled_and_warned_about(tmp_path, constant_bundle_path,
                                                                          monkeypatch):
    from dataclasses import replace

    from model_core.bundle import UNFINISHED, load_bundle, save_bundle

    bundle = load_bundle(constant_bundle_path)
    monkeypatch.setattr(models, "user_models_dir", lambda: tmp_path)
    save_bundle(tmp_path / "halfway.safetensors", bundle.net,
                replace(bundle.spec, name="halfway", metrics={"val_iou": 0.5, "best_epoch": 2, UNFINISHED: True}))
    entry = next(entry for entry in models.available_models() if entry.path.name == "halfway.safetensors")
    assert entry.label == "halfway (user, unfinished training)"
    card = models.model_card(entry)
    assert "<b>Warning</b>: model halfway is the best epoch (2) of a training run that did not finish" in card
    assert "best_epoch 2, val_iou 0.500" in card and UNFINISHED not in card  # the spec is stored with sorted keys


def test_run_adds_styled_results_in_a_group_named_after_the_input(dock, tmp_path):
    dock.band_table.cellWidget(0, 1).setCurrentIndex(1)  # B02 <- band 1, as matched: an explicit choice works
    dock.run_button.click()
    assert not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    wait_for_task(dock)

    assert "2 footprints, 16.0 ha" in dock.status.text()
    group = QgsProject.instance().layerTreeRoot().children()[0]
    assert isinstance(group, QgsLayerTreeGroup) and group.name() == "Known scene"
    footprints, probability = (node.layer() for node in group.findLayers())
    assert (footprints.name(), probability.name()) == (FOOTPRINTS_LAYER_NAME, PROBABILITY_LAYER_NAME)
    assert footprints.featureCount() == 2 and not footprints.labelsEnabled()
    assert isinstance(footprints.renderer(), QgsSingleSymbolRenderer)
    assert isinstance(probability.renderer(), QgsSingleBandPseudoColorRenderer)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "known_scene_footprints.gpkg", "known_scene_mask.tif", "known_scene_prob.tif"]

    dock.run_button.click()  # a second run keeps the first run's files
    wait_for_task(dock)
    assert (tmp_path / "results" / "known_scene_2_footprints.gpkg").exists()

    dock.resize(440, 1700)  # tall enough for the result summary below the collapsed Fine-tune section
    image = dock.grab()
    assert not image.isNull()
    image.save(os.environ.get("MINEC2F_DOCK_SCREENSHOT", str(tmp_path / "dock.png")))


def test_the_result_says_which_reflectance_scale_and_offset_were_used_and_they_can_be_set(dock):
    """The known scene has no pixel below 1200 DN: the +1000 DN offset is detected, and the user can say there
    is none."""
    assert not dock.scale_box.isEnabled() and "SCALE" not in dock.parameters()
    dock.run_button.click()
    wait_for_task(dock)
    assert "reflectance = DN * 0.0001 - 0.1 (reflectance x 10000 with the Sentinel-2 L2A +1000 DN offset" in \
        dock.status.text() and "set the offset to 0 (Reflectance offset)" in dock.status.text(), dock.status.text()

    dock.radiometry_box.setChecked(True)
    dock.offset_box.setValue(0.0)
    assert dock.scale_box.isEnabled() and (dock.parameters()["SCALE"], dock.parameters()["OFFSET"]) == (1e-4, 0.0)
    dock.run_button.click()
    wait_for_task(dock)
    assert "reflectance = DN * 0.0001 + 0 (given)" in dock.status.text(), dock.status.text()


def test_polygons_chosen_not_to_segment_are_left_out(dock):
    """A polygon layer over the second block (rows 60-80, cols 60-80 at 10 m from (500000, 5800000))."""
    water = QgsVectorLayer("Polygon?crs=EPSG:32633", "natural water", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500550, 5799150, 500850, 5799450)))
    water.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(water)
    assert dock.parameters()["EXCLUDE"] is None  # nothing excluded until the user picks a layer
    dock.exclude_box.setLayer(water)
    assert dock.parameters()["EXCLUDE"] == water.id()
    dock.run_button.click()
    wait_for_task(dock)
    assert "1 footprint, 12.0 ha" in dock.status.text(), dock.status.text()


def test_cancel_adds_nothing(dock, tmp_path):
    dock.run()
    dock.cancel()
    wait_for_task(dock)
    assert "Cancelled" in dock.status.text()
    assert QgsProject.instance().layerTreeRoot().findGroups() == []
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").iterdir()) == []


def test_unmatched_bands_are_explained_and_must_be_chosen(dock, make_raster):
    import numpy as np

    layer = QgsRasterLayer(str(make_raster("plain.tif", np.ones((3, 32, 32), dtype=np.uint16))), "Plain")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_box.setLayer(layer)
    assert "B02" in dock.band_status.text() and "(choose them in the table above)" in dock.band_status.text()
    dock.run_button.click()
    assert "choose the raster band for model band B02" in dock.status.text() and dock.task is None


def test_the_picker_takes_the_active_raster_and_ignores_an_active_vector(plugin, qgis_iface, known_scene):
    QgsProject.instance().clear()
    first = QgsRasterLayer(str(known_scene), "First raster")
    second = QgsRasterLayer(str(known_scene), "Second raster")
    outlines = QgsVectorLayer("Polygon?crs=EPSG:32633", "Outlines", "memory")
    QgsProject.instance().addMapLayers([first, second, outlines])
    qgis_iface.setActiveLayer(outlines)
    widget = MineC2FDock(qgis_iface)
    assert widget.layer_box.currentLayer() is not None  # a raster, not the empty choice the vector would give
    qgis_iface.setActiveLayer(second)
    widget.use_active_layer()  # as when the toolbar action shows the dock again
    assert widget.layer_box.currentLayer().name() == "Second raster"
    widget.deleteLater()
    QgsProject.instance().clear()


def test_models_put_in_the_models_folder_appear_on_reload(dock, constant_bundle_path):
    folder = models.user_models_dir()
    assert str(folder) in dock.models_folder_button.toolTip()
    labels = [dock.model_box.itemText(i) for i in range(dock.model_box.count())]
    selected = dock.model_box.currentData()
    (folder / "colleague.safetensors").write_bytes(constant_bundle_path.read_bytes())
    dock.reload_models_button.click()
    assert dock.model_box.count() == len(labels) + 1
    assert dock.model_box.findData(str(folder / "colleague.safetensors")) >= 0
    assert dock.model_box.currentData() == selected  # the choice is kept


def test_the_map_zooms_to_footprints_outside_the_view_and_not_otherwise(dock, qgis_iface):
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsProject.instance().crs())
    footprints = QgsRectangle(500000 + 8 * 10, 5800000 - 80 * 10, 500000 + 80 * 10, 5800000 - 8 * 10)  # BLOCKS
    canvas.setExtent(QgsRectangle(500000, 5799700, 500200, 5799900))  # on the raster, the second block out of view
    assert not canvas.extent().contains(footprints)
    dock.run_button.click()
    wait_for_task(dock)
    assert canvas.extent().contains(footprints), canvas.extent().toString()

    wide = QgsRectangle(499000, 5798000, 502000, 5801000)
    canvas.setExtent(wide)
    shown = canvas.extent()
    dock.run_button.click()
    wait_for_task(dock)
    assert canvas.extent() == shown  # all in view already: the map stays where the analyst put it


def test_results_that_cannot_be_loaded_are_reported_with_where_they_are(dock, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise ValueError("cannot load footprints.gpkg; the file is missing or unreadable")

    monkeypatch.setattr("minec2f_qgis.dock.add_results", refuse)
    dock.run_button.click()
    wait_for_task(dock)
    assert f"the results were written to {tmp_path / 'results'} but could not be added to the map: cannot load " \
        "footprints.gpkg" in dock.status.text(), dock.status.text()
    assert dock.run_button.isEnabled()


def test_another_threshold_and_minimum_area_apply_to_the_last_result_without_the_model(dock, tmp_path):
    assert not dock.rethreshold_button.isEnabled()  # nothing to apply them to yet
    dock.run_button.click()
    wait_for_task(dock)
    results = tmp_path / "results"
    before = sorted(p.name for p in results.iterdir())

    dock.min_area_box.setValue(5.0)  # drops the 4 ha footprint
    dock.rethreshold_button.click()
    wait_for_task(dock)
    assert "1 footprint, 12.0 ha</b> at threshold 0.5, minimum area 5 ha" in dock.status.text(), dock.status.text()
    group = QgsProject.instance().layerTreeRoot().findGroup("Known scene")
    newest = group.findLayers()[0].layer()
    assert newest.name() == f"{FOOTPRINTS_LAYER_NAME} (threshold 0.5, minimum area 5 ha)"
    assert newest.featureCount() == 1 and isinstance(newest.renderer(), QgsSingleSymbolRenderer)
    assert len(group.findLayers()) == 3  # beside the run's footprints and probability
    assert sorted(p.name for p in results.iterdir()) == sorted(before + [
        "known_scene_t0.5_min5ha_footprints.gpkg", "known_scene_t0.5_min5ha_mask.tif"])

    dock.rethreshold_button.click()  # the same settings again: new files, the first ones kept
    wait_for_task(dock)
    assert (results / "known_scene_t0.5_min5ha_2_footprints.gpkg").exists()

    (results / "known_scene_prob.tif").unlink()
    dock.rethreshold_button.click()
    assert dock.task is None and "probability raster" in dock.status.text() and "is gone" in dock.status.text()


# ---- what a helper's QA run of the dock found (2026-11-29)

def pump(seconds):
    """Process Qt events for ``seconds`` (signals of a task that should not come)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.02)


@pytest.fixture
def slot_errors(monkeypatch):
    """Exceptions raised in Qt slots (QGIS shows them in its Python error dialog), collected."""
    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, trace: errors.append(error))
    return errors


def test_a_run_that_cannot_start_says_why_and_frees_the_dock(dock):
    """A scratch layer with a text 'fid' cannot be copied to a GeoPackage: Processing cancels the task as it is
    made, so it never finishes; the dock used to stay on 'Segmenting...' with Run disabled."""
    water = QgsVectorLayer("Polygon?crs=EPSG:32633&field=fid:string", "water", "memory")
    feature = QgsFeature(water.fields())
    feature.setAttributes(["lake-1"])
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500550, 5799150, 500850, 5799450)))
    water.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(water)
    dock.exclude_box.setLayer(water)
    dock.run_button.click()
    assert dock.task is None and dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert "cannot copy layer 'water' to a temporary GeoPackage" in dock.status.text()


def test_unloading_the_plugin_during_a_run_stops_it_quietly(plugin, dock, slot_errors):
    plugin.show_dock(True)
    plugin.dock.folder_widget.setFilePath(dock.folder_widget.filePath())
    plugin.dock.run_button.click()
    plugin.unload()  # Plugin Reloader, uninstall, or QGIS closing
    QgsApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    pump(3)
    assert slot_errors == []  # was: wrapped C/C++ object of type QProgressBar has been deleted


def test_reloading_the_models_keeps_the_settings_of_the_selected_model(dock):
    dock.threshold_box.setValue(0.3)
    dock.min_area_box.setValue(2.0)
    dock.band_table.cellWidget(0, 1).setCurrentIndex(3)  # B02 <- raster band 3
    before = (dock.threshold_box.value(), dock.min_area_box.value(), dock.band_mapping_text())
    dock.reload_models_button.click()
    assert (dock.threshold_box.value(), dock.min_area_box.value(), dock.band_mapping_text()) == before
    Path(dock.model_box.currentData()).unlink()
    dock.reload_models_button.click()  # the selected model is gone: another is selected, and the dock says so
    assert "is no longer in the models folder; minec2f-default" in dock.status.text()


def test_rethreshold_goes_into_the_group_of_the_result_it_thresholds(dock):
    dock.run_button.click()
    wait_for_task(dock)
    dock.run_button.click()
    wait_for_task(dock)
    root = QgsProject.instance().layerTreeRoot()
    newest = root.children()[0]
    root.addChildNode(newest.clone())  # the analyst drags the newer group below the older one
    root.removeChildNode(newest)
    dock.min_area_box.setValue(5.0)
    dock.rethreshold_button.click()
    wait_for_task(dock)
    group = next(g for g in root.findGroups() if any("min5ha" in n.layer().source() for n in g.findLayers()))
    assert "known_scene_2_prob.tif" in [Path(n.layer().source()).name for n in group.findLayers()]


def test_a_raster_whose_file_is_gone_is_named_with_the_fix(dock, known_scene):
    known_scene.unlink()
    dock.run_button.click()
    assert f"{known_scene}, no longer exists; add the raster again" in dock.status.text()


def test_odd_names_and_folders_are_handled(dock, tmp_path, monkeypatch, slot_errors):
    dock.model_name.setText("a" * 300)
    dock.polygons_box.setLayer(QgsProject.instance().addMapLayer(
        QgsVectorLayer("Polygon?crs=EPSG:32633", "digitised", "memory")))
    dock.finetune_button.click()
    assert slot_errors == [] and "use up to 100 letters, digits" in dock.status.text()

    dock.folder_widget.setFilePath(str(tmp_path / "pits<b>2024 & 2025"))
    dock.run_button.click()
    wait_for_task(dock)
    shown = QTextDocument()
    shown.setHtml(dock.status.text())
    assert "files in pits<b>2024 & 2025/" in shown.toPlainText()

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    dock.folder_widget.setFilePath("~/pit_results")
    dock.run_button.click()
    wait_for_task(dock)
    assert (tmp_path / "home" / "pit_results").is_dir() and not (tmp_path / "~").exists()


def test_the_footprints_to_fine_tune_on_are_never_picked_for_the_analyst(dock):
    """With no polygon layer chosen, a run's own 'Mining footprints' must not become the training labels."""
    assert dock.polygons_box.currentLayer() is None
    dock.run_button.click()
    wait_for_task(dock)
    assert dock.polygons_box.currentLayer() is None
    dock.finetune_button.click()
    assert "choose the polygon layer of the footprints you digitised" in dock.status.text()


def test_a_result_that_could_not_be_loaded_is_still_the_one_rethresholded(dock, monkeypatch):
    def cannot_load(*args, **kwargs):
        raise ValueError("cannot load it")
    monkeypatch.setattr("minec2f_qgis.dock.add_results", cannot_load)
    dock.run_button.click()
    wait_for_task(dock)
    assert "could not be added to the map" in dock.status.text()
    assert dock.rethreshold_button.isEnabled() and dock.last_result[0].endswith("known_scene_prob.tif")
