"""The engine's reduced precision against float32: the bundled model's IoU at its threshold on both scenes of the
24 in bench/finetune_one_scene.py's pairs, run with ``precision="float32"`` and with the default ``"auto"``
(bfloat16 on CPUs with native BF16, see model_core.infer.autocast_for), and how far the probabilities move.

    .venv/bin/python bench/precision.py [--model BUNDLE] [--work DIR]

On a CPU without native BF16 both runs are float32 and the table shows no difference.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coarse_to_fine import predict_scene  # noqa: E402
from finetune_one_scene import PAIRS, write_pair  # noqa: E402
from model_core import paths  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.infer import cpu_has_native_bf16  # noqa: E402
from model_core.metrics import iou_by_threshold  # noqa: E402
from model_core.rasters import decode_probability  # noqa: E402


def compare(bundle, scene, out):
    """(IoU in float32, IoU in auto precision, largest and mean |probability change|, mask pixels that flip)."""
    threshold, probs, ious = bundle.spec.threshold, {}, {}
    for precision in ("float32", "auto"):
        prob_path = out / f"prob_{precision}.tif"
        predict_scene(bundle, scene["image"], prob_path, precision=precision)
        with rasterio.open(prob_path) as src:
            probs[precision] = decode_probability(src.read(1))[0]
        ious[precision] = iou_by_threshold(prob_path, scene["fine_mask"], [threshold])[threshold]
    change = np.abs(probs["float32"] - probs["auto"])
    flips = int(((probs["float32"] >= threshold) != (probs["auto"] >= threshold)).sum())
    return ious["float32"], ious["auto"], float(change.max()), float(change.mean()), flips


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--work", type=Path, help="keep the scenes and probabilities here (default: a temp dir)")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    auto = "bfloat16" if cpu_has_native_bf16() else "float32 (no native BF16 on this CPU)"
    print(f"model {bundle.spec.name}, threshold {bundle.spec.threshold}; auto precision here: {auto}")
    print(f"{'scene':22}{'IoU float32':>12}{'IoU auto':>10}{'max |dp|':>10}{'mean |dp|':>11}{'flipped px':>12}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in PAIRS:
            for part, scene in zip("ab", write_pair(name, work)):
                row = compare(bundle, scene, work / name / part)
                rows.append(row)
                print(f"{name + ' ' + part:22}{row[0]:12.4f}{row[1]:10.4f}{row[2]:10.3f}{row[3]:11.4f}{row[4]:12d}",
                      flush=True)
    table = np.array(rows)
    print(f"mean IoU: float32 {table[:, 0].mean():.4f}, auto {table[:, 1].mean():.4f}; largest change of one "
          f"scene's IoU {np.abs(table[:, 0] - table[:, 1]).max():.4f}; flipped mask pixels per scene "
          f"{int(table[:, 4].min())}-{int(table[:, 4].max())} of {512 * 512}")


if __name__ == "__main__":
    main()
