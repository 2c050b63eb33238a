"""minec2f:train_teacher, minec2f:finetune_student and minec2f:export_chips through processing.run on a small
synthetic scene (tiny trainings: 64 px chips, one epoch), cancel and resume, bad inputs; and the dock's
Fine-tune section driven as a user would."""

import csv
import time

import numpy as np
import pytest
from dock_tasks import wait_for_task
from qgis.core import (QgsApplication, QgsFeature, QgsGeometry, QgsProcessingException, QgsProcessingFeedback,
                       QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer)

import processing
from minec2f_qgis import models
from minec2f_qgis.dock import MineC2FDock, in_dock_terms

TINY = {"EPOCHS": 1, "BATCH": 2, "CHIP_SIZE": 64, "DEVICE": 1}  # DEVICE 1 = CPU


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One CPU thread: on a machine shared with other jobs, two OpenMP threads per step are far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 192 px synthetic Sentinel-2 L2A-like scene with two mines: paths of image, fine and coarse polygons."""
    from model_core.synthetic import make_scene, write_scene

    return write_scene(make_scene(192, seed=3, mines=2), tmp_path_factory.mktemp("scene"), "scene")


def polygon_layer(name, rectangles, crs="EPSG:32633"):
    """A scratch (memory) polygon layer of ``rectangles`` (xmin, ymin, xmax, ymax)."""
    layer = QgsVectorLayer(f"Polygon?crs={crs}", name, "memory")
    features = []
    for rectangle in rectangles:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(*rectangle)))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def train(algorithm, **parameters):
    return processing.run(f"minec2f:{algorithm}", {**TINY, **parameters})


def test_train_teacher_writes_bundle_log_and_curves(plugin, scene, tmp_path):
    from model_core.bundle import load_bundle

    out = tmp_path / "teacher.safetensors"
    results = train("train_teacher", RASTERS=[str(scene["image"])], POLYGONS=str(scene["coarse_polygons"]),
                    SCALE=0.0001, OFFSET=0.0, STEPS_PER_EPOCH=3, OUTPUT_MODEL=str(out))

    bundle = load_bundle(out)
    assert results["OUTPUT_MODEL"] == str(out) and bundle.spec.role == "teacher"
    assert bundle.spec.training["radiometry"] == ["given"]
    assert results["REFLECTANCE"] == f"{scene['image'].name}: reflectance = DN * 0.0001 + 0 (given)"
    assert results["METHOD_USED"] == "coarse_only"
    assert bundle.spec.training["polygons"] == "scene_coarse.gpkg"  # the file itself, not a temporary copy
    assert results["BEST_EPOCH"] == 1
    assert results["VAL_IOU"] == pytest.approx(bundle.spec.metrics["val_iou"])
    assert 0.0 <= results["VAL_IOU"] <= results["VAL_F1"] <= 1.0
    with open(results["OUTPUT_LOG"]) as stream:
        assert [(row["epoch"], row["steps"]) for row in csv.DictReader(stream)] == [("1", "3")]
    assert results["OUTPUT_CURVES"] == str(tmp_path / "teacher.curves.png")


def test_finetune_student_records_its_teacher(plugin, scene, tiny_bundle_path, tmp_path):
    from model_core import defaults
    from model_core.bundle import file_sha256, load_bundle

    polygons = QgsVectorLayer(str(scene["fine_polygons"]), "my footprints", "ogr")
    polygons.setSubsetString("fid > 0")  # a filtered layer is copied with its filter applied
    bounds = QgsRasterLayer(str(scene["image"]), "scene").extent()
    extent = polygon_layer("extent", [(bounds.xMinimum(), bounds.yMinimum(), bounds.xMaximum(), bounds.yMaximum())])
    out = tmp_path / "student.safetensors"
    results = train("finetune_student", TEACHER=str(tiny_bundle_path), RASTERS=[str(scene["image"])],
                    POLYGONS=polygons, EXTENT=extent, LAMBDA_FEAT=0.5, OUTPUT_MODEL=str(out))

    spec = load_bundle(out).spec
    # method auto, the default: this teacher was not trained on coarse outlines alone, so minec2f however it starts
    assert spec.hyperparameters["method_choice"].endswith("this teacher: supervised, method random-init")
    assert (spec.role, spec.method) == ("student", "minec2f")
    assert spec.parent_hash == file_sha256(tiny_bundle_path)
    assert spec.hyperparameters["lambda_feat"] == 0.5 and spec.hyperparameters["lr"] == defaults.STUDENT["lr"]
    assert spec.training["polygons"] == "my_footprints.gpkg" and spec.training["extent"] == "extent.gpkg"
    assert spec.hyperparameters["min_steps_per_epoch"] == defaults.STUDENT["min_steps_per_epoch"]  # as the CLI's
    assert spec.hyperparameters["gain_jitter"] == defaults.STUDENT["gain_jitter"]
    assert results["BEST_EPOCH"] == 1 and (tmp_path / "student.log.csv").exists()


def test_student_methods_are_the_engines_without_joint_then_auto():
    from minec2f_qgis.algorithms.finetune_student import METHODS
    from model_core.train import AUTO_METHOD, STUDENT_METHODS

    assert [key for key, _ in METHODS] == [method for method in STUDENT_METHODS if method != "joint"] + [AUTO_METHOD]


@pytest.mark.parametrize("algorithm, command", [("minec2f:train_teacher", "train"),
                                                 ("minec2f:finetune_student", "finetune")])
def test_training_defaults_are_the_command_lines(plugin, algorithm, command):
    """A run from Processing (and the dock) with its defaults trains as the command line with its own."""
    from model_core.cli import build_parser

    args = build_parser().parse_args([command, "--raster", "r.tif", "--polygons", "p.gpkg", "--out", "o.safetensors"]
                                     + (["--teacher", "t.safetensors"] if command == "finetune" else []))
    definitions = QgsApplication.processingRegistry().algorithmById(algorithm)
    names = {"EPOCHS": "epochs", "BATCH": "batch", "LEARNING_RATE": "lr", "CHIP_SIZE": "chip_size",
             "LAMBDA_FEAT": "lambda_feat", "LAMBDA_PRED": "lambda_pred", "TEMPERATURE": "temperature",
             "REHEARSAL_SCENES": "rehearsal_scenes", "FREEZE_ENCODER": "freeze_encoder", "VAL_FRACTION": "val_fraction"}
    compared = {name: (definitions.parameterDefinition(name).defaultValue(), getattr(args, field))
                for name, field in names.items() if definitions.parameterDefinition(name) is not None}
    assert len(compared) == (5 if command == "train" else 10)
    assert all(processing == cli for processing, cli in compared.values()), compared
    if command == "finetune":
        from minec2f_qgis.algorithms.finetune_student import METHODS

        assert METHODS[definitions.parameterDefinition("METHOD").defaultValue()][0] == args.method == "auto"


class CancelAt(QgsProcessingFeedback):
    """Cancels once progress reaches ``percent``."""

    def __init__(self, percent):
        super().__init__()
        self.percent = percent

    def setProgress(self, progress):  # noqa: N802 (QGIS API)
        super().setProgress(progress)
        if progress >= self.percent:
            self.cancel()


def test_cancel_before_the_first_epoch_ends_writes_nothing(plugin, scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("minec2f:train_teacher", {
            **TINY, "RASTERS": [str(scene["image"])], "POLYGONS": str(scene["coarse_polygons"]),
            "OUTPUT_MODEL": str(tmp_path / "teacher.safetensors")}, feedback=CancelAt(0))
    assert list(tmp_path.iterdir()) == []


def test_cancel_keeps_the_best_epoch_and_resume_finishes_the_run(plugin, scene, tmp_path):
    out = tmp_path / "teacher.safetensors"
    parameters = {**TINY, "EPOCHS": 2, "RASTERS": [str(scene["image"])], "POLYGONS": str(scene["coarse_polygons"]),
                  "OUTPUT_MODEL": str(out)}
    with pytest.raises(QgsProcessingException, match="cancelled in epoch 2.*resumes from teacher.resume.safetensors "
                                                     "with RESUME"):
        processing.run("minec2f:train_teacher", parameters, feedback=CancelAt(51))
    assert out.exists() and (tmp_path / "teacher.resume.safetensors").exists()

    feedback = QgsProcessingFeedback()
    results = processing.run("minec2f:train_teacher", {**parameters, "RESUME": True}, feedback=feedback)

    assert "resumed from teacher.resume.safetensors after epoch 1" in feedback.textLog()
    assert results["BEST_EPOCH"] in (1, 2) and not (tmp_path / "teacher.resume.safetensors").exists()
    with open(results["OUTPUT_LOG"]) as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1", "2"]


def test_polygons_that_miss_the_raster_are_refused(plugin, scene, tmp_path):
    far_away = polygon_layer("far away", [(600000, 5700000, 601000, 5701000)])
    with pytest.raises(QgsProcessingException, match="none of the 1 polygons overlap the raster extent"):
        train("train_teacher", RASTERS=[str(scene["image"])], POLYGONS=far_away,
              OUTPUT_MODEL=str(tmp_path / "teacher.safetensors"))


def test_teacher_bands_the_raster_lacks_are_named(plugin, scene, tiny_bundle_path, make_raster, tmp_path):
    rgb = make_raster("rgb.tif", np.full((3, 128, 128), 1500, dtype=np.uint16))
    with pytest.raises(QgsProcessingException, match=r"the teacher tiny.safetensors cannot train on raster rgb.tif: "
                                                     r"the raster lacks.*\(BANDS\)"):
        train("finetune_student", TEACHER=str(tiny_bundle_path), RASTERS=[str(rgb)],
              POLYGONS=str(scene["fine_polygons"]), OUTPUT_MODEL=str(tmp_path / "student.safetensors"))


def test_training_without_validation_is_refused_by_its_parameter_name(plugin, scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="^VAL_FRACTION 0.0: training needs chips held out for "
                                                     "validation .* pass above 0 and below 1, e.g. 0.2$"):
        train("train_teacher", RASTERS=[str(scene["image"])], POLYGONS=str(scene["coarse_polygons"]),
              VAL_FRACTION=0, OUTPUT_MODEL=str(tmp_path / "teacher.safetensors"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("output, message", [("model.pt", "is not a .safetensors file"),
                                             ("teacher", "that is the teacher model")])
def test_bad_output_model_fails_validation(plugin, scene, tiny_bundle_path, output, message):
    output = str(tiny_bundle_path) if output == "teacher" else output
    with pytest.raises(QgsProcessingException, match=message):
        train("finetune_student", TEACHER=str(tiny_bundle_path), RASTERS=[str(scene["image"])],
              POLYGONS=str(scene["fine_polygons"]), OUTPUT_MODEL=output)


def test_export_chips_writes_counted_pairs_and_replaces_only_an_earlier_export(plugin, scene, tmp_path):
    folder = tmp_path / "chips"
    parameters = {"RASTERS": [str(scene["image"])], "POLYGONS": str(scene["fine_polygons"]), "CHIP_SIZE": 64,
                  "OUTPUT_FOLDER": str(folder)}
    results = processing.run("minec2f:export_chips", parameters)

    with open(folder / "index.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert results["OUTPUT_FOLDER"] == str(folder) and results["CHIP_COUNT"] == len(rows) == 9  # 3 x 3 chips
    assert len(list((folder / "image").glob("*.tif"))) == len(list((folder / "mask").glob("*.tif"))) == 9
    assert {row["split"] for row in rows} == {"train", "val"}

    processing.run("minec2f:export_chips", {**parameters, "VAL_FRACTION": 0})  # replaces it, all chips training
    with open(folder / "index.csv") as stream:
        assert [row["split"] for row in csv.DictReader(stream)] == ["train"] * 9

    results = processing.run("minec2f:export_chips", {**parameters, "STRIDE": 32, "OFFSET": -0.05})
    with open(folder / "index.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert results["CHIP_COUNT"] == len(rows) > 9  # overlapping chips
    assert {(row["scale"], row["offset"]) for row in rows} == {("0.0001", "-0.05")}  # scale detected
    assert len(list((folder / "image").glob("*.tif"))) == results["CHIP_COUNT"]
    with pytest.raises(QgsProcessingException, match="RASTERS: 'fine' is a vector layer, not a raster"):
        processing.run("minec2f:export_chips", {**parameters, "RASTERS": [QgsVectorLayer(
            str(scene["fine_polygons"]), "fine", "ogr")]})
    (folder / "image" / "drone_0001.jpg").write_text("the user's")
    with pytest.raises(QgsProcessingException, match="holds files that are not a MineC2F chip export"):
        processing.run("minec2f:export_chips", parameters)
    assert (folder / "image" / "drone_0001.jpg").exists()


# ------------------------------------------------------------------------------------------------ dock

@pytest.fixture
def dock(plugin, qgis_iface, tiny_bundle_path, tmp_path, monkeypatch):
    """The dock over a 320 px synthetic scene (enough 128 px chips), the tiny bundle selected as the model."""
    from model_core.synthetic import make_scene, write_scene

    user_models = tmp_path / "user_models"
    user_models.mkdir()
    (user_models / "tiny.safetensors").write_bytes(tiny_bundle_path.read_bytes())
    monkeypatch.setattr(models, "user_models_dir", lambda: user_models)
    paths = write_scene(make_scene(320, seed=3, mines=2), tmp_path, "area")
    QgsProject.instance().clear()
    raster = QgsRasterLayer(str(paths["image"]), "Area")
    footprints = QgsVectorLayer(str(paths["fine_polygons"]), "Digitised footprints", "ogr")
    QgsProject.instance().addMapLayers([raster, footprints])
    qgis_iface.setActiveLayer(raster)
    widget = MineC2FDock(qgis_iface)
    widget.refresh_models(select=user_models / "tiny.safetensors")
    yield widget
    widget.deleteLater()
    QgsProject.instance().clear()


def test_dock_finetunes_the_selected_model_and_selects_the_new_one(dock):
    dock.polygons_box.setLayer(QgsProject.instance().mapLayersByName("Digitised footprints")[0])
    assert dock.extent_box.currentLayer() is None  # whole raster
    dock.epochs_box.setValue(1)
    dock.finetune_button.click()
    assert not dock.finetune_button.isEnabled() and dock.cancel_button.isEnabled()
    wait_for_task(dock, timeout=90)

    assert "New model area_finetuned" in dock.status.text(), dock.status.text()
    assert "Check it on a scene you did not digitise" in dock.status.text()
    entry = dock.current_model()
    assert entry.path == models.user_models_dir() / "area_finetuned.safetensors"
    assert entry.label == "area_finetuned (user)" and entry.spec.role == "student"
    # the dock's method is auto: it says when that chose plain fine-tuning; and the reflectance it read
    assert ("by plain fine-tuning" in dock.status.text()) == (entry.spec.method == "finetune"), dock.status.text()
    assert "area.tif: reflectance = DN * " in dock.status.text(), dock.status.text()
    assert dock.model_box.findText("area_finetuned (user)") >= 0 and dock.finetune_button.isEnabled()


def test_dock_explains_missing_footprints_and_taken_names(dock):
    dock.polygons_box.setLayer(None)
    dock.finetune_button.click()
    assert "choose the polygon layer" in dock.status.text() and dock.task is None

    dock.polygons_box.setLayer(QgsProject.instance().mapLayersByName("Digitised footprints")[0])
    dock.model_name.setText("tiny")
    dock.finetune_button.click()
    assert "a model named 'tiny' exists already" in dock.status.text() and dock.task is None


def test_dock_says_when_the_new_model_is_the_teacher_unchanged(dock):
    model = models.user_models_dir() / "kept.safetensors"
    model.write_bytes((models.user_models_dir() / "tiny.safetensors").read_bytes())
    dock.started = time.monotonic()
    dock.finetuned({"BEST_EPOCH": 0, "VAL_IOU": 0.61, "VAL_F1": 0.75}, {"OUTPUT_MODEL": str(model)})
    assert "is the teacher unchanged" in dock.status.text() and "0.610" in dock.status.text()
    assert dock.current_model().path == model


def test_dock_errors_name_the_docks_fields_and_where_to_set_the_others(dock):
    """A labelled extent of 30 x 30 px holds no 128 px chip: the error names the dock's field and says where the
    chip size (not in the dock) is set, not the Processing parameter names."""
    raster = QgsProject.instance().mapLayersByName("Area")[0].extent()
    x, y = raster.center().x(), raster.center().y()
    small = QgsVectorLayer(f"Polygon?crs={QgsProject.instance().mapLayersByName('Area')[0].crs().authid()}",
                           "Small extent", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x, y, x + 300, y + 300)))
    small.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(small)
    dock.polygons_box.setLayer(QgsProject.instance().mapLayersByName("Digitised footprints")[0])
    dock.extent_box.setLayer(small)
    dock.finetune_button.click()
    wait_for_task(dock)

    status = dock.status.text()
    assert "check the labelled extent and nodata, or lower 'Chip size in pixels' (in Processing Toolbox › " \
           "MineC2F › Fine-tune student on precise polygons)" in status, status
    assert "CHIP_SIZE" not in status and not models.user_models_dir().joinpath("area_finetuned.safetensors").exists()


def test_errors_are_named_in_dock_terms(plugin):
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("minec2f:segment")
    assert in_dock_terms("OUTPUT_MASK: x.tif is not writable (CRS EPSG:32633); check BANDS", algorithm) == \
        "Output folder: x.tif is not writable (CRS EPSG:32633); check the band table"  # not parameters: unchanged
    assert in_dock_terms("lower TILE_SIZE", algorithm).startswith("lower 'Tile size")


def test_dock_cancel_keeps_the_best_epoch_as_a_model_or_writes_none(dock):
    dock.polygons_box.setLayer(QgsProject.instance().mapLayersByName("Digitised footprints")[0])
    dock.model_name.setText("early")
    dock.finetune_button.click()
    dock.cancel()
    wait_for_task(dock, timeout=90)
    assert dock.status.text() == "Cancelled; no model was written.", dock.status.text()

    dock.model_name.setText("halfway")
    dock.epochs_box.setValue(3)
    dock.finetune_button.click()
    model = models.user_models_dir() / "halfway.safetensors"
    deadline = time.monotonic() + 120
    while not model.exists() and dock.task is not None:  # the first epoch's best model
        assert time.monotonic() < deadline
        QgsApplication.processEvents()
        time.sleep(0.05)
    dock.cancel()
    wait_for_task(dock, timeout=90)
    assert dock.status.text() == "Cancelled; the best model so far is kept as halfway.", dock.status.text()
    assert dock.current_model().path == model and dock.finetune_button.isEnabled()


def test_dock_trains_a_teacher_from_scratch_when_asked(dock, tmp_path):
    from model_core import defaults
    from model_core.synthetic import make_scene, write_scene

    paths = write_scene(make_scene(576, seed=5, mines=3), tmp_path / "inventory", "inventory")  # 256 px chips
    raster = QgsRasterLayer(str(paths["image"]), "Inventory area")
    outlines = QgsVectorLayer(str(paths["coarse_polygons"]), "Inventory outlines", "ogr")
    QgsProject.instance().addMapLayers([raster, outlines])
    dock.layer_box.setLayer(raster)
    dock.polygons_box.setLayer(outlines)
    dock.teacher_box.setChecked(True)
    assert dock.epochs_box.value() == defaults.TEACHER["epochs"] and dock.finetune_button.text() == "Train teacher"
    parameters = dock.finetune_parameters()
    assert "TEACHER" not in parameters and "METHOD" not in parameters
    assert parameters["BANDS"] == dock.band_mapping_text()  # the selected model reads the teacher's bands
    dock.epochs_box.setValue(1)
    dock.finetune_button.click()
    assert dock.task is not None and dock.algorithm.id() == "minec2f:train_teacher"
    wait_for_task(dock, timeout=240)
    assert "New model inventory_teacher" in dock.status.text(), dock.status.text()
    assert dock.current_model().spec.role == "teacher"
    dock.teacher_box.setChecked(False)
    assert dock.epochs_box.value() == defaults.STUDENT["epochs"] and dock.finetune_button.text() == "Fine-tune"
