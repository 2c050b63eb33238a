"""minec2f:export_chips - the training chips of rasters + polygons as GeoTIFF image/mask pairs."""

from pathlib import Path

from qgis.core import (QgsProcessingOutputNumber, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber)

from .common import RADIOMETRY_HELP, engine_errors
from .training import INPUTS_HELP, LabelledDataAlgorithm

HELP = f"""Cuts rasters and footprint polygons into the square chips a MineC2F training sees, and writes them as \
GeoTIFF pairs, to inspect the labels or to train with other tools.
<h3>Parameters</h3>
{INPUTS_HELP}
<b>Chip size / stride</b>: chip width in pixels and the step between chips (not set: the chip size, no overlap); \
the last row and column of chips are flush with the raster edge. Chips with less than a quarter of labelled \
pixels are skipped. <b>Validation share</b> (advanced): chips put in the validation split, by location (0: none).
{RADIOMETRY_HELP} They are written to the chips' metadata and decide which chips count as hard negatives (bare \
ground that is not a mine).
<h3>Outputs</h3>
<b>Output folder</b>: <code>image/</code> (all raster bands, original values, with the reflectance scale and \
offset as band metadata), <code>mask/</code> (1 footprint, 0 background, 255 ignored) and <code>index.csv</code> \
(file names, train/val split by location, footprint share, hard negatives, scale and offset). The folder appears \
only when complete. An existing folder is replaced only when it is empty or holds an earlier export (its \
index.csv, and in image/ and mask/ only the chips it lists); any other folder is refused, as is one holding the \
inputs. CHIP_COUNT: chips written."""


class ExportChipsAlgorithm(LabelledDataAlgorithm):
    STRIDE = "STRIDE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    CHIP_COUNT = "CHIP_COUNT"
    ENGINE_OPTIONS = {**LabelledDataAlgorithm.ENGINE_OPTIONS, **LabelledDataAlgorithm.RADIOMETRY_OPTIONS,
                      "--stride": STRIDE, "--out-dir": OUTPUT_FOLDER}

    def name(self):
        return "export_chips"

    def displayName(self):  # noqa: N802 (QGIS API)
        return "Export training chips"

    def shortDescription(self):  # noqa: N802 (QGIS API)
        return "Training chips of rasters and footprint polygons as GeoTIFF image/mask pairs"

    def shortHelpString(self):  # noqa: N802 (QGIS API)
        return HELP

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_data_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE, "Stride in pixels (not set: the chip size)", QgsProcessingParameterNumber.Integer,
            optional=True, minValue=1))
        for parameter in self.radiometry_parameters():
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputNumber(self.CHIP_COUNT, "Number of chips"))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        self.output_folder(parameters, context)

    def output_folder(self, parameters, context):
        """The output folder: new, empty or an earlier export (which is then replaced), without the inputs in it."""
        from model_core.data import check_export_folder

        folder = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_FOLDER, context))
        inputs = self.raster_files(parameters, context)
        with engine_errors(self.ENGINE_OPTIONS):
            check_export_folder(folder, inputs, overwrite=True)
        return folder

    def process(self, parameters, context, feedback):
        from model_core.data import export_chips

        stride = self.parameterAsInt(parameters, self.STRIDE, context) if parameters.get(self.STRIDE) else None
        result = export_chips(
            self.rasters, self.polygons, self.output_folder(parameters, context), extent=self.extent,
            chip_size=self.parameterAsInt(parameters, self.CHIP_SIZE, context), stride=stride,
            val_fraction=self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
            **self.radiometry(parameters, context), overwrite=True,
            progress=feedback.setProgress, is_canceled=feedback.isCanceled, log=self.engine_log(feedback))
        return {self.OUTPUT_FOLDER: result.out_dir, self.CHIP_COUNT: result.train_count + result.val_count}
