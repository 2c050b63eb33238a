"""What the MineC2F Processing algorithms share: the base class (icon, dependency gate), engine errors as
Processing errors, and input layers as files for the engine."""

from contextlib import contextmanager
from pathlib import Path

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtGui import QIcon

from ..dependencies import missing_message, missing_requirements
from ..resources import ICON_PATH


class MineC2FAlgorithm(QgsProcessingAlgorithm):
    """Base of the MineC2F algorithms. Parameter checks fail first with the pip command when the engine's
    packages are missing, so the algorithms stay listed (and explain themselves) in any QGIS."""

    def icon(self):
        return QIcon(str(ICON_PATH))

    def createInstance(self):  # noqa: N802 (QGIS API)
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: N802 (QGIS API)
        missing = missing_requirements()
        if missing:
            return False, missing_message(missing)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        missing = missing_requirements()
        if missing:
            raise QgsProcessingException(missing_message(missing))
        with engine_errors():
            return self.process(parameters, context, feedback)

    def process(self, parameters, context, feedback):
        """The algorithm's work, with the engine's packages known to be present."""
        raise NotImplementedError


@contextmanager
def engine_errors():
    """Re-raise model_core errors (one line naming problem and fix) as QgsProcessingException."""
    from model_core.errors import MineC2FError

    try:
        yield
    except MineC2FError as error:
        raise QgsProcessingException(str(error)) from error


def layer_file(layer, parameter):
    """The file on disk behind raster ``layer`` (the engine reads files with GDAL); a layer that is not a file
    (WMS, virtual raster, memory, a database table) is refused with how to make it one."""
    if layer is None:
        raise QgsProcessingException(f"{parameter}: no layer given or the layer cannot be read; "
                                     f"choose a raster layer or a raster file")
    path = Path(layer.source().split("|")[0])
    if layer.providerType() != "gdal" or not path.is_file():
        raise QgsProcessingException(
            f"{parameter}: layer '{layer.name()}' ({layer.providerType()}) is not a raster file on disk; "
            f"save it as a GeoTIFF first (right-click the layer > Export > Save As...) and use that")
    return path


def vector_file(layer, parameter):
    """(file, layer name or None) behind vector ``layer``; memory, database and web layers are refused with how
    to make them a file."""
    if layer is None:
        raise QgsProcessingException(f"{parameter}: no layer given or the layer cannot be read; "
                                     f"choose a polygon layer or a GeoPackage / shapefile")
    path, *options = layer.source().split("|")
    names = [option.split("=", 1)[1] for option in options if option.startswith("layername=")]
    if layer.providerType() != "ogr" or not Path(path).is_file():
        raise QgsProcessingException(
            f"{parameter}: layer '{layer.name()}' ({layer.providerType()}) is not a vector file on disk; "
            f"save it as a GeoPackage first (right-click the layer > Export > Save Features As...) and use that")
    return Path(path), (names[0] if names else None)
