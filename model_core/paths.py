"""Where bundled resources live: ``resources/`` beside the ``model_core`` package, in the repository
(root/model_core -> root/resources) and in the plugin zip (minec2f_qgis/model_core -> minec2f_qgis/resources)."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
MODELS_DIR = RESOURCES / "models"
DEFAULT_MODEL = MODELS_DIR / "minec2f_default.safetensors"
SAMPLE_SCENE = RESOURCES / "sample" / "sample_scene.tif"
