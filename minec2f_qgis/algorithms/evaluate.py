"""minec2f:evaluate - a footprint mask or probability raster scored against reference polygons."""

from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsFeatureSink, QgsField, QgsFields, QgsProcessing,
                       QgsProcessingOutputNumber, QgsProcessingParameterFeatureSink, QgsProcessingParameterNumber,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterRasterLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QVariant

from .common import MineC2FAlgorithm, layer_file, vector_file

HELP = """Scores footprints found by <i>Segment mining footprints</i> against reference polygons (footprints \
digitised by hand, or another trusted source): IoU, F1, precision, recall and boundary F1 of the footprint pixels.
<h3>Parameters</h3>
<b>Footprint mask or probability raster</b>: the mask output of Segment (1 = footprint) or its probability \
output, which is thresholded first.
<b>Reference footprints</b>: polygons of the true footprints, any CRS (they are reprojected and rasterised on the \
prediction's grid). Without a labelled extent some must overlap the raster (none: a wrong layer, raster or CRS, \
refused); with one, a reference without footprints there scores an area without mines.
<b>Labelled extent</b>: polygons where the reference is complete; only pixels inside are scored. Not set: the \
whole raster, so every footprint found outside your reference counts as a false alarm.
<b>Probability threshold</b>: for a probability raster only. Not set: the threshold Segment used.
<b>Boundary tolerance (pixels)</b>: an edge pixel within this many pixels of a reference edge counts as matched \
in boundary F1.
<h3>Outputs</h3>
The numbers IOU, F1, PRECISION, RECALL and BOUNDARY_F1 (0-1), and the same as a one-row table with the file \
names, to compare runs. Nodata pixels of the prediction are not scored. Cancelling stops the scoring before the \
table is written."""

SCORES = {"iou": "IoU", "f1": "F1", "precision": "Precision", "recall": "Recall", "boundary_f1": "Boundary F1"}


class EvaluateAlgorithm(MineC2FAlgorithm):
    PREDICTION = "PREDICTION"
    REFERENCE = "REFERENCE"
    EXTENT = "EXTENT"
    TOLERANCE_PX = "TOLERANCE_PX"
    OUTPUT = "OUTPUT"
    ENGINE_OPTIONS = {"--reference": REFERENCE, "--extent": EXTENT, "--threshold": MineC2FAlgorithm.THRESHOLD}
    RASTER_HINT = "choose the footprint mask or probability raster that Segment mining footprints wrote"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802 (QGIS API)
        return "Evaluate footprints against reference polygons"

    def shortDescription(self):  # noqa: N802 (QGIS API)
        return "IoU, F1, precision, recall and boundary F1 of a footprint mask against reference polygons"

    def shortHelpString(self):  # noqa: N802 (QGIS API)
        return HELP

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer(self.PREDICTION, "Footprint mask or probability raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.REFERENCE, "Reference footprints", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXTENT, "Labelled extent (only score inside; not set: everywhere)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold, for a probability raster (not set: the one Segment used)",
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOLERANCE_PX, "Boundary tolerance in pixels", QgsProcessingParameterNumber.Integer, defaultValue=2,
            minValue=0))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, "Scores", QgsProcessing.TypeVector, optional=True, createByDefault=True))
        for score, label in SCORES.items():
            self.addOutput(QgsProcessingOutputNumber(score.upper(), label))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        layer_file(self.parameterAsRasterLayer(parameters, self.PREDICTION, context), self.PREDICTION)
        for name in (self.REFERENCE, self.EXTENT):
            self.polygon_layer(parameters, name, context)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        reference, selected = self.polygon_layer(parameters, self.REFERENCE, context)
        self.reference = vector_file(reference, self.REFERENCE, selected_only=selected)
        self.reference_name = reference.name()
        self.extent = self.polygon_file(parameters, self.EXTENT, context)
        return True

    def process(self, parameters, context, feedback):
        from model_core.metrics import evaluate_mask_raster

        prediction = layer_file(self.parameterAsRasterLayer(parameters, self.PREDICTION, context), self.PREDICTION)
        scores = evaluate_mask_raster(
            prediction, self.reference, extent=self.extent,
            threshold=self.optional_number(parameters, self.THRESHOLD, context, float),
            tolerance_px=self.parameterAsInt(parameters, self.TOLERANCE_PX, context),
            progress=feedback.setProgress, is_canceled=feedback.isCanceled)
        feedback.pushInfo("  ".join(f"{name} {value:.3f}" for name, value in scores.items()))
        results = {name.upper(): value for name, value in scores.items()}
        fields = QgsFields()
        for name in ("prediction", "reference"):
            fields.append(QgsField(name, QVariant.String))
        for name in SCORES:
            fields.append(QgsField(name, QVariant.Double))
        sink, sink_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.NoGeometry,
                                             QgsCoordinateReferenceSystem())
        if sink is not None:
            row = QgsFeature(fields)
            row.setAttributes([prediction.name, self.reference_name] + [scores[name] for name in SCORES])
            sink.addFeature(row, QgsFeatureSink.FastInsert)
            results[self.OUTPUT] = sink_id
        return results
