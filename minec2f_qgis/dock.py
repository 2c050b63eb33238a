"""The MineC2F dock: pick a raster, a model and settings, run minec2f:segment as a background task, and see the
results on the map."""

import time
from pathlib import Path

from qgis.core import (QgsApplication, QgsMapLayerProxyModel, QgsProcessingAlgRunnerTask, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingUtils, QgsProject)
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView,
                                 QLabel, QProgressBar, QPushButton, QScrollArea, QTableWidget, QVBoxLayout, QWidget)

from . import dependencies
from .algorithms.common import layer_file
from .algorithms.segment import DEVICES
from .layers import add_results
from .models import available_models, model_card

ALGORITHM_ID = "minec2f:segment"


class CollectingFeedback(QgsProcessingFeedback):
    """Feedback that keeps the error messages, to show the one that ended a failed run."""

    def __init__(self):
        super().__init__()
        self.errors = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS API)
        self.errors.append(error)
        super().reportError(error, fatalError)


class MineC2FDock(QgsDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("MineC2F - Segment mining footprints", parent)
        self.setObjectName("MineC2FDock")
        self.iface = iface
        self.task = None
        self.feedback = None
        self.context = None
        self.models = []
        self.started = 0.0
        self.input_name = ""
        self._build()
        self.missing = dependencies.missing_requirements()
        if self.missing:
            self.status.setText(dependencies.missing_message(self.missing))
            self.run_button.setEnabled(False)
            return
        self.refresh_models()
        self._fill_devices()
        self.layer_box.layerChanged.connect(self.update_band_mapping)
        self.model_box.currentIndexChanged.connect(self.model_changed)
        self.model_changed()
        if iface is not None and iface.activeLayer() is not None:
            self.layer_box.setLayer(iface.activeLayer())

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
        form.addRow("Model", self.model_box)
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
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder_widget.lineEdit().setPlaceholderText("temporary folder")
        form.addRow("Output folder", self.folder_widget)
        column.addWidget(settings)

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

    def _fill_devices(self):
        from model_core.device import resolve_device
        from model_core.errors import InputError

        self.device_box.addItem("Auto", "auto")
        self.device_box.addItem("CPU", "cpu")
        try:
            gpu = resolve_device("cuda")
        except InputError:  # no CUDA device: only Auto and CPU are offered
            self.device_box.setItemText(0, "Auto (no GPU found: CPU)")
        else:
            self.device_box.addItem(f"GPU: {gpu.name}", "cuda")
            self.device_box.setItemText(0, f"Auto (GPU: {gpu.name})")

    # ---- model and bands
    def refresh_models(self, select=None):
        """Re-read the bundled and user models; select the one at path ``select`` if given."""
        self.models = available_models()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for entry in self.models:
            self.model_box.addItem(entry.label, str(entry.path))
        if select is not None:
            self.model_box.setCurrentIndex(max(0, self.model_box.findData(str(select))))
        self.model_box.blockSignals(False)
        self.model_changed()

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
            self.band_status.setText(f"<span style='color:#b00'>{error}</span>")
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
    def parameters(self):
        """minec2f:segment parameters for the current choices, with output names that overwrite nothing."""
        from model_core.pipeline import output_paths

        layer = self.layer_box.currentLayer()
        entry = self.current_model()
        if layer is None:
            raise QgsProcessingException("choose a raster layer first (add one to the project if the list is empty)")
        if entry is None or entry.spec is None:
            raise QgsProcessingException(entry.error if entry else "no model found; reinstall the plugin")
        input_path = layer_file(layer, "Raster")
        folder = Path(self.folder_widget.filePath() or QgsProcessingUtils.tempFolder())
        number = 1
        while True:
            stem = input_path.stem if number == 1 else f"{input_path.stem}_{number}"
            paths = output_paths(Path(f"{stem}.tif"), folder)
            if not any(path.exists() for path in paths):
                break
            number += 1
        return {"INPUT": str(input_path), "MODEL": str(entry.path), "BANDS": self.band_mapping_text(),
                "DEVICE": [key for key, _ in DEVICES].index(self.device_box.currentData()),
                "THRESHOLD": self.threshold_box.value(), "MIN_AREA_HA": self.min_area_box.value(),
                "OUTPUT_PROBABILITY": str(paths[0]), "OUTPUT_MASK": str(paths[1]),
                "OUTPUT_FOOTPRINTS": str(paths[2])}

    def run(self):
        """Start minec2f:segment as a background task (QGIS stays responsive)."""
        try:
            parameters = self.parameters()
        except QgsProcessingException as error:
            self.show_error(error.args[0] if error.args else str(error))
            return
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = CollectingFeedback()
        self.feedback.progressChanged.connect(lambda percent: self.progress.setValue(int(percent)))
        self.task = QgsProcessingAlgRunnerTask(algorithm, parameters, self.context, self.feedback)
        self.task.executed.connect(lambda ok, results: self.finished(ok, results, parameters))
        self.started = time.monotonic()
        self.input_name = self.layer_box.currentLayer().name()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText("Segmenting...")
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self):
        if self.task is not None:
            self.status.setText("Cancelling...")
            self.task.cancel()

    def finished(self, ok, results, parameters):
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        canceled = self.feedback.isCanceled()
        self.task = None
        if not ok:
            self.progress.setValue(0)
            if canceled:
                self.status.setText("Cancelled; no output was written.")
            else:
                self.show_error(self.feedback.errors[-1] if self.feedback.errors else "the run failed; see the log")
            return
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        add_results(self.input_name, results["OUTPUT_PROBABILITY"], results["OUTPUT_FOOTPRINTS"], canvas=canvas)
        seconds = time.monotonic() - self.started
        folder = Path(parameters["OUTPUT_FOOTPRINTS"]).parent
        self.status.setText(f"<b>{int(results['FOOTPRINT_COUNT'])} footprints, {results['TOTAL_AREA_HA']:,.1f} ha</b>"
                            f" in {seconds:.1f} s; files in {folder.name}/")
        self.status.setToolTip(str(folder))

    def show_error(self, message):
        self.status.setText(f"<span style='color:#b00'>{message}</span>")
