"""MineC2F QGIS plugin: segments mining footprints in multispectral imagery.

Installed, the plugin folder carries ``model_core`` (the engine) next to this package's modules; the folder is put
on ``sys.path`` so ``import model_core`` finds it. In the source repository ``model_core`` sits at the repository
root instead, which is on ``sys.path`` when the tests run.
"""

import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent

if (PLUGIN_DIR / "model_core").is_dir() and str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))


def classFactory(iface):  # noqa: N802 (QGIS plugin entry point)
    """QGIS entry point."""
    from .plugin import MineC2FPlugin

    return MineC2FPlugin(iface)
