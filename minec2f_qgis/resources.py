"""Paths of the plugin's styles and icon, in the ``resources/`` folder that ``model_core.paths`` locates (the
repository root in the source tree, the plugin folder when installed)."""

from model_core.paths import RESOURCES

STYLES_DIR = RESOURCES / "styles"
ICON_PATH = RESOURCES / "icons" / "minec2f.svg"
PROBABILITY_STYLE = STYLES_DIR / "probability.qml"
FOOTPRINTS_STYLE = STYLES_DIR / "footprints.qml"
