"""Loading MineC2F results into the project, styled from resources/styles."""

from qgis.core import (QgsCoordinateTransform, QgsProcessingLayerPostProcessorInterface, QgsProject,
                       QgsRasterLayer, QgsVectorLayer)

from .resources import FOOTPRINTS_STYLE, PROBABILITY_STYLE

FOOTPRINTS_LAYER_NAME = "Mining footprints"
PROBABILITY_LAYER_NAME = "Footprint probability"

# Processing keeps only a C++ pointer to a post-processor: the Python objects must outlive the run.
_post_processors = {}


class _ApplyStyle(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, style):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        apply_style(layer, self.style)


def apply_style(layer, style):
    """Load the .qml ``style`` into ``layer``; raise ValueError if QGIS refuses it."""
    message, ok = layer.loadNamedStyle(str(style))
    if not ok:
        raise ValueError(f"cannot apply style {style}: {message}")
    layer.triggerRepaint()


def style_on_load(context, path, style):
    """Style the layer Processing loads from ``path`` when the algorithm finishes (dialog runs), if it loads one."""
    if context.willLoadLayerOnCompletion(path):
        _post_processors[path] = _ApplyStyle(style)
        context.layerToLoadOnCompletionDetails(path).setPostProcessor(_post_processors[path])


def add_results(input_name, prob_path, footprints_path, project=None, canvas=None):
    """Add the probability raster and the footprint polygons, styled, in a new group named ``input_name`` at the
    top of the layer tree; zoom ``canvas`` to the footprints (to the raster when there are none) when they are not
    all in its view. Returns (group, layers)."""
    project = project or QgsProject.instance()
    footprints = _load_footprints(footprints_path, FOOTPRINTS_LAYER_NAME)
    probability = QgsRasterLayer(str(prob_path), PROBABILITY_LAYER_NAME)
    _check_loaded(probability)
    group = project.layerTreeRoot().insertGroup(0, input_name)
    for layer, style in ((footprints, FOOTPRINTS_STYLE), (probability, PROBABILITY_STYLE)):
        apply_style(layer, style)
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    if canvas is not None:
        shown = footprints if footprints.featureCount() else probability
        to_canvas = QgsCoordinateTransform(shown.crs(), canvas.mapSettings().destinationCrs(), project)
        extent = to_canvas.transformBoundingBox(shown.extent())
        if not canvas.extent().contains(extent):
            extent.scale(1.1)  # a margin round the outermost footprints
            canvas.setExtent(extent)
        canvas.refresh()
    return group, [footprints, probability]


def add_footprints(group_name, footprints_path, layer_name, beside=None, project=None):
    """Add the footprint polygons of ``footprints_path``, styled and named ``layer_name``, at the top of the group
    that holds the layer of id ``beside`` (else the first group named ``group_name``, made at the top of the layer
    tree if it is gone). Returns the layer."""
    project = project or QgsProject.instance()
    footprints = _load_footprints(footprints_path, layer_name)
    apply_style(footprints, FOOTPRINTS_STYLE)
    root = project.layerTreeRoot()
    node = root.findLayer(beside) if beside else None
    group = node.parent() if node is not None else root.findGroup(group_name) or root.insertGroup(0, group_name)
    project.addMapLayer(footprints, False)
    group.insertLayer(0, footprints)
    return footprints


def _load_footprints(path, name):
    return _check_loaded(QgsVectorLayer(f"{path}|layername=footprints", name, "ogr"))


def _check_loaded(layer):
    if not layer.isValid():
        raise ValueError(f"cannot load {layer.source()}; the file is missing or unreadable")
    return layer
