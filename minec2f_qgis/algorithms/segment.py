"""minec2f:segment - a multispectral raster to footprint probability, mask and polygons."""

from qgis.core import (QgsProcessing, QgsProcessingOutputNumber, QgsProcessingOutputString,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterFile, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsProcessingParameterVectorDestination)

from ..layers import style_on_load
from ..resources import FOOTPRINTS_STYLE, PROBABILITY_STYLE
from .common import DEVICES, RADIOMETRY_HELP, MineC2FAlgorithm, advanced, in_parameter_terms, layer_file

HELP = """Finds mining footprints (open pits, quarries, tailings ponds, waste dumps, haul roads) in a multispectral \
scene with a MineC2F model and writes a probability raster, a footprint mask and footprint polygons.
<h3>Parameters</h3>
<b>Multispectral raster</b>: a Sentinel-2, Landsat 7/8/9 or other scene with the model's bands (the bundled model \
needs blue, green, red, NIR, SWIR1, SWIR2), saved as a file (GeoTIFF, VRT, ...). Any CRS.
<b>Model bundle</b>: a MineC2F .safetensors file; empty uses the model bundled with the plugin.
<b>Band mapping</b>: which raster band feeds each model band, e.g. <code>B02=1,B03=2,B04=3,B08=4,B11=5,B12=6</code>. \
Empty: bands are matched by their descriptions (B02, Blue, SR_B2, ...) or by the standard Sentinel-2 / Landsat band \
order.
""" + RADIOMETRY_HELP + """
<b>Device</b>: Auto uses an NVIDIA GPU (CUDA) when PyTorch sees one, else the CPU; CPU always uses the processor; \
CUDA insists on the GPU and stops with an error when PyTorch sees none.
<b>Probability threshold</b>: pixels at or above it become footprint (0-1). Lower finds more, with more false \
alarms. Not set: the model's recommended value.
<b>Minimum footprint area (ha)</b>: smaller polygons and holes are dropped. Not set: the model's value.
<b>Tile size / overlap (pixels)</b>: the scene is processed in overlapping tiles, blended without seams. Not set: \
the model's values. Larger tiles are faster on a GPU and need more memory.
<b>Extent</b>: only segment inside this extent (any CRS; it is transformed to the raster's). Not set: whole raster.
<b>Do not segment inside</b>: polygons (any CRS) whose pixels are left out, e.g. lakes, rivers or sea you know are \
natural (the bundled model can take water as bright as tailings water for a tailings pond). They are nodata in the \
outputs.
<h3>Outputs</h3>
<b>Footprint probability</b>: GeoTIFF on the input's grid, 0-254 = probability 0-1, 255 = nodata.
<b>Footprint mask</b>: GeoTIFF, 1 = footprint, 0 = background, 255 = nodata; the pixels of the polygons (specks \
and holes below the minimum area removed here too).
<b>Mining footprints</b>: GeoPackage polygons with area_ha (true area), perimeter_m, mean_prob, max_prob, model \
and source; also the numbers FOOTPRINT_COUNT and TOTAL_AREA_HA for models and scripts, and REFLECTANCE: the \
scale and offset used and why.
Output files that exist are replaced, as in every Processing algorithm; a cancelled or failed run writes nothing."""


class SegmentAlgorithm(MineC2FAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    EXTENT = "EXTENT"
    EXCLUDE = "EXCLUDE"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_FOOTPRINTS = "OUTPUT_FOOTPRINTS"
    FOOTPRINT_COUNT = "FOOTPRINT_COUNT"
    TOTAL_AREA_HA = "TOTAL_AREA_HA"
    REFLECTANCE = "REFLECTANCE"
    ENGINE_OPTIONS = {**MineC2FAlgorithm.ENGINE_OPTIONS, **MineC2FAlgorithm.RADIOMETRY_OPTIONS,
                      **MineC2FAlgorithm.FOOTPRINT_OPTIONS, "--model": MODEL, "--device": DEVICE, "--tile": TILE_SIZE,
                      "--overlap": OVERLAP, "--bounds": EXTENT, "--exclude": EXCLUDE}
    RASTER_HINT = "choose the multispectral raster layer or file to segment"

    def name(self):
        return "segment"

    def displayName(self):
        return "Segment mining footprints"

    def shortDescription(self):
        return "Mining footprint probability, mask and polygons from a multispectral raster"

    def shortHelpString(self):
        return HELP

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Multispectral raster"))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model bundle (empty: the bundled model)", extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Band mapping, e.g. B02=1,B03=2,... (empty: automatic)", optional=True))
        for parameter in self.radiometry_parameters():
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, "Device", options=[label for _, label in DEVICES], defaultValue=0))
        for parameter in self.footprint_parameters("the model's"):
            self.addParameter(parameter)
        for name, label, minimum in ((self.TILE_SIZE, "Tile size in pixels (not set: the model's)", 32),
                                     (self.OVERLAP, "Tile overlap in pixels (not set: the model's)", 0)):
            self.addParameter(advanced(QgsProcessingParameterNumber(
                name, label, QgsProcessingParameterNumber.Integer, optional=True, minValue=minimum)))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Only segment inside this extent", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXCLUDE, "Do not segment inside these polygons (e.g. natural water)",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        # Optional (created by default) so that `qgis_process run minec2f:segment -- INPUT=.. OUTPUT_FOOTPRINTS=..`
        # works; when skipped they are written to Processing's temporary folder.
        for name, label in ((self.OUTPUT_PROBABILITY, "Footprint probability"), (self.OUTPUT_MASK, "Footprint mask")):
            self.addParameter(QgsProcessingParameterRasterDestination(name, label, optional=True,
                                                                      createByDefault=True))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_FOOTPRINTS, "Mining footprints", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber(self.FOOTPRINT_COUNT, "Number of footprints"))
        self.addOutput(QgsProcessingOutputNumber(self.TOTAL_AREA_HA, "Total footprint area (ha)"))
        self.addOutput(QgsProcessingOutputString(self.REFLECTANCE, "Reflectance scale and offset used, and why"))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        layer_file(self.parameterAsRasterLayer(parameters, self.INPUT, context), self.INPUT)
        self.band_mapping(parameters, context)
        self.polygon_layer(parameters, self.EXCLUDE, context)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.exclude = self.polygon_file(parameters, self.EXCLUDE, context)
        return True

    def process(self, parameters, context, feedback):
        from model_core.paths import DEFAULT_MODEL
        from model_core.pipeline import segment_scene

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        input_path = layer_file(layer, self.INPUT)
        model = self.parameterAsFile(parameters, self.MODEL, context) or DEFAULT_MODEL
        bounds = None
        if str(parameters.get(self.EXTENT) or "").strip():  # not set: None, or an empty text from scripts
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            bounds = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
        outputs = {name: self.output_path(parameters, name, context, suffixes)
                   for name, suffixes in ((self.OUTPUT_PROBABILITY, (".tif", ".tiff")),
                                          (self.OUTPUT_MASK, (".tif", ".tiff")),
                                          (self.OUTPUT_FOOTPRINTS, (".gpkg",)))}
        result = segment_scene(
            input_path, model, outputs[self.OUTPUT_PROBABILITY], outputs[self.OUTPUT_MASK],
            outputs[self.OUTPUT_FOOTPRINTS],
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)][0],
            tile=self.optional_number(parameters, self.TILE_SIZE, context, int),
            overlap=self.optional_number(parameters, self.OVERLAP, context, int),
            threshold=self.optional_number(parameters, self.THRESHOLD, context, float),
            min_area_ha=self.optional_number(parameters, self.MIN_AREA_HA, context, float),
            band_mapping=self.band_mapping(parameters, context), **self.radiometry(parameters, context),
            bounds=bounds, exclude=self.exclude,
            overwrite=True,  # Processing's file dialogs already asked; temporary outputs are fresh names
            progress=feedback.setProgress, is_canceled=feedback.isCanceled, log=self.engine_log(feedback))
        feedback.pushInfo(f"{result.footprint_count} footprints, {result.total_area_ha:.2f} ha "
                          f"(device: {result.device_name})")
        for name, style in ((self.OUTPUT_PROBABILITY, PROBABILITY_STYLE), (self.OUTPUT_FOOTPRINTS, FOOTPRINTS_STYLE)):
            style_on_load(context, str(outputs[name]), style)
        return {self.OUTPUT_PROBABILITY: str(result.prob_path), self.OUTPUT_MASK: str(result.mask_path),
                self.OUTPUT_FOOTPRINTS: str(result.footprints_path),
                self.FOOTPRINT_COUNT: result.footprint_count, self.TOTAL_AREA_HA: result.total_area_ha,
                self.REFLECTANCE: in_parameter_terms(f"{result.radiometry} ({result.radiometry_reason})",
                                                     self.ENGINE_OPTIONS)}
