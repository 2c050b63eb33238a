"""What the training algorithms share: rasters + polygons (+ labelled extent) as engine inputs
(:class:`LabelledDataAlgorithm`, also used by export_chips), and the training parameters, run and outputs
(:class:`TrainingAlgorithm`, specialised by train_teacher and finetune_student)."""

from pathlib import Path

from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingOutputFile, QgsProcessingOutputNumber,
                       QgsProcessingOutputString,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterFileDestination, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterNumber, QgsProcessingParameterString)

from model_core import defaults

from .common import DEVICES, RADIOMETRY_HELP, MineC2FAlgorithm, advanced, in_parameter_terms, layer_file

INPUTS_HELP = """<b>Rasters</b>: one or more multispectral scenes saved as files (GeoTIFF, VRT, ...), any CRS.
<b>{polygons}</b>: footprint polygons, any CRS (reprojected to each raster). A filtered layer, one layer of a \
multi-layer GeoPackage or a scratch layer is copied to a temporary GeoPackage first.
<b>Labelled extent</b>: polygons of the area where every footprint is digitised. Outside it pixels are ignored; \
inside it everything that is not a footprint is background. Not set: every raster is labelled everywhere, so only \
leave it out when the polygons are complete over the rasters."""

TRAINING_HELP = f"""<b>Epochs</b>: passes over the training chips, each at least \
{defaults.TEACHER["min_steps_per_epoch"]} steps for a teacher and {defaults.STUDENT["min_steps_per_epoch"]} for a \
student (so a few polygons train enough in a few epochs), unless <b>Steps per epoch</b> (advanced) sets it; \
training stops early when the validation IoU has not improved for several epochs. <b>Batch size</b>: chips per \
step; lower it when memory runs out or the polygons give too few chips. <b>Chip size</b>: square training \
windows in pixels (a multiple of 16). <b>Validation share</b> (advanced): chips held out by location to pick \
the best epoch and its threshold, above 0. <b>Learning rate</b>: AdamW step size, warmed up then decayed.
<b>Device</b>: Auto uses an NVIDIA GPU when PyTorch sees one; on a CPU expect minutes per epoch.
<b>Band mapping</b> (advanced): raster band for each model band, e.g. <code>B02=1,B03=2,...</code>, for all \
rasters. Empty: matched by band descriptions or standard band orders.
""" + RADIOMETRY_HELP + """ They apply to every raster.
<b>Resume</b>: continue a cancelled or failed run writing the same model file, from the checkpoint \
<i>model</i>.resume.safetensors saved after each epoch.
<h3>Outputs</h3>
<b>Model</b>: the .safetensors bundle of the best epoch (validation IoU on chips held out by location), with its \
recommended threshold (the best on all labelled chips, training and validation together), training summary and \
scores; it is written when the first epoch ends and replaced when a later epoch does better. A student must do \
better than its teacher on the same chips, scored at the threshold the teacher would keep: until an epoch does, \
nothing is written, and if none does the model keeps the teacher's weights and threshold (BEST_EPOCH 0). An \
existing file is replaced, as in every Processing algorithm. Cancelling keeps the best model so far, marked \
unfinished (segmenting with it warns); before the first epoch ends nothing is written. Beside it: \
<i>model</i>.log.csv (one row per epoch) and <i>model</i>.curves.png (loss and validation curves). BEST_EPOCH, \
VAL_IOU and VAL_F1 are the best epoch and its scores at the model's recommended threshold; METHOD_USED the \
training method (the one the Automatic method chose); REFLECTANCE the scale and offset used for each raster, and \
why."""


class LabelledDataAlgorithm(MineC2FAlgorithm):
    """Rasters, footprint polygons and an optional labelled extent, resolved to files on the main thread in
    prepareAlgorithm (a scratch layer is read there) and kept in ``self.rasters``, ``self.polygons``,
    ``self.extent``."""
    RASTERS = "RASTERS"
    POLYGONS = "POLYGONS"
    EXTENT = "EXTENT"
    CHIP_SIZE = "CHIP_SIZE"
    VAL_FRACTION = "VAL_FRACTION"
    POLYGONS_LABEL = "Footprint polygons"
    ENGINE_OPTIONS = {**MineC2FAlgorithm.ENGINE_OPTIONS, "--raster": RASTERS, "--polygons": POLYGONS,
                      "--extent": EXTENT, "--chip-size": CHIP_SIZE, "--val-fraction": VAL_FRACTION}
    DEFAULTS = defaults.TEACHER  # epochs, batch, lr, chip_size: as the command line's
    GROUP = "Training"

    def add_data_parameters(self):
        self.addParameter(QgsProcessingParameterMultipleLayers(self.RASTERS, "Rasters", QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.POLYGONS_LABEL, [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXTENT, "Labelled extent (not set: the rasters are labelled everywhere)",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CHIP_SIZE, "Chip size in pixels", QgsProcessingParameterNumber.Integer,
            defaultValue=self.DEFAULTS["chip_size"], minValue=32))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.VAL_FRACTION, "Validation share (chips held out by location)", QgsProcessingParameterNumber.Double,
            defaultValue=defaults.VAL_FRACTION, minValue=0.0, maxValue=0.9)))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        self.raster_files(parameters, context)
        for name in (self.POLYGONS, self.EXTENT):
            self.polygon_layer(parameters, name, context)

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802 (QGIS API)
        self.rasters = self.raster_files(parameters, context)
        self.polygons = self.polygon_file(parameters, self.POLYGONS, context)
        self.extent = self.polygon_file(parameters, self.EXTENT, context)
        return True

    def raster_files(self, parameters, context):
        layers = self.parameterAsLayerList(parameters, self.RASTERS, context)
        if not layers:
            raise QgsProcessingException(f"{self.RASTERS}: no raster given; choose at least one raster layer")
        return [layer_file(layer, self.RASTERS) for layer in layers]


class TrainingAlgorithm(LabelledDataAlgorithm):
    """A training run: subclasses give their defaults, :meth:`method_parameters`, :meth:`method_config` and
    :meth:`train` (the engine call)."""
    EPOCHS = "EPOCHS"
    BATCH = "BATCH"
    STEPS_PER_EPOCH = "STEPS_PER_EPOCH"
    LEARNING_RATE = "LEARNING_RATE"
    DEVICE = "DEVICE"
    RESUME = "RESUME"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_LOG = "OUTPUT_LOG"
    OUTPUT_CURVES = "OUTPUT_CURVES"
    BEST_EPOCH = "BEST_EPOCH"
    VAL_IOU = "VAL_IOU"
    VAL_F1 = "VAL_F1"
    METHOD_USED = "METHOD_USED"
    REFLECTANCE = "REFLECTANCE"
    ENGINE_OPTIONS = {**LabelledDataAlgorithm.ENGINE_OPTIONS, **MineC2FAlgorithm.RADIOMETRY_OPTIONS,
                      "--epochs": EPOCHS, "--batch": BATCH, "--steps-per-epoch": STEPS_PER_EPOCH,
                      "--lr": LEARNING_RATE, "--device": DEVICE,
                      "--resume": RESUME, "--out": OUTPUT_MODEL}

    def method_parameters(self):
        """Parameters of this kind of training, added after the labelled data."""
        return []

    def method_config(self, parameters, context):
        """TrainConfig fields from :meth:`method_parameters`."""
        return {}

    def train(self, parameters, context, rasters, polygons, out, **options):
        """Run the engine; returns its TrainResult."""
        raise NotImplementedError

    def initAlgorithm(self, config=None):  # noqa: N802 (QGIS API)
        self.add_data_parameters()
        for parameter in self.method_parameters():
            self.addParameter(parameter)
        for name, label, default in ((self.EPOCHS, "Epochs", self.DEFAULTS["epochs"]),
                                     (self.BATCH, "Batch size", self.DEFAULTS["batch"])):
            self.addParameter(QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Integer,
                                                           defaultValue=default, minValue=1))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.STEPS_PER_EPOCH, f"Steps per epoch (0: one pass over the chips, at least "
            f"{self.DEFAULTS['min_steps_per_epoch']})", QgsProcessingParameterNumber.Integer, defaultValue=0,
            minValue=0)))
        self.addParameter(QgsProcessingParameterNumber(
            self.LEARNING_RATE, "Learning rate", QgsProcessingParameterNumber.Double,
            defaultValue=self.DEFAULTS["lr"], minValue=1e-7, maxValue=1.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, "Device", options=[label for _, label in DEVICES], defaultValue=0))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.BANDS, "Band mapping, e.g. B02=1,B03=2,... (empty: automatic)", optional=True)))
        for parameter in self.radiometry_parameters():
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESUME, "Resume an interrupted run of this model file", defaultValue=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, "Model", fileFilter="MineC2F model (*.safetensors)"))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_LOG, "Training log (CSV)"))
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_CURVES, "Training curves (PNG)"))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_EPOCH, "Best epoch"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_IOU, "Validation IoU"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_F1, "Validation F1"))
        self.addOutput(QgsProcessingOutputString(self.METHOD_USED, "Training method used"))
        self.addOutput(QgsProcessingOutputString(self.REFLECTANCE, "Reflectance scale and offset used, and why"))

    def check_parameters(self, parameters, context):
        super().check_parameters(parameters, context)
        self.output_model(parameters, context)
        self.band_mapping(parameters, context)

    def output_model(self, parameters, context):
        path = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        if not path.lower().endswith(".safetensors"):
            raise QgsProcessingException(f"{self.OUTPUT_MODEL}: {path} is not a .safetensors file; give a file "
                                         f"name ending in .safetensors")
        return Path(path)

    def process(self, parameters, context, feedback):
        from model_core.bundle import read_spec
        from model_core.train import TrainConfig, resume_path

        out = self.output_model(parameters, context)
        resume = self.parameterAsBoolean(parameters, self.RESUME, context)
        if resume and not resume_path(out).exists():
            feedback.pushWarning(f"no checkpoint {resume_path(out).name} to resume from; training from the start")
        config = TrainConfig(
            epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
            batch=self.parameterAsInt(parameters, self.BATCH, context),
            chip_size=self.parameterAsInt(parameters, self.CHIP_SIZE, context),
            val_fraction=self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
            lr=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
            steps_per_epoch=self.parameterAsInt(parameters, self.STEPS_PER_EPOCH, context) or None,
            min_steps_per_epoch=self.DEFAULTS["min_steps_per_epoch"], gain_jitter=self.DEFAULTS["gain_jitter"],
            device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)][0],
            workers=0,  # no DataLoader processes started from QGIS: spawned ones would run the QGIS binary
            **self.method_config(parameters, context))
        result = self.train(
            parameters, context, self.rasters, self.polygons, out, extent=self.extent, config=config,
            band_mapping=self.band_mapping(parameters, context), **self.radiometry(parameters, context),
            overwrite=True,  # Processing's file dialog already asked; temporary outputs are fresh names
            resume=resume, progress=feedback.setProgress, is_canceled=feedback.isCanceled,
            log=self.engine_log(feedback))
        spec = read_spec(result.bundle_path)
        metrics = spec.metrics
        feedback.pushInfo(f"best epoch {result.best_epoch}: validation IoU {metrics['val_iou']:.3f}, "
                          f"F1 {metrics['val_f1']:.3f}; method {spec.method}; model {result.bundle_path}")
        return {self.OUTPUT_MODEL: str(result.bundle_path), self.OUTPUT_LOG: str(result.log_path),
                self.OUTPUT_CURVES: str(result.curves_path) if result.curves_path.exists() else None,
                self.BEST_EPOCH: result.best_epoch, self.VAL_IOU: metrics["val_iou"],
                self.VAL_F1: metrics["val_f1"], self.METHOD_USED: spec.method,
                self.REFLECTANCE: in_parameter_terms("; ".join(
                    f"{name}: {reflectance} ({reason})" for name, reflectance, reason in
                    zip(spec.training["rasters"], spec.training["reflectance"], spec.training["radiometry"])),
                    self.ENGINE_OPTIONS)}
