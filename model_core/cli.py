"""Command line: ``python -m model_core <command> ...``.

Each command is one ``add_<command>_command(subparsers)`` function that declares its arguments and sets
``handler`` to a function taking the parsed arguments; to add a command, write such a function and list it
in ``COMMANDS``. Handlers raise MineC2FError subclasses; :func:`main` turns them into one ``error: ...`` line
and exit status 1 (130 on cancel, Ctrl+C or SIGTERM).
"""

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager

from . import defaults
from .errors import Cancelled, InputError, MineC2FError


def add_segment_command(subparsers):
    parser = subparsers.add_parser(
        "segment", help="segment mining footprints in a raster",
        description="Write DIR/<stem>_prob.tif (footprint probability), DIR/<stem>_mask.tif (1 footprint, "
                    "0 background, 255 nodata) and DIR/<stem>_footprints.gpkg (polygons with area_ha, "
                    "perimeter_m, mean_prob, max_prob). Unset tile/overlap/threshold/min-area come from the model.")
    parser.add_argument("input", metavar="INPUT", help="multispectral raster (GeoTIFF or any GDAL raster)")
    parser.add_argument("--model", help="model bundle (.safetensors); default: the bundled model")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the outputs (created if missing)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto (default): CUDA when a GPU is there, else the CPU")
    parser.add_argument("--tile", type=int, metavar="N", help="tile size in pixels")
    parser.add_argument("--overlap", type=int, metavar="N", help="overlap between tiles in pixels")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="tiles per model call (default: 1 on the CPU, 4 on CUDA)")
    _add_footprint_arguments(parser)
    parser.add_argument("--bands", metavar="B02=1,B03=2,...",
                        help="raster band (1-based) for each model band, when names/layout do not tell")
    _add_radiometry_arguments(parser, "(default: from the raster's metadata or detected)")
    parser.add_argument("--bounds", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help="only segment this extent (raster CRS); outputs cover the input pixels it touches")
    parser.add_argument("--exclude", metavar="MASK.gpkg",
                        help="polygons (any CRS) not to segment, e.g. natural water: nodata in the outputs")
    parser.add_argument("--prob-format", choices=("uint8", "float32"), default="uint8",
                        help="uint8: probability*254, 255 nodata (default); float32: NaN nodata")
    parser.add_argument("--precision", choices=("auto", "float32"), default="auto",
                        help="auto: float16 on CUDA, bfloat16 on CPUs with native support (faster); float32")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="print only the result (and warnings)")
    parser.set_defaults(handler=run_segment)


def run_segment(args):
    from . import paths
    from .bands import parse_band_mapping
    from .pipeline import output_paths, segment_scene

    def say(message):
        if not args.quiet or message.startswith("warning:"):
            print(message, file=sys.stderr)

    prob_path, mask_path, footprints_path = output_paths(args.input, args.out_dir)
    result = segment_scene(
        args.input, args.model or paths.DEFAULT_MODEL, prob_path, mask_path, footprints_path, device=args.device,
        tile=args.tile, overlap=args.overlap, batch=args.batch, threshold=args.threshold,
        min_area_ha=args.min_area_ha, band_mapping=parse_band_mapping(args.bands) if args.bands else None,
        scale=args.scale, offset=args.offset, bounds=args.bounds, exclude=args.exclude, overwrite=args.overwrite,
        prob_format=args.prob_format, precision=args.precision,
        progress=None if args.quiet else _ProgressPrinter(), log=say)
    print(f"{result.footprint_count} footprints, {result.total_area_ha:.2f} ha in total")
    print(f"probability: {result.prob_path}")
    print(f"mask:        {result.mask_path}")
    print(f"footprints:  {result.footprints_path}")


def _add_footprint_arguments(parser):
    """--threshold and --min-area-ha: how probabilities become footprint polygons."""
    parser.add_argument("--threshold", type=float, metavar="P",
                        help="probability at or above which a pixel is footprint")
    parser.add_argument("--min-area-ha", type=float, metavar="A", help="drop footprints and holes smaller than A ha")


class _ProgressPrinter:
    """Prints progress to stderr every 10 %."""

    def __init__(self):
        self.next_step = 10

    def __call__(self, percent):
        if percent >= self.next_step:
            print(f"{int(percent)}%", file=sys.stderr)
            self.next_step = int(percent) // 10 * 10 + 10


def add_export_chips_command(subparsers):
    parser = subparsers.add_parser(
        "export-chips", help="cut training chips (GeoTIFF image + mask pairs) from rasters and polygons",
        description="Write DIR/image/*.tif, DIR/mask/*.tif (1 footprint, 0 background, 255 ignore: outside the "
                    "labelled extent or nodata) and DIR/index.csv (file, split, positive fraction...). The "
                    "train/val split is by location.")
    parser.add_argument("--raster", action="append", required=True, metavar="R.tif", help="raster (repeatable)")
    parser.add_argument("--polygons", required=True, metavar="P.gpkg", help="footprint polygons (any CRS)")
    _add_layer_argument(parser, "--polygons")
    parser.add_argument("--extent", metavar="E.gpkg", help="where the labels are complete (outside: ignored)")
    _add_layer_argument(parser, "--extent")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="new folder for the chips")
    parser.add_argument("--chip-size", type=int, default=defaults.TEACHER["chip_size"], metavar="N")
    parser.add_argument("--stride", type=int, metavar="N", help="step between chips (default: the chip size)")
    parser.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION, metavar="F",
                        help="share of the chips put in the validation split, by location; 0: none "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="export only this bundle's bands (default: all bands)")
    parser.add_argument("--bands", metavar="B02=1,B03=2,...", help="raster band for each model band (with --model)")
    _add_radiometry_arguments(parser, "for every --raster, written to the chips' metadata (default: from each "
                                      "raster); it decides which chips are hard negatives (bare ground)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier chip export in DIR")
    parser.set_defaults(handler=run_export_chips)


def run_export_chips(args):
    from .bands import parse_band_mapping
    from .bundle import read_spec
    from .data import export_chips

    if args.bands and not args.model:
        raise InputError("--bands maps the bands of a model: give its --model too (without one every band is "
                         "exported)")
    result = export_chips(
        args.raster, args.polygons, args.out_dir, extent=args.extent, chip_size=args.chip_size, stride=args.stride,
        val_fraction=args.val_fraction, seed=args.seed,
        model_bands=read_spec(args.model).band_list() if args.model else None,
        band_mapping=parse_band_mapping(args.bands) if args.bands else None, scale=args.scale, offset=args.offset,
        overwrite=args.overwrite, polygon_layer=args.layer, extent_layer=args.extent_layer, progress=_ProgressPrinter(),
        log=lambda message: print(message, file=sys.stderr))
    print(f"{result.train_count} train and {result.val_count} validation chips in {result.out_dir}")
    print(f"index: {result.index_path}")


def _add_radiometry_arguments(parser, note):
    for flag, metavar in (("--scale", "S"), ("--offset", "O")):
        parser.add_argument(flag, type=float, metavar=metavar, help=f"reflectance = DN * S + O {note}")


def _add_layer_argument(parser, option):
    """--layer (for the polygons of ``option``) or --extent-layer (for --extent): a multi-layer file's layer."""
    flag = "--extent-layer" if option == "--extent" else "--layer"
    parser.add_argument(flag, metavar="NAME", help=f"layer of {option} (default: the first)")


def _add_training_arguments(parser, run_defaults):
    """The arguments of every training command; ``run_defaults``: defaults.TEACHER or defaults.STUDENT."""
    parser.add_argument("--raster", action="append", required=True, metavar="R.tif", help="raster (repeatable)")
    parser.add_argument("--polygons", required=True, metavar="P.gpkg", help="footprint polygons (any CRS)")
    _add_layer_argument(parser, "--polygons")
    parser.add_argument("--extent", metavar="E.gpkg", help="where the labels are complete (outside: ignored)")
    _add_layer_argument(parser, "--extent")
    parser.add_argument("--epochs", type=int, default=run_defaults["epochs"], metavar="N",
                        help="training epochs (default %(default)s)")
    parser.add_argument("--out", required=True, metavar="OUT.safetensors", help="bundle to write")
    parser.add_argument("--batch", type=int, default=run_defaults["batch"], metavar="N",
                        help="chips per optimiser step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=run_defaults["lr"], help="peak learning rate (default %(default)s)")
    parser.add_argument("--chip-size", type=int, default=run_defaults["chip_size"], metavar="N",
                        help="chip side in pixels (default %(default)s)")
    parser.add_argument("--stride", type=int, metavar="N", help="step between chips (default: half the chip size)")
    parser.add_argument("--max-chips", type=int, metavar="N", help="budget of training chips")
    parser.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION, metavar="F",
                        help="share of the chips held out by location for validation, which picks the best epoch "
                             "and its threshold (default %(default)s)")
    parser.add_argument("--steps-per-epoch", type=int, metavar="N",
                        help="optimiser steps per epoch (default: one pass over the training chips, at least "
                             f"{run_defaults['min_steps_per_epoch']})")
    parser.add_argument("--patience", type=int, default=run_defaults["patience"], metavar="N",
                        help="early stopping patience in epochs (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--gain-jitter", type=float, default=run_defaults["gain_jitter"], metavar="G",
                        help="augmentation: each band's reflectance x U(1-G, 1+G) per chip (default %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto (default): CUDA when a GPU is there, else the CPU")
    parser.add_argument("--bands", metavar="B02=1,B03=2,...", help="raster band for each model band")
    _add_radiometry_arguments(parser, "for every --raster (default: from each raster)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(min_steps_per_epoch=run_defaults["min_steps_per_epoch"], interrupted=_training_interrupted)


def _training_interrupted(args):
    """What an interrupted training run kept: a checkpoint after each finished epoch, nothing before the first."""
    from .train import resume_path

    if not resume_path(args.out).exists():
        return "interrupted before the first epoch ended; nothing was written (an existing --out is kept)"
    kept = ("the best model so far is at --out" if os.path.exists(args.out) else
            "no epoch has beaten the teacher yet, so no model was written")
    return f"interrupted; {kept}, and the same command with --resume continues the run"


def add_train_command(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a teacher on coarse footprint polygons",
        description="Train a teacher bundle on (coarse) polygons: BCE + Dice, AdamW with warm-up and cosine decay, "
                    "early stopping on validation IoU. Writes OUT, OUT.log.csv and OUT.curves.png.")
    _add_training_arguments(parser, defaults.TEACHER)
    parser.set_defaults(handler=run_train)


def add_finetune_command(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a student from a teacher on precise polygons",
        description="Fine-tune a student from --teacher on hand-digitised polygons with attentive feature and "
                    "prediction distillation (method minec2f; by default not from a coarse teacher that fits the "
                    "polygons poorly, see --method) or a baseline.")
    parser.add_argument("--teacher", required=True, metavar="BUNDLE", help="teacher bundle (.safetensors)")
    _add_training_arguments(parser, defaults.STUDENT)
    parser.add_argument("--method", choices=(defaults.AUTO_METHOD,) + defaults.STUDENT_METHODS,
                        default=defaults.AUTO_METHOD,
                        help="auto (default): finetune (plain fine-tuning, which beat distillation from weak "
                             "coarse teachers) when the teacher was trained on coarse outlines alone (by train) and "
                             f"scores below IoU {defaults.WEAK_TEACHER_IOU} on the validation chips, else minec2f; "
                             "minec2f always distils; kd, finetune, fine_only, joint are baselines")
    parser.add_argument("--lambda-feat", type=float, default=defaults.LAMBDA_FEAT,
                        help=f"weight of feature distillation (default {defaults.LAMBDA_FEAT})")
    parser.add_argument("--lambda-pred", type=float, default=defaults.LAMBDA_PRED,
                        help=f"weight of prediction distillation (default {defaults.LAMBDA_PRED})")
    parser.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                        help=f"distillation temperature (default {defaults.TEMPERATURE})")
    parser.add_argument("--rehearsal-scenes", type=int, default=defaults.REHEARSAL_SCENES, metavar="N",
                        help="minec2f/kd also distil on N generated scenes, so the student keeps what the teacher "
                             f"knows about ground your rasters lack; 0: none (default {defaults.REHEARSAL_SCENES})")
    parser.add_argument("--freeze-encoder", action="store_true",
                        help="train the decoder and head only; the teacher's encoder (its features) stays as it is")
    parser.add_argument("--coarse-raster", action="append", default=[], metavar="R.tif",
                        help="method joint only: a raster of the teacher's coarse data (repeatable)")
    parser.add_argument("--coarse-polygons", metavar="COARSE.gpkg",
                        help="method joint only: the coarse polygons over the --coarse-raster rasters")
    parser.set_defaults(handler=run_finetune)


def _training_call(args):
    from .bands import parse_band_mapping
    from .train import TrainConfig

    fields = {"epochs": args.epochs, "batch": args.batch, "lr": args.lr, "chip_size": args.chip_size,
              "stride": args.stride, "max_chips": args.max_chips, "steps_per_epoch": args.steps_per_epoch,
              "min_steps_per_epoch": args.min_steps_per_epoch, "patience": args.patience, "seed": args.seed,
              "device": args.device, "gain_jitter": args.gain_jitter, "val_fraction": args.val_fraction}
    for name in ("method", "lambda_feat", "lambda_pred", "temperature", "rehearsal_scenes", "freeze_encoder"):
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    return TrainConfig(**fields), {
        "extent": args.extent, "polygon_layer": args.layer, "extent_layer": args.extent_layer,
        "band_mapping": parse_band_mapping(args.bands) if args.bands else None,
        "scale": args.scale, "offset": args.offset, "overwrite": args.overwrite, "resume": args.resume,
        "progress": _ProgressPrinter(), "log": lambda message: print(message, file=sys.stderr)}


def _report_training(result):
    from .bundle import read_spec

    spec = read_spec(result.bundle_path)
    print(f"best epoch {result.best_epoch}: validation IoU {spec.metrics['val_iou']:.3f} at threshold {spec.threshold}")
    print(f"model:  {result.bundle_path}")
    print(f"log:    {result.log_path}")
    print(f"curves: {result.curves_path}")


def run_train(args):
    from .train import train_teacher

    config, options = _training_call(args)
    _report_training(train_teacher(args.raster, args.polygons, args.out, config=config, **options))


def run_finetune(args):
    from .train import finetune_student

    config, options = _training_call(args)
    if args.coarse_raster or args.coarse_polygons:
        if config.method != "joint" or not (args.coarse_raster and args.coarse_polygons):
            raise InputError("--coarse-raster and --coarse-polygons go together, with --method joint only")
        options["coarse"] = (args.coarse_raster, args.coarse_polygons)
    _report_training(finetune_student(args.teacher, args.raster, args.polygons, args.out, config=config, **options))


def add_polygonize_command(subparsers):
    parser = subparsers.add_parser(
        "polygonize", help="footprints from a probability raster at another threshold or minimum area",
        description="Threshold PROB.tif (the <stem>_prob.tif segment wrote) again and trace its footprints, without "
                    "running the model: DIR/<stem>_mask.tif and DIR/<stem>_footprints.gpkg. Unset threshold and "
                    "minimum area are those segment used.")
    parser.add_argument("input", metavar="PROB.tif", help="probability raster written by segment")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the outputs (created if missing)")
    _add_footprint_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=run_polygonize)


def run_polygonize(args):
    from .rethreshold import polygonize_outputs, polygonize_probability

    if not os.path.exists(args.input):
        raise InputError(f"{args.input} does not exist; check the path")
    mask_path, footprints_path = polygonize_outputs(args.input, args.out_dir)
    result = polygonize_probability(args.input, mask_path, footprints_path, threshold=args.threshold,
                                    min_area_ha=args.min_area_ha, overwrite=args.overwrite,
                                    log=lambda message: print(message, file=sys.stderr))
    print(f"{result.footprint_count} footprints, {result.total_area_ha:.2f} ha in total")
    print(f"mask:        {result.mask_path}")
    print(f"footprints:  {result.footprints_path}")


def add_evaluate_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="score a predicted mask against reference footprints",
        description="IoU, F1, precision, recall and boundary F1 of PRED.tif against a reference mask raster on the "
                    "same grid or reference polygons (any CRS). PRED.tif: a mask (1 footprint) or the probability "
                    "raster segment wrote, thresholded at --threshold (default: segment's).")
    parser.add_argument("prediction", metavar="PRED.tif", help="<stem>_mask.tif or <stem>_prob.tif from segment")
    parser.add_argument("--reference", required=True, metavar="REF.gpkg|REF_MASK.tif")
    _add_layer_argument(parser, "--reference")
    parser.add_argument("--extent", metavar="E.gpkg", help="where the reference is complete (only there is scored)")
    _add_layer_argument(parser, "--extent")
    parser.add_argument("--threshold", type=float, metavar="P", help="for a probability raster (default: segment's)")
    parser.add_argument("--tolerance-px", type=int, default=2, help="boundary F1 tolerance in pixels")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args):
    from .metrics import evaluate_mask_raster

    for path in filter(None, (args.prediction, args.reference, args.extent)):
        if not os.path.exists(path):
            raise InputError(f"{path} does not exist; check the path")
    scores = evaluate_mask_raster(args.prediction, args.reference, tolerance_px=args.tolerance_px,
                                  threshold=args.threshold, extent=args.extent, layer=args.layer,
                                  extent_layer=args.extent_layer, log=lambda message: print(message, file=sys.stderr))
    print("  ".join(f"{name} {value:.3f}" for name, value in scores.items()))


COMMANDS = [add_segment_command, add_polygonize_command, add_export_chips_command, add_train_command,
            add_finetune_command, add_evaluate_command]


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m model_core",
                                     description="MineC2F: segment mining footprints in multispectral imagery.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    # Bound GDAL's block cache (default 5 % of RAM) so memory stays flat on big rasters; set it to override.
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    args = build_parser().parse_args(argv)
    try:
        with _terminate_as_interrupt(), _gdal_errors_in_messages():
            args.handler(args)
    except Cancelled as error:
        print(error, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        interrupted = getattr(args, "interrupted", None)
        print(interrupted(args) if interrupted else "interrupted; no output was written", file=sys.stderr)
        return 130
    except MineC2FError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, a job scheduler's stop) handled as Ctrl+C: staged outputs are removed, not left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _gdal_errors_in_messages():
    """GDAL's own "ERROR 1: ..." lines kept off stderr: the errors reach the one-line message (which quotes GDAL's
    reason) as exceptions, so the output stays one line."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()

