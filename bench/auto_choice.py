"""Which method ``finetune --method auto`` (the default) picks from a teacher on each one-scene bench pair: the
teacher's IoU on scene A's validation chips, as fine-tuning measures it before its first epoch, against
``defaults.WEAK_TEACHER_IOU`` (the bound holds for teachers trained on coarse outlines alone). No training; about a
minute.

    .venv/bin/python bench/auto_choice.py [--teacher BUNDLE] [--seed 0] [--pairs NAME ...]

Set beside ``bench/finetune_one_scene.py``'s results for ``--method minec2f`` and ``--method finetune``, it shows
how the two methods compare at each starting IoU.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finetune_one_scene import PAIRS, write_pair  # noqa: E402
from model_core import defaults, paths  # noqa: E402
from model_core import train as training  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.device import resolve_device  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(paths.DEFAULT_MODEL), help="teacher bundle (default: bundled)")
    parser.add_argument("--seed", type=int, default=0, help="the CLI's --seed (it sets the validation split)")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    args = parser.parse_args()
    teacher = load_bundle(args.teacher)
    config = training.TrainConfig(**defaults.STUDENT, seed=args.seed)
    info = resolve_device("cpu")
    print(f"teacher {Path(args.teacher).name}; IoU on scene A's validation chips (CLI defaults, seed {args.seed}); "
          f"auto fine-tunes plainly from a coarse-only teacher below {defaults.WEAK_TEACHER_IOU}, else distils "
          f"(this teacher: {teacher.spec.role}, method {teacher.spec.method})")
    print(f"{'pair':20}{'val chips':>10}{'teacher IoU':>12}{'auto picks':>12}")
    with tempfile.TemporaryDirectory() as work:
        for name in args.pairs:
            scene_a, _ = write_pair(name, Path(work))
            data = training.chip_datasets(config, [scene_a["image"]], scene_a["fine_polygons"],
                                          teacher.spec.band_list(), val_fraction=config.val_fraction,
                                          norm=(teacher.spec.norm_mean, teacher.spec.norm_std))
            start, method = training.choose_method(teacher, data, config, info, log=lambda message: None)
            iou = start[0]["val_iou_best_threshold"]
            print(f"{name:20}{len(data.val):10d}{iou:12.3f}{method:>12}", flush=True)


if __name__ == "__main__":
    main()
