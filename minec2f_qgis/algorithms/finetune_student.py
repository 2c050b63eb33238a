"""minec2f:finetune_student - a student model fine-tuned from a teacher on precisely digitised polygons."""

from pathlib import Path

from qgis.core import (QgsProcessingException, QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterFile, QgsProcessingParameterNumber)

from model_core import defaults

from .common import advanced
from .training import INPUTS_HELP, TRAINING_HELP, TrainingAlgorithm

# model_core.train.STUDENT_METHODS without "joint": that baseline also needs the teacher's coarse training data,
# a research comparison run from the command line (python -m model_core finetune --method joint); then "auto",
# the default, last so that the others keep their indices
METHODS = [("minec2f", "MineC2F: attentive feature and prediction distillation"),
           ("kd", "Plain distillation (no attention)"),
           ("finetune", "Plain fine-tuning (no distillation)"),
           ("fine_only", "Precise polygons only (from scratch, teacher ignored)"),
           (defaults.AUTO_METHOD, "Automatic: MineC2F, or plain fine-tuning from a coarse teacher that fits your "
                                  "polygons poorly (recommended)")]
DEFAULT_METHOD = [key for key, _ in METHODS].index(defaults.AUTO_METHOD)

HELP = f"""Fine-tunes a student model from a teacher (the bundled model or one made with <i>Train teacher on \
coarse polygons</i>) on footprints you digitised precisely, so that it learns your exact boundaries and \
keeps what the teacher knows elsewhere.
<h3>Parameters</h3>
<b>Teacher model</b>: a MineC2F .safetensors file; by default the model bundled with the plugin. The student has \
its network, bands and normalisation.
{INPUTS_HELP}
<b>Method</b>: MineC2F starts from the teacher and pulls the student towards the teacher's features and \
predictions where the teacher agrees with your polygons (attentive distillation), freeing it where the \
teacher's coarse boundaries are wrong. Automatic (the default) uses plain fine-tuning when the teacher was \
trained on coarse inventory outlines alone (<i>Train teacher on coarse polygons</i>) and scores an IoU below \
{defaults.WEAK_TEACHER_IOU} on your validation chips: from such weak teachers distillation held students back in \
our tests. From any other teacher, such as the bundled model, it uses MineC2F, even where that model misses much \
on your imagery. The log says which it chose. The others are baselines for comparison.
<b>Feature / prediction distillation weight, temperature</b> (advanced): weights of the two distillation terms \
against the segmentation loss, and the softening of the teacher's predictions.
<b>Rehearsal scenes</b> (advanced): MineC2F and plain distillation also distil on this many generated \
synthetic scenes (forest, cropland, water, towns, bare ground), so that a student fine-tuned on one scene keeps \
what the teacher knows about ground that scene lacks. 0 turns this off.
<b>Keep the teacher's encoder</b> (advanced): train only the decoder and head; the teacher's image features stay as \
they are. Faster, and less forgetting of ground your polygons lack, but less adaptation to imagery unlike the \
teacher's.
{TRAINING_HELP}"""


class FinetuneStudentAlgorithm(TrainingAlgorithm):
    TEACHER = "TEACHER"
    METHOD = "METHOD"
    LAMBDA_FEAT = "LAMBDA_FEAT"
    LAMBDA_PRED = "LAMBDA_PRED"
    TEMPERATURE = "TEMPERATURE"
    REHEARSAL_SCENES = "REHEARSAL_SCENES"
    FREEZE_ENCODER = "FREEZE_ENCODER"
    ENGINE_OPTIONS = {**TrainingAlgorithm.ENGINE_OPTIONS, "--teacher": TEACHER, "--method": METHOD,
                      "--lambda-feat": LAMBDA_FEAT, "--lambda-pred": LAMBDA_PRED, "--temperature": TEMPERATURE,
                      "--rehearsal-scenes": REHEARSAL_SCENES, "--freeze-encoder": FREEZE_ENCODER}
    POLYGONS_LABEL = "Precise footprint polygons"
    DEFAULTS = defaults.STUDENT

    def name(self):
        return "finetune_student"

    def displayName(self):  # noqa: N802 (QGIS API)
        return "Fine-tune student on precise polygons"

    def shortDescription(self):  # noqa: N802 (QGIS API)
        return "A MineC2F student model fine-tuned from a teacher on precisely digitised polygons"

    def shortHelpString(self):  # noqa: N802 (QGIS API)
        return HELP

    def method_parameters(self):
        parameters = [
            # optional, so qgis_process and models may leave it out (qgis_process 3.22 refuses a mandatory file
            # parameter that is not given, whatever its default); no default path, which a saved graphical model
            # would keep and another machine lack
            QgsProcessingParameterFile(self.TEACHER, "Teacher model (empty: the bundled model)",
                                       extension="safetensors", optional=True),
            QgsProcessingParameterEnum(self.METHOD, "Method", options=[label for _, label in METHODS],
                                       defaultValue=DEFAULT_METHOD)]
        for name, label, default in ((self.LAMBDA_FEAT, "Feature distillation weight", defaults.LAMBDA_FEAT),
                                     (self.LAMBDA_PRED, "Prediction distillation weight", defaults.LAMBDA_PRED),
                                     (self.TEMPERATURE, "Distillation temperature", defaults.TEMPERATURE)):
            parameters.append(advanced(QgsProcessingParameterNumber(
                name, label, QgsProcessingParameterNumber.Double, defaultValue=default, minValue=0.0)))
        parameters.append(advanced(QgsProcessingParameterNumber(
            self.REHEARSAL_SCENES, "Rehearsal scenes", QgsProcessingParameterNumber.Integer,
            defaultValue=defaults.REHEARSAL_SCENES, minValue=0, maxValue=64)))
        parameters.append(advanced(QgsProcessingParameterBoolean(
            self.FREEZE_ENCODER, "Keep the teacher's encoder (train the decoder only)", defaultValue=False)))
        return parameters

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        if self.output_model(parameters, context).resolve() == self.teacher(parameters, context).resolve():
            raise QgsProcessingException(f"{self.OUTPUT_MODEL}: that is the teacher model; choose another file name")

    def teacher(self, parameters, context):
        from model_core.paths import DEFAULT_MODEL

        return Path(self.parameterAsFile(parameters, self.TEACHER, context) or DEFAULT_MODEL)

    def method_config(self, parameters, context):
        return {"method": METHODS[self.parameterAsEnum(parameters, self.METHOD, context)][0],
                "lambda_feat": self.parameterAsDouble(parameters, self.LAMBDA_FEAT, context),
                "lambda_pred": self.parameterAsDouble(parameters, self.LAMBDA_PRED, context),
                "temperature": self.parameterAsDouble(parameters, self.TEMPERATURE, context),
                "rehearsal_scenes": self.parameterAsInt(parameters, self.REHEARSAL_SCENES, context),
                "freeze_encoder": self.parameterAsBoolean(parameters, self.FREEZE_ENCODER, context)}

    def train(self, parameters, context, rasters, polygons, out, **options):
        from model_core.train import finetune_student

        return finetune_student(self.teacher(parameters, context), rasters, polygons, out, **options)
