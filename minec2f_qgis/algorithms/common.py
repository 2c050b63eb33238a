"""What the MineC2F Processing algorithms share: the base class (icon, dependency gate), engine errors as
Processing errors, and input layers as files for the engine."""

import re
from contextlib import contextmanager
from pathlib import Path

from qgis.core import (QgsCoordinateTransformContext, QgsMapLayer, QgsProcessing, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingFeatureSourceDefinition, QgsProcessingParameterDefinition,
                       QgsProcessingParameterFile, QgsProcessingParameterMultipleLayers, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingUtils, QgsRasterLayer, QgsVectorFileWriter,
                       QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtGui import QIcon

from ..dependencies import missing_message, missing_requirements
from ..resources import ICON_PATH

DEVICES = [("auto", "Auto (GPU if available, else CPU)"), ("cpu", "CPU"), ("cuda", "CUDA GPU")]
RADIOMETRY_HELP = """<b>Reflectance scale / offset</b> (advanced): reflectance = DN x scale + offset. Not set: read \
from the raster's metadata or detected (Sentinel-2 L2A with the +1000 DN offset of processing baseline 04.00 and \
later, and Landsat Collection 2 Level-2 bands named SR_B1... at scale 0.0000275, offset -0.2, are recognised); the log \
says which. Set them when the log's guess is wrong, e.g. offset 0 for a bright desert scene that has no offset."""


class MineC2FAlgorithm(QgsProcessingAlgorithm):
    """Base of the MineC2F algorithms. Parameter checks fail first with the pip command when the engine's
    packages are missing, so the algorithms stay listed (and explain themselves) in any QGIS. ``ENGINE_OPTIONS``
    maps the command-line options that engine messages name to this algorithm's parameters."""
    BANDS = "BANDS"
    THRESHOLD = "THRESHOLD"
    MIN_AREA_HA = "MIN_AREA_HA"
    SCALE = "SCALE"
    OFFSET = "OFFSET"
    ENGINE_OPTIONS = {"--bands": BANDS}
    RASTER_HINT = "choose a raster layer or file"  # for a layer given to a raster parameter that is not a raster
    RADIOMETRY_OPTIONS = {"--scale": SCALE, "--offset": OFFSET}  # for algorithms with radiometry_parameters()
    FOOTPRINT_OPTIONS = {"--threshold": THRESHOLD, "--min-area-ha": MIN_AREA_HA}  # with footprint_parameters()
    GROUP = "Footprints"  # the toolbox group: Footprints (segment, polygonize, evaluate) or Training

    def icon(self):
        return QIcon(str(ICON_PATH))

    def group(self):
        return self.GROUP

    def groupId(self):  # noqa: N802 (QGIS API)
        return self.GROUP.lower()

    def createInstance(self):  # noqa: N802 (QGIS API)
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API)
        missing = missing_requirements()
        if missing:
            return False, missing_message(missing)
        wrong = self.layers_that_are_not_rasters(parameters, context) or self.files_of_another_kind(parameters)
        if wrong:
            return False, wrong
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self.check_parameters(parameters, context)
        except QgsProcessingException as error:
            return False, str(error)
        return True, ""

    def layers_that_are_not_rasters(self, parameters, context):
        """A message for a layer given to a raster layer parameter that is not a raster (QGIS's own check says only
        "invalid value"), or ""."""
        for definition in self.parameterDefinitions():
            value = parameters.get(definition.name())
            several = isinstance(definition, QgsProcessingParameterMultipleLayers) and \
                definition.layerType() == QgsProcessing.TypeRaster
            if not (isinstance(definition, QgsProcessingParameterRasterLayer) or several) or value is None:
                continue
            for item in value if several and isinstance(value, (list, tuple)) else [value]:
                layer = item if isinstance(item, QgsMapLayer) else QgsProcessingUtils.mapLayerFromString(str(item),
                                                                                                       context)
                if layer is not None and not isinstance(layer, QgsRasterLayer):
                    kind = "a vector layer" if isinstance(layer, QgsVectorLayer) else "a layer"
                    return f"{definition.name()}: '{layer.name()}' is {kind}, not a raster; {self.RASTER_HINT}"
        return ""

    def files_of_another_kind(self, parameters):
        """A message for a file given to a file parameter of one extension (a model bundle) that has another (QGIS's
        own check says only "incorrect parameter value"), or ""."""
        for definition in self.parameterDefinitions():
            value = parameters.get(definition.name())
            if not isinstance(definition, QgsProcessingParameterFile) or not definition.extension() or \
                    not isinstance(value, str) or not value:
                continue
            if not value.lower().endswith(f".{definition.extension().lower()}"):
                return (f"{definition.name()}: {value} is not a .{definition.extension()} file; choose a MineC2F "
                        f"model bundle (.{definition.extension()}) or leave it empty for the bundled model")
        return ""

    def check_parameters(self, parameters, context):
        """The algorithm's own checks, after QGIS's: raise QgsProcessingException naming the parameter and the
        fix. Subclasses extend it (calling super first). Here: THRESHOLD strictly between 0 and 1."""
        if self.parameterDefinition(self.THRESHOLD) is not None and parameters.get(self.THRESHOLD) not in (None, ""):
            from model_core.errors import InputError
            from model_core.rasters import check_threshold

            try:
                check_threshold(self.parameterAsDouble(parameters, self.THRESHOLD, context))
            except InputError as error:
                raise QgsProcessingException(f"{self.THRESHOLD}: {error}") from error

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        missing = missing_requirements()
        if missing:
            raise QgsProcessingException(missing_message(missing))
        with engine_errors(self.ENGINE_OPTIONS):
            return self.process(parameters, context, feedback)

    def engine_log(self, feedback):
        """A log callback for the engine: its lines in the Processing log, options named as parameters."""
        return lambda message: feedback.pushInfo(in_parameter_terms(message, self.ENGINE_OPTIONS))

    def process(self, parameters, context, feedback):
        """The algorithm's work, with the engine's packages known to be present."""
        raise NotImplementedError

    def band_mapping(self, parameters, context):
        """The BANDS parameter ("B02=1,B03=2,...") as a dict, or None when empty (automatic matching)."""
        text = self.parameterAsString(parameters, self.BANDS, context).strip()
        if not text:
            return None
        from model_core.bands import parse_band_mapping
        from model_core.errors import InputError

        try:
            return parse_band_mapping(text)
        except InputError as error:
            raise QgsProcessingException(f"{self.BANDS}: {error}") from error

    def polygon_layer(self, parameters, name, context):
        """(layer, selected features only) of polygon parameter ``name``; (None, False) when an optional one is not
        set. A value QGIS cannot read as a vector layer, a layer of points or lines and "selected features only"
        with none selected are refused, not taken as not set. Call :func:`vector_file` on the result."""
        value = parameters.get(name)
        if value is None or value == "":
            return None, False
        selected = False
        if isinstance(value, QgsProcessingFeatureSourceDefinition):
            selected = value.selectedFeaturesOnly
            value = value.source.valueAsString(context.expressionContext())[0]
        if isinstance(value, QgsRasterLayer):
            raise QgsProcessingException(f"{name}: '{value.name()}' is a raster layer, not polygons; choose a "
                                         f"polygon layer")
        layer = self.parameterAsVectorLayer({name: value}, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: {value} is not a vector layer QGIS can read; choose a polygon "
                                         f"layer or a GeoPackage / shapefile")
        if layer.geometryType() in (QgsWkbTypes.PointGeometry, QgsWkbTypes.LineGeometry, QgsWkbTypes.NullGeometry):
            kind = QgsWkbTypes.geometryDisplayString(layer.geometryType()).lower()
            raise QgsProcessingException(f"{name}: layer '{layer.name()}' holds {kind} features, not polygons; "
                                         f"choose a polygon layer")
        if selected and not layer.selectedFeatureCount():
            raise QgsProcessingException(f"{name}: 'Selected features only' is set but no feature of layer "
                                         f"'{layer.name()}' is selected; select some or clear the option")
        return layer, selected

    def polygon_file(self, parameters, name, context):
        """The file of polygon parameter ``name`` for the engine (:meth:`polygon_layer`, :func:`vector_file`), or
        None when an optional one is not set. Call it on the main thread (from prepareAlgorithm)."""
        layer, selected = self.polygon_layer(parameters, name, context)
        return vector_file(layer, name, selected_only=selected) if layer is not None else None

    def radiometry_parameters(self):
        """Optional advanced SCALE and OFFSET (reflectance = DN x scale + offset; not set: from the raster)."""
        parameters = []
        for name, label in ((self.SCALE, "Reflectance scale (not set: from the raster)"),
                            (self.OFFSET, "Reflectance offset (not set: from the raster)")):
            parameters.append(advanced(QgsProcessingParameterNumber(
                name, label, QgsProcessingParameterNumber.Double, optional=True)))
        return parameters

    def footprint_parameters(self, unset):
        """Optional THRESHOLD and MIN_AREA_HA (how probabilities become footprints); ``unset`` says what then."""
        return [QgsProcessingParameterNumber(
                    self.THRESHOLD, f"Probability threshold (not set: {unset})", QgsProcessingParameterNumber.Double,
                    optional=True, minValue=0.0, maxValue=1.0),
                QgsProcessingParameterNumber(
                    self.MIN_AREA_HA, f"Minimum footprint area in hectares (not set: {unset})",
                    QgsProcessingParameterNumber.Double, optional=True, minValue=0.0)]

    def radiometry(self, parameters, context):
        """{"scale": ..., "offset": ...} for the engine, None where not set (read from the raster)."""
        return {"scale": self.optional_number(parameters, self.SCALE, context, float),
                "offset": self.optional_number(parameters, self.OFFSET, context, float)}

    def optional_number(self, parameters, name, context, kind):
        """Parameter ``name`` as ``kind``, or None when it is not set (the engine then chooses)."""
        if parameters.get(name) in (None, ""):
            return None
        return kind(self.parameterAsDouble(parameters, name, context))

    def output_path(self, parameters, name, context, suffixes):
        """The destination file of output ``name``; the engine writes files with one of ``suffixes`` only (the
        first when an optional output is skipped: a temporary file)."""
        path = self.parameterAsOutputLayer(parameters, name, context)
        if not path:  # an optional output the user skipped
            return Path(QgsProcessingUtils.generateTempFilename(f"{name.lower()}{suffixes[0]}"))
        if not path.lower().endswith(suffixes):
            raise QgsProcessingException(f"{name}: {path} is not a {' or '.join(suffixes)} file; the output is "
                                         f"written as {suffixes[0][1:].upper()}, give a file name ending in "
                                         f"{suffixes[0]}")
        return Path(path)


def advanced(parameter):
    """``parameter``, shown under Advanced Parameters."""
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def in_parameter_terms(message, options):
    """An engine ``message`` with the command-line options it names (``--bands`` ...) named as what ``options``
    maps them to (``BANDS`` ...); options it does not map keep their name."""
    return re.sub(r"(?<![\w-])--[a-z][a-z-]*", lambda match: options.get(match.group(0), match.group(0)), message)


@contextmanager
def engine_errors(options):
    """Re-raise model_core errors (one line naming problem and fix) as QgsProcessingException, with the
    command-line options they name given as ``options`` maps them (see :func:`in_parameter_terms`)."""
    from model_core.errors import MineC2FError

    try:
        yield
    except MineC2FError as error:
        raise QgsProcessingException(in_parameter_terms(str(error), options)) from error


def layer_file(layer, parameter):
    """The file on disk behind raster ``layer`` (the engine reads files with GDAL); a layer that is not a file
    (WMS, virtual raster, memory, a database table) is refused with how to make it one."""
    if layer is None:
        raise QgsProcessingException(f"{parameter}: no layer given or the layer cannot be read; "
                                     f"choose a raster layer or a raster file")
    path = Path(layer.source().split("|")[0])
    if layer.providerType() == "gdal" and path.is_absolute() and not path.exists():
        raise QgsProcessingException(f"{parameter}: the file of layer '{layer.name()}', {path}, no longer exists; "
                                     f"add the raster again, or point the layer at its new place (right-click the "
                                     f"layer > Change Data Source...)")
    if layer.providerType() != "gdal" or not path.is_file():
        raise QgsProcessingException(
            f"{parameter}: layer '{layer.name()}' ({layer.providerType()}) is not a raster file on disk; "
            f"save it as a GeoTIFF first (right-click the layer > Export > Save As...) and use that")
    return path


def vector_file(layer, parameter, selected_only=False):
    """A file holding exactly the features of vector ``layer`` (its selected ones with ``selected_only``), for the
    engine (which reads a file's first layer). A file layer with one layer and no filter is used as it is; anything
    else (selected features, a filtered layer, one layer of a multi-layer GeoPackage, a scratch/memory, database or
    web layer) is first written to a temporary GeoPackage named after the layer. Call it on the main thread (from
    prepareAlgorithm): it reads the layer."""
    if layer is None:
        raise QgsProcessingException(f"{parameter}: no layer given or the layer cannot be read; "
                                     f"choose a polygon layer or a GeoPackage / shapefile")
    path = Path(layer.source().split("|")[0])
    if (layer.providerType() == "ogr" and path.is_file() and not layer.subsetString() and not selected_only
            and _layer_count(path) == 1):
        return path
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer.name()) or parameter.lower()
    copy = Path(QgsProcessingUtils.generateTempFilename(f"{name}.gpkg"))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName, options.onlySelectedFeatures = "GPKG", name, selected_only
    error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, str(copy), QgsCoordinateTransformContext(), options)
    if error != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"{parameter}: cannot copy layer '{layer.name()}' to a temporary GeoPackage "
                                     f"({message}); save it as a GeoPackage and use that")
    return copy


def _layer_count(path):
    from osgeo import ogr

    source = ogr.Open(str(path))
    return source.GetLayerCount() if source is not None else 0
