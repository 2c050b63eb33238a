"""Processing provider ``minec2f``."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .resources import ICON_PATH


class MineC2FProvider(QgsProcessingProvider):
    """Registers the MineC2F algorithms. It is registered even when the engine's packages are missing, so the
    algorithms stay visible; running one then fails with the pip command that fixes it."""

    def id(self):
        return "minec2f"

    def name(self):
        return "MineC2F"

    def longName(self):
        return "MineC2F mining footprint segmentation"

    def icon(self):
        return QIcon(str(ICON_PATH))

    def loadAlgorithms(self):
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportsNonFileBasedOutput(self):
        """No "Save to GeoPackage / database table" destinations: the engine writes whole files."""
        return False

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg"]
