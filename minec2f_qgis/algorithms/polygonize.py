"""minec2f:polygonize - a footprint probability raster to a new mask and polygons, without running the model."""

from qgis.core import (QgsProcessing, QgsProcessingOutputNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterVectorDestination)

from ..layers import style_on_load
from ..resources import FOOTPRINTS_STYLE
from .common import MineC2FAlgorithm, layer_file

HELP = """Thresholds a footprint probability raster written by <i>Segment mining footprints</i> again and traces its \
footprints, without running the model: try another threshold or minimum area in seconds.
<h3>Parameters</h3>
<b>Footprint probability raster</b>: the probability output of Segment mining footprints (it records the model, \
threshold and minimum area it was written with). A footprint mask or another raster is refused.
<b>Probability threshold</b>: pixels at or above it become footprint (0-1). Lower finds more, with more false \
alarms. Not set: the threshold Segment used.
<b>Minimum footprint area (ha)</b>: smaller polygons and holes are dropped. Not set: the value Segment used.
<h3>Outputs</h3>
<b>Footprint mask</b>: GeoTIFF on the probability raster's grid, 1 = footprint, 0 = background, 255 = nodata; \
the pixels of the polygons (specks and holes below the minimum area removed here too).
<b>Mining footprints</b>: GeoPackage polygons with area_ha (true area), perimeter_m, mean_prob, max_prob, model \
and source, as Segment writes them; also the numbers FOOTPRINT_COUNT and TOTAL_AREA_HA.
Output files that exist are replaced, as in every Processing algorithm; a cancelled or failed run writes nothing."""


class PolygonizeAlgorithm(MineC2FAlgorithm):
    INPUT = "INPUT"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_FOOTPRINTS = "OUTPUT_FOOTPRINTS"
    FOOTPRINT_COUNT = "FOOTPRINT_COUNT"
    TOTAL_AREA_HA = "TOTAL_AREA_HA"
    ENGINE_OPTIONS = MineC2FAlgorithm.FOOTPRINT_OPTIONS
    RASTER_HINT = "choose the footprint probability raster that Segment mining footprints wrote"

    def name(self):
        return "polygonize"

    def displayName(self):  # noqa: N802 (QGIS API)
        return "Footprints from a probability raster"

    def shortDescription(self):  # noqa: N802 (QGIS API)
        return "A new footprint mask and polygons at another threshold or minimum area, without the model"

    def shortHelpString(self):  # noqa: N802 (QGIS API)
        return HELP

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Footprint probability raster"))
        for parameter in self.footprint_parameters("the one Segment used"):
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MASK, "Footprint mask", optional=True,
                                                                  createByDefault=True))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_FOOTPRINTS, "Mining footprints", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber(self.FOOTPRINT_COUNT, "Number of footprints"))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL_AREA_HA, "Total footprint area (ha)"))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        layer_file(self.parameterAsRasterLayer(parameters, self.INPUT, context), self.INPUT)

    def process(self, parameters, context, feedback):
        from model_core.rethreshold import polygonize_probability

        input_path = layer_file(self.parameterAsRasterLayer(parameters, self.INPUT, context), self.INPUT)
        mask_path = self.output_path(parameters, self.OUTPUT_MASK, context, (".tif", ".tiff"))
        footprints_path = self.output_path(parameters, self.OUTPUT_FOOTPRINTS, context, (".gpkg",))
        result = polygonize_probability(
            input_path, mask_path, footprints_path,
            threshold=self.optional_number(parameters, self.THRESHOLD, context, float),
            min_area_ha=self.optional_number(parameters, self.MIN_AREA_HA, context, float),
            overwrite=True,  # Processing's file dialogs already asked; temporary outputs are fresh names
            progress=feedback.setProgress, is_canceled=feedback.isCanceled, log=self.engine_log(feedback))
        style_on_load(context, str(footprints_path), FOOTPRINTS_STYLE)
        return {self.OUTPUT_MASK: str(result.mask_path), self.OUTPUT_FOOTPRINTS: str(result.footprints_path),
                self.FOOTPRINT_COUNT: result.footprint_count, self.TOTAL_AREA_HA: result.total_area_ha}
