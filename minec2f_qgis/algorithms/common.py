"""Helpers shared by the MineC2F Processing algorithms: the dependency gate and input layers as files."""

from pathlib import Path

from qgis.core import QgsProcessingException

from ..dependencies import missing_message, missing_requirements


def require_engine():
    """Raise a QgsProcessingException with the pip command when the engine's packages are missing."""
    missing = missing_requirements()
    if missing:
        raise QgsProcessingException(missing_message(missing))


def layer_file(layer, parameter):
    """The file on disk behind ``layer`` (the engine reads files with GDAL); a layer that is not a file
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

