"""The MineC2F dock: pick a raster, a model and settings, run minec2f:segment as a background task, and see the
results on the map; or fine-tune the model on footprints digitised over the raster (minec2f:finetune_student)."""

import html
import itertools
import re
import time
from pathlib import Path

from qgis.core import (QgsApplication, QgsMapLayerProxyModel, QgsProcessingAlgRunnerTask, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingUtils, QgsProject, QgsRasterLayer)
from qgis.gui import QgsCollapsibleGroupBox, QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                                 QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea, QSpinBox,
                                 QTableWidget, QToolButton, QVBoxLayout, QWidget)

from model_core import defaults

from . import dependencies, models
from .algorithms.common import DEVICES, in_parameter_terms, layer_file
from .algorithms.finetune_student import DEFAULT_METHOD, FinetuneStudentAlgorithm
from .algorithms.train_teacher import TrainTeacherAlgorithm
from .layers import FOOTPRINTS_LAYER_NAME, add_footprints, add_results
from .models import available_models, model_card

ALGORITHM_ID = "minec2f:segment"
POLYGONIZE_ID = "minec2f:polygonize"
FINETUNE_ID = "minec2f:finetune_student"
TEACHER_ID = "minec2f:train_teacher"
# The algorithms' parameters as the dock's fields are labelled, for the errors a run reports.
DOCK_FIELDS = {"INPUT": "Raster", "RASTERS": "Raster", "MODEL": "Model", "TEACHER": "Model",
               "BANDS": "the band table", "SCALE": "Reflectance scale", "OFFSET": "Reflectance offset",
               "DEVICE": "Device", "THRESHOLD": "Threshold", "MIN_AREA_HA": "Minimum area",
               "OUTPUT_PROBABILITY": "Output folder", "OUTPUT_MASK": "Output folder",
               "OUTPUT_FOOTPRINTS": "Output folder", "POLYGONS": "Footprints", "EXTENT": "Labelled extent",
               "EXCLUDE": "Do not segment inside",
               "EPOCHS": "Epochs", "OUTPUT_MODEL": "New model name"}


class CollectingFeedback(QgsProcessingFeedback):
    """Feedback that keeps the error messages, to show the one that ended a failed run."""

    def __init__(self):
        super().__init__()
        self.errors = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS API)
        self.errors.append(error)
        super().reportError(error, fatalError)


def in_dock_terms(message, algorithm):
    """A Processing error ``message`` of ``algorithm`` with the parameters it names (POLYGONS ...) named as the
    dock's fields; a parameter the dock does not show is named with where to set it."""
    def field(match):
        name = match.group(0)
        definition = algorithm.parameterDefinition(name)
        if name in DOCK_FIELDS or definition is None:
            return DOCK_FIELDS.get(name, name)
        return f"'{definition.description()}' (in Processing Toolbox › MineC2F › {algorithm.displayName()})"

    return re.sub(r"\b[A-Z][A-Z_]*[A-Z]\b", field, message)


def first_free(name, paths_of):
    """The first of ``name``, ``name_2``, ``name_3``... none of whose files ``paths_of(name)`` exists, and those
    files: new outputs overwrite nothing."""
    for number in itertools.count(1):
        candidate = name if number == 1 else f"{name}_{number}"
        paths = paths_of(candidate)
        if not any(path.exists() for path in paths):
            return candidate, paths


def footprint_summary(results):
    """"3 footprints, 12.5 ha" from the FOOTPRINT_COUNT and TOTAL_AREA_HA of a run's results."""
    count = int(results["FOOTPRINT_COUNT"])
    return f"{count} footprint{'' if count == 1 else 's'}, {results['TOTAL_AREA_HA']:,.1f} ha"


class MineC2FDock(QgsDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("MineC2F - Segment mining footprints", parent)
        self.setObjectName("MineC2FDock")
        self.iface = iface
        self.task = None
        self.algorithm = None
        self.feedback = None
        self.context = None
        self.models = []
        self.started = 0.0
        self.input_name = ""
        # (probability raster, group name, probability layer id) of the last segment run, for re-thresholding
        self.last_result = None
        self._build()
        self.missing = dependencies.missing_requirements()
        if self.missing:
            self.status.setText(dependencies.missing_message(self.missing))
            for button in (self.run_button, self.finetune_button, self.reload_models_button):
                button.setEnabled(False)
            return
        self.refresh_models()
        self._fill_devices()
        self.layer_box.layerChanged.connect(self.update_band_mapping)
        self.model_box.currentIndexChanged.connect(self.model_changed)
        self.model_changed()
        self.use_active_layer()

    def use_active_layer(self):
        """Pick the active layer when it is a raster (else the picker keeps its choice, or the first raster)."""
        layer = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(layer, QgsRasterLayer):
            self.layer_box.setLayer(layer)

    # ---- layout
    def _build(self):
        body = QWidget()
        column = QVBoxLayout(body)

        inputs = QGroupBox("Input")
        form = QFormLayout(inputs)
        self.layer_box = QgsMapLayerComboBox()
        self.layer_box.setFilters(QgsMapLayerProxyModel.RasterLayer)
        form.addRow("Raster", self.layer_box)
        self.model_box = QComboBox()
        folder = models.user_models_dir()
        self.reload_models_button = QToolButton()
        self.reload_models_button.setText("Reload")
        self.reload_models_button.setIcon(QgsApplication.getThemeIcon("/mActionRefresh.svg"))
        self.reload_models_button.setToolTip(f"Read the models folder again ({folder})")
        self.reload_models_button.clicked.connect(lambda: self.refresh_models(select=self.model_box.currentData()))
        self.models_folder_button = QToolButton()
        self.models_folder_button.setText("Folder")
        self.models_folder_button.setIcon(QgsApplication.getThemeIcon("/mIconFolderOpen.svg"))
        self.models_folder_button.setToolTip(f"Open your models folder, {folder}: the .safetensors model bundles you "
                                             "put there are offered in this list (fine-tuned models are saved there)")
        self.models_folder_button.clicked.connect(self.open_models_folder)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.reload_models_button)
        model_row.addWidget(self.models_folder_button)
        form.addRow("Model", model_row)
        self.card = QLabel()
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.card.setStyleSheet("QLabel { background: palette(base); border: 1px solid palette(mid); padding: 4px; }")
        form.addRow(self.card)
        column.addWidget(inputs)

        bands = QGroupBox("Band mapping (model band <- raster band)")
        band_column = QVBoxLayout(bands)
        self.band_table = QTableWidget(0, 2)
        self.band_table.setHorizontalHeaderLabels(["Model band", "Raster band"])
        self.band_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.band_table.verticalHeader().setVisible(False)
        band_column.addWidget(self.band_table)
        self.band_status = QLabel()
        self.band_status.setWordWrap(True)
        band_column.addWidget(self.band_status)
        column.addWidget(bands)

        settings = QGroupBox("Settings")
        form = QFormLayout(settings)
        self.device_box = QComboBox()
        form.addRow("Device", self.device_box)
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0.01, 0.99)
        self.threshold_box.setSingleStep(0.05)
        self.threshold_box.setToolTip("Pixels at or above this probability become footprint")
        form.addRow("Threshold", self.threshold_box)
        self.min_area_box = QDoubleSpinBox()
        self.min_area_box.setRange(0.0, 10000.0)
        self.min_area_box.setDecimals(2)
        self.min_area_box.setSuffix(" ha")
        self.min_area_box.setToolTip("Footprints and holes smaller than this are dropped")
        form.addRow("Minimum area", self.min_area_box)
        self.exclude_box = QgsMapLayerComboBox()
        self.exclude_box.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.exclude_box.setAllowEmptyLayer(True, "nothing")
        self.exclude_box.setLayer(None)
        self.exclude_box.setToolTip("Polygons not to segment, such as lakes, rivers or sea you know are natural (the "
                                    "model can take bright water for a tailings pond): nodata in the results")
        form.addRow("Do not segment inside", self.exclude_box)
        self._build_radiometry(form)
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder_widget.lineEdit().setPlaceholderText("temporary folder")
        form.addRow("Output folder", self.folder_widget)
        column.addWidget(settings)
        column.addWidget(self._build_finetune())

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Segment mining footprints")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        column.addLayout(buttons)
        self.rethreshold_button = QPushButton("Re-threshold the last result")
        self.rethreshold_button.setEnabled(False)
        self.rethreshold_button.setToolTip("New footprints of the last result at the threshold and minimum area "
                                           "set above, from its probability raster, without running the model "
                                           "(seconds); added to its group, the earlier files are kept")
        self.rethreshold_button.clicked.connect(self.rethreshold)
        column.addWidget(self.rethreshold_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        column.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        column.addWidget(self.status)
        column.addStretch(1)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    def _build_radiometry(self, form):
        """Rows for reflectance = DN x scale + offset: from the raster (metadata or detected) unless set here."""
        self.radiometry_box = QCheckBox("set scale and offset")
        self.radiometry_box.setToolTip("Reflectance = DN x scale + offset. Not ticked: read from the raster's "
                                       "metadata or detected (Sentinel-2 L2A with its +1000 DN offset and "
                                       "Landsat Collection 2 Level-2 SR_B* bands are recognised); the result says "
                                       "which. Tick to set them when that is wrong.")
        form.addRow("Reflectance", self.radiometry_box)
        self.scale_box = QDoubleSpinBox()
        self.scale_box.setDecimals(7)
        self.scale_box.setRange(1e-7, 100.0)
        self.scale_box.setValue(1e-4)
        self.offset_box = QDoubleSpinBox()
        self.offset_box.setDecimals(4)
        self.offset_box.setRange(-100.0, 100.0)
        for label, box in (("Scale (x DN)", self.scale_box), ("Offset (+)", self.offset_box)):
            box.setEnabled(False)
            self.radiometry_box.toggled.connect(box.setEnabled)
            form.addRow(label, box)

    def radiometry_choice(self):
        """SCALE and OFFSET parameters when the user set them, else nothing (the engine reads or detects them)."""
        if not self.radiometry_box.isChecked():
            return {}
        return {"SCALE": self.scale_box.value(), "OFFSET": self.offset_box.value()}

    def _build_finetune(self):
        box = QgsCollapsibleGroupBox("Fine-tune the model on your footprints")
        box.setObjectName("MineC2FFinetune")
        box.setCollapsed(True)
        form = QFormLayout(box)
        hint = QLabel("Trains a new model from the selected model on the raster above and footprints you "
                      "digitised precisely on it; the new model is added to the model list.")
        hint.setWordWrap(True)
        form.addRow(hint)
        self.polygons_box = QgsMapLayerComboBox()
        self.polygons_box.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.polygons_box.setAllowEmptyLayer(True)  # chosen by the analyst, never a result added to the map
        self.polygons_box.setLayer(None)
        self.polygons_box.setToolTip("Polygon layer of the footprints you digitised")
        form.addRow("Footprints", self.polygons_box)
        self.extent_box = QgsMapLayerComboBox()
        self.extent_box.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.extent_box.setAllowEmptyLayer(True, "whole raster")
        self.extent_box.setLayer(None)
        self.extent_box.setToolTip("Where every footprint is digitised: outside it nothing is learnt, inside it "
                                   "everything that is not a footprint is background. 'Whole raster' only when "
                                   "your footprints are complete over the raster.")
        form.addRow("Labelled extent", self.extent_box)
        self.epochs_box = QSpinBox()
        self.epochs_box.setRange(1, 500)
        self.epochs_box.setValue(FinetuneStudentAlgorithm.DEFAULTS["epochs"])
        self.epochs_box.setToolTip(f"Passes over the chips cut around your footprints, each at least "
                                   f"{FinetuneStudentAlgorithm.DEFAULTS['min_steps_per_epoch']} steps, so the "
                                   "default suits the polygons of one scene; validation keeps the best epoch.")
        form.addRow("Epochs", self.epochs_box)
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("automatic: <raster>_finetuned")
        form.addRow("New model name", self.model_name)
        self.teacher_box = QCheckBox("train a new teacher from scratch instead")
        self.teacher_box.setToolTip("For many coarse polygons (a mining inventory) over your rasters: a new model "
                                    "that starts from nothing (hours on a CPU) and reads the bands blue, green, red, "
                                    "NIR, SWIR1, SWIR2; fine-tune it on precise polygons afterwards.")
        self.teacher_box.toggled.connect(self.training_mode_changed)
        form.addRow(self.teacher_box)
        self.finetune_button = QPushButton("Fine-tune")
        self.finetune_button.clicked.connect(self.finetune)
        form.addRow(self.finetune_button)
        return box

    def training_mode_changed(self, teacher):
        """Fine-tune the selected model, or train a teacher from scratch: defaults and labels follow the choice."""
        algorithm = TrainTeacherAlgorithm if teacher else FinetuneStudentAlgorithm
        self.epochs_box.setValue(algorithm.DEFAULTS["epochs"])
        self.model_name.setPlaceholderText(f"automatic: <raster>_{'teacher' if teacher else 'finetuned'}")
        self.finetune_button.setText("Train teacher" if teacher else "Fine-tune")

    def _fill_devices(self):
        from model_core.device import resolve_device
        from model_core.errors import InputError

        self.device_box.addItem("Auto", "auto")
        self.device_box.addItem("CPU", "cpu")
        try:
            gpu = resolve_device("cuda")
        except InputError:  # no CUDA device, or one this PyTorch cannot run: only Auto and CPU offered
            self.device_box.setItemText(0, "Auto (no usable GPU: CPU)")
            self.device_box.setItemData(0, resolve_device("auto").name, Qt.ToolTipRole)  # says why, if a GPU is there
        else:
            self.device_box.addItem(f"GPU: {gpu.name}", "cuda")
            self.device_box.setItemText(0, f"Auto (GPU: {gpu.name})")

    # ---- model and bands
    def refresh_models(self, select=None):
        """Re-read the bundled and user models; select the one at path ``select`` if given. The threshold, minimum
        area and band table are reset only when the selected model changes; a selected model that is gone is said."""
        before = self.model_box.currentData()
        self.models = available_models()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for entry in self.models:
            self.model_box.addItem(entry.label, str(entry.path))
        if select is not None:
            self.model_box.setCurrentIndex(max(0, self.model_box.findData(str(select))))
        self.model_box.blockSignals(False)
        if before is not None and self.model_box.currentData() == before:
            entry = self.current_model()
            self.card.setText(model_card(entry) if entry else "No model")
            return
        self.model_changed()
        if select is not None and self.model_box.findData(str(select)) < 0:
            self.show_error(f"model {Path(select).name} is no longer in the models folder; "
                            f"{self.model_box.currentText()} is selected instead")

    def open_models_folder(self):
        folder = models.user_models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def current_model(self):
        index = self.model_box.currentIndex()
        return self.models[index] if 0 <= index < len(self.models) else None

    def model_changed(self):
        entry = self.current_model()
        self.card.setText(model_card(entry) if entry else "No model")
        if entry is not None and entry.spec is not None:
            self.threshold_box.setValue(entry.spec.threshold)
            self.min_area_box.setValue(entry.spec.min_area_ha)
        self.update_band_mapping()

    def update_band_mapping(self):
        """Fill the band table from the automatic match of the layer's bands to the model's; each row can be
        changed. A raster that cannot be matched leaves the rows for the user to choose."""
        import rasterio

        from model_core.bands import RasterBandInfo, match_bands
        from model_core.errors import MineC2FError

        entry, layer = self.current_model(), self.layer_box.currentLayer()
        self.band_table.setRowCount(0)
        self.band_status.clear()
        if entry is None or entry.spec is None or layer is None:
            return
        band_names = [layer.bandName(i) for i in range(1, layer.bandCount() + 1)]
        matched = [None] * len(entry.spec.bands)
        try:
            path = layer_file(layer, "Raster")
            with rasterio.open(path) as src:
                matched = match_bands(RasterBandInfo.from_dataset(src), entry.spec.band_list())
            self.band_status.setText("Matched automatically; change a row to override.")
        except (QgsProcessingException, MineC2FError, rasterio.errors.RasterioIOError) as error:
            message = in_parameter_terms(str(error), {"--bands": "choose them in the table above"})
            self.band_status.setText(f"<span style='color:#b00'>{message}</span>")
        for row, (band, index) in enumerate(zip(entry.spec.band_list(), matched)):
            self.band_table.insertRow(row)
            self.band_table.setCellWidget(row, 0, QLabel(f" {band.name} ({band.wavelength_nm:g} nm)"))
            choice = QComboBox()
            choice.addItem("(choose)", None)
            for number, name in enumerate(band_names, start=1):
                choice.addItem(name, number)
            if index is not None:
                choice.setCurrentIndex(index)
            self.band_table.setCellWidget(row, 1, choice)
        self.band_table.setFixedHeight(self.band_table.horizontalHeader().height() +
                                       self.band_table.verticalHeader().length() + 2 * self.band_table.frameWidth())

    def band_mapping_text(self):
        """The table as a BANDS parameter ("B02=1,B03=2,..."); raises QgsProcessingException for an unset row."""
        entry, pairs = self.current_model(), []
        for row, band in enumerate(entry.spec.band_list()):
            index = self.band_table.cellWidget(row, 1).currentData()
            if index is None:
                raise QgsProcessingException(f"choose the raster band for model band {band.name} in the band table")
            pairs.append(f"{band.name}={index}")
        return ",".join(pairs)

    # ---- running
    def inputs(self):
        """(raster file, model entry) of the current choices; raises QgsProcessingException for a missing one."""
        layer = self.layer_box.currentLayer()
        entry = self.current_model()
        if layer is None:
            raise QgsProcessingException("choose a raster layer first (add one to the project if the list is empty)")
        if entry is None or entry.spec is None:
            raise QgsProcessingException(entry.error if entry else "no model found; reinstall the plugin")
        return layer_file(layer, "Raster"), entry

    def parameters(self):
        """minec2f:segment parameters for the current choices, with output names that overwrite nothing."""
        from model_core.pipeline import output_paths

        input_path, entry = self.inputs()
        folder = Path(self.folder_widget.filePath() or QgsProcessingUtils.tempFolder()).expanduser()
        if not folder.is_absolute():
            raise QgsProcessingException(f"output folder '{folder}' is not a full path; choose the folder with the "
                                         "... button")
        _, paths = first_free(input_path.stem, lambda stem: output_paths(Path(f"{stem}.tif"), folder))
        exclude = self.exclude_box.currentLayer()
        return {"INPUT": str(input_path), "MODEL": str(entry.path), "BANDS": self.band_mapping_text(),
                "DEVICE": [key for key, _ in DEVICES].index(self.device_box.currentData()),
                "THRESHOLD": self.threshold_box.value(), "MIN_AREA_HA": self.min_area_box.value(),
                "EXCLUDE": exclude.id() if exclude is not None else None,
                "OUTPUT_PROBABILITY": str(paths[0]), "OUTPUT_MASK": str(paths[1]),
                "OUTPUT_FOOTPRINTS": str(paths[2]), **self.radiometry_choice()}

    def finetune_parameters(self):
        """minec2f:finetune_student parameters: the selected model as teacher, the selected raster and band
        mapping, the digitised footprints; the new model is written to the user models folder. With "train a new
        teacher" ticked, minec2f:train_teacher's: no teacher, and the band table only if it is for the same bands."""
        input_path, entry = self.inputs()
        polygons = self.polygons_box.currentLayer()
        if polygons is None:
            raise QgsProcessingException("choose the polygon layer of the footprints you digitised (add one to the "
                                         "project if the list is empty)")
        folder = models.user_models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = self.model_name.text().strip()
        if not name:
            name, _ = first_free(f"{input_path.stem}_{'teacher' if self.teacher_box.isChecked() else 'finetuned'}",
                                 lambda candidate: [folder / f"{candidate}.safetensors"])
        elif not re.fullmatch(r"[\w-]{1,100}", name):
            raise QgsProcessingException(f"model name '{name[:40]}{'...' if len(name) > 40 else ''}': use up to 100 "
                                         "letters, digits, '-' and '_'")
        elif (folder / f"{name}.safetensors").exists():
            raise QgsProcessingException(f"a model named '{name}' exists already; choose another name")
        extent = self.extent_box.currentLayer()
        parameters = {"RASTERS": [str(input_path)], "POLYGONS": polygons.id(),
                      "EXTENT": extent.id() if extent is not None else None, "EPOCHS": self.epochs_box.value(),
                      "DEVICE": [key for key, _ in DEVICES].index(self.device_box.currentData()),
                      "OUTPUT_MODEL": str(folder / f"{name}.safetensors"), **self.radiometry_choice()}
        if not self.teacher_box.isChecked():
            return {**parameters, "TEACHER": str(entry.path), "METHOD": DEFAULT_METHOD,
                    "BANDS": self.band_mapping_text()}
        from model_core.bands import DEFAULT_MODEL_BANDS

        same_bands = [band.name for band in entry.spec.band_list()] == [band.name for band in DEFAULT_MODEL_BANDS]
        return {**parameters, "BANDS": self.band_mapping_text() if same_bands else ""}

    def run(self):
        """Start minec2f:segment as a background task (QGIS stays responsive)."""
        try:
            parameters = self.parameters()
        except QgsProcessingException as error:
            self.show_error(error.args[0] if error.args else str(error))
            return
        self.input_name = self.layer_box.currentLayer().name()
        self.start(ALGORITHM_ID, parameters, "Segmenting...", self.segmented)

    def rethreshold_parameters(self):
        """minec2f:polygonize parameters for the last result at the current threshold and minimum area, with
        output names beside it that say both and overwrite nothing."""
        from model_core.rethreshold import scene_stem

        prob_path = Path(self.last_result[0])
        if not prob_path.exists():
            raise QgsProcessingException(f"the last result's probability raster {prob_path} is gone; run Segment "
                                         "mining footprints again")
        threshold, min_area = self.threshold_box.value(), self.min_area_box.value()
        stem = scene_stem(prob_path)
        _, (mask, footprints) = first_free(
            f"{stem}_t{threshold:g}_min{min_area:g}ha",
            lambda name: [prob_path.parent / f"{name}{end}" for end in ("_mask.tif", "_footprints.gpkg")])
        return {"INPUT": str(prob_path), "THRESHOLD": threshold, "MIN_AREA_HA": min_area,
                "OUTPUT_MASK": str(mask), "OUTPUT_FOOTPRINTS": str(footprints)}

    def rethreshold(self):
        """Start minec2f:polygonize on the last result's probability raster as a background task."""
        try:
            parameters = self.rethreshold_parameters()
        except QgsProcessingException as error:
            self.show_error(error.args[0] if error.args else str(error))
            return
        self.start(POLYGONIZE_ID, parameters, "Tracing footprints...", self.rethresholded)

    def finetune(self):
        """Start minec2f:finetune_student (or train_teacher) as a background task, into the user models folder."""
        try:
            parameters = self.finetune_parameters()
        except QgsProcessingException as error:
            self.show_error(error.args[0] if error.args else str(error))
            return
        if self.teacher_box.isChecked():
            self.start(TEACHER_ID, parameters, "Training a teacher (hours on a CPU)...", self.finetuned)
        else:
            self.start(FINETUNE_ID, parameters, "Fine-tuning (minutes to hours on a CPU)...", self.finetuned)

    def start(self, algorithm_id, parameters, message, done):
        """Run ``algorithm_id`` as a background task; ``done(results, parameters)`` follows success (results)
        or cancelling (None); a failure shows its error."""
        self.algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = CollectingFeedback()
        ok, message = self.algorithm.checkParameterValues(parameters, self.context)
        if not ok:
            self.show_error(in_dock_terms(message, self.algorithm))
            return
        self.feedback.progressChanged.connect(lambda percent: self.progress.setValue(int(percent)))
        self.task = QgsProcessingAlgRunnerTask(self.algorithm, parameters, self.context, self.feedback)
        if self.task.isCanceled():  # prepareAlgorithm failed (e.g. a layer that cannot be copied): it never runs
            self.task = None
            error = self.feedback.errors[-1] if self.feedback.errors else "the run could not start; see the log"
            self.show_error(in_dock_terms(error, self.algorithm))
            return
        self.task.executed.connect(lambda ok, results: self.finished(ok, results, parameters, done))
        self.started = time.monotonic()
        self.set_running(True)
        self.progress.setValue(0)
        self.status.setText(message)
        QgsApplication.taskManager().addTask(self.task)

    def set_running(self, running):
        self.run_button.setEnabled(not running)
        self.rethreshold_button.setEnabled(not running and self.last_result is not None)
        self.finetune_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def cancel(self):
        if self.task is not None:
            self.status.setText("Cancelling...")
            self.task.cancel()

    def stop(self):
        """Cancel a running task without updating the dock (which is going away): its outputs are not written."""
        if self.task is not None:
            self.task.executed.disconnect()
            self.feedback.progressChanged.disconnect()
            self.task.cancel()
            self.task = None

    def finished(self, ok, results, parameters, done):
        self.set_running(False)
        canceled = self.feedback.isCanceled()
        self.task = None
        if not ok:
            self.progress.setValue(0)
            if not canceled:
                error = self.feedback.errors[-1] if self.feedback.errors else "the run failed; see the log"
                self.show_error(in_dock_terms(error, self.algorithm))
                return
        done(results if ok else None, parameters)

    def segmented(self, results, parameters):
        if results is None:
            self.status.setText("Cancelled; no output was written.")
            return
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        self.last_result = (results["OUTPUT_PROBABILITY"], self.input_name, None)
        self.rethreshold_button.setEnabled(True)
        try:
            _, (_, probability) = add_results(self.input_name, results["OUTPUT_PROBABILITY"],
                                              results["OUTPUT_FOOTPRINTS"], canvas=canvas)
        except ValueError as error:
            self.show_error(f"the results were written to {Path(parameters['OUTPUT_FOOTPRINTS']).parent} but could "
                            f"not be added to the map: {error}")
            return
        self.last_result = (results["OUTPUT_PROBABILITY"], self.input_name, probability.id())
        seconds = time.monotonic() - self.started
        folder = Path(parameters["OUTPUT_FOOTPRINTS"]).parent
        self.status.setText(f"<b>{footprint_summary(results)}</b>"
                            f" in {seconds:.1f} s; files in {html.escape(folder.name)}/<br>"
                            f"{html.escape(in_dock_terms(results['REFLECTANCE'], self.algorithm), quote=False)}")
        self.status.setToolTip(str(folder))

    def rethresholded(self, results, parameters):
        if results is None:
            self.status.setText("Cancelled; no output was written.")
            return
        setting = f"threshold {parameters['THRESHOLD']:g}, minimum area {parameters['MIN_AREA_HA']:g} ha"
        try:
            add_footprints(self.last_result[1], results["OUTPUT_FOOTPRINTS"], f"{FOOTPRINTS_LAYER_NAME} ({setting})",
                           beside=self.last_result[2])
        except ValueError as error:
            self.show_error(f"the footprints were written to {results['OUTPUT_FOOTPRINTS']} but could not be added "
                            f"to the map: {error}")
            return
        footprints = Path(results["OUTPUT_FOOTPRINTS"])
        files = footprints.stem[: -len("_footprints")]
        self.status.setText(f"<b>{footprint_summary(results)}</b> at {setting}; files {html.escape(files)}_* in "
                            f"{html.escape(footprints.parent.name)}/")
        self.status.setToolTip(str(footprints.parent))

    def finetuned(self, results, parameters):
        """Offer the new model (or, after cancelling, the best one so far) in the model list, selected."""
        model = Path(parameters["OUTPUT_MODEL"])
        if model.exists():
            self.refresh_models(select=model)
        if results is None:
            self.status.setText(f"Cancelled; the best model so far is kept as {model.stem}." if model.exists()
                                else "Cancelled; no model was written.")
            return
        minutes = (time.monotonic() - self.started) / 60
        if int(results["BEST_EPOCH"]) == 0:
            self.status.setText(f"<b>New model {model.stem}</b> (selected above) is the teacher unchanged: no epoch "
                                f"beat its validation IoU of {results['VAL_IOU']:.3f} on your polygons, in "
                                f"{minutes:.1f} min. Digitise more polygons or train for more epochs.")
        else:
            reflectance = html.escape(in_dock_terms(results["REFLECTANCE"], self.algorithm), quote=False)
            how = (f" by plain fine-tuning (the teacher, trained on coarse outlines, scored below IoU "
                   f"{defaults.WEAK_TEACHER_IOU} on your polygons, too little to distil from)"
                   if results["METHOD_USED"] == "finetune" else "")
            self.status.setText(f"<b>New model {model.stem}</b> (selected above){how}: validation IoU "
                                f"{results['VAL_IOU']:.3f}, F1 {results['VAL_F1']:.3f} at epoch "
                                f"{int(results['BEST_EPOCH'])} on held-out parts of your rasters, in "
                                f"{minutes:.1f} min. Check it on a scene you did not digitise before relying on it."
                                f"<br>{reflectance}")
        self.status.setToolTip(str(model))

    def show_error(self, message):
        self.status.setText(f"<span style='color:#b00'>{html.escape(message, quote=False)}</span>")
