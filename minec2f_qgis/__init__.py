"""MineC2F QGIS plugin: segments mining footprints in multispectral imagery.

Installed, the plugin folder carries ``model_core`` (the engine) next to this package's modules. It is imported
from there as the top-level package ``model_core`` without putting the plugin folder on ``sys.path``, where this
package's module names (resources, models, plugin, ...) would shadow other plugins' imports. In the source
repository ``model_core`` sits at the repository root instead, which is on ``sys.path`` when the tests run.
"""

import importlib.util
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
ENGINE_DIR = PLUGIN_DIR / "model_core"


def import_engine():
    """Import the plugin folder's ``model_core`` as ``model_core``, unless one from elsewhere is imported already
    (the repository's, in the tests). Modules of this folder imported before (by an earlier version of the plugin
    that did not unload them) are dropped first."""
    unload_engine()
    if not ENGINE_DIR.is_dir() or "model_core" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("model_core", ENGINE_DIR / "__init__.py",
                                                  submodule_search_locations=[str(ENGINE_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["model_core"]
        raise


def unload_engine():
    """Forget the modules of the plugin folder's ``model_core``: QGIS unloads only this package's modules when it
    reloads or upgrades the plugin, and the new plugin code must not run on the old engine."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "model_core" or name.startswith("model_core.")) and path and \
                Path(path).resolve().is_relative_to(ENGINE_DIR):
            del sys.modules[name]


import_engine()


def classFactory(iface):  # noqa: N802 (QGIS plugin entry point)
    """QGIS entry point."""
    from .plugin import MineC2FPlugin

    return MineC2FPlugin(iface)
