"""minec2f:train_teacher - a teacher model from rasters and coarse footprint polygons."""

from .training import INPUTS_HELP, TRAINING_HELP, TrainingAlgorithm

HELP = f"""Trains a MineC2F teacher model from multispectral rasters and footprint polygons that may be coarse, \
such as a regional or global mining inventory whose outlines swallow some surroundings. Fine-tune it on a few \
precisely digitised polygons afterwards with <i>Fine-tune student on precise polygons</i>.
The model reads the bands blue, green, red, NIR, SWIR1 and SWIR2 (Sentinel-2 B02, B03, B04, B08, B11, B12 or the \
Landsat equivalents), matched in each raster by band description or standard band order.
<h3>Parameters</h3>
{INPUTS_HELP}
{TRAINING_HELP}"""


class TrainTeacherAlgorithm(TrainingAlgorithm):
    POLYGONS_LABEL = "Coarse footprint polygons"

    def name(self):
        return "train_teacher"

    def displayName(self):  # noqa: N802 (QGIS API)
        return "Train teacher on coarse polygons"

    def shortDescription(self):  # noqa: N802 (QGIS API)
        return "A MineC2F model trained on rasters and (coarse) footprint polygons"

    def shortHelpString(self):  # noqa: N802 (QGIS API)
        return HELP

    def train(self, parameters, context, rasters, polygons, out, **options):
        from model_core.train import train_teacher

        return train_teacher(rasters, polygons, out, **options)
