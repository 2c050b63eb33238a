"""Peak memory of `python -m model_core segment` on 12-band rasters of growing size.

Each size runs in a fresh subprocess (the CLI, as users run it); its peak RSS comes from the kernel's
rusage for that child (os.wait4). Rasters are generated strip by strip in a temporary folder, deleted after,
by another subprocess: Linux counts the parent's resident memory at fork/exec into the child's peak, so this
process stays small.

    python bench/infer_memory.py [--model BUNDLE] [--sizes 1000 4000 10000] [--tile N] [--threshold P] [--threads N]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core import paths  # noqa: E402


def peak_rss_mb(command, env):
    """Run ``command``; return (peak RSS in MB, seconds). Raises if it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {process.stderr.read().decode()}")
    return usage.ru_maxrss / 1024.0, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=None,
                        help="passed to segment; a high value keeps an untrained model's noise out of the polygons")
    parser.add_argument("--threads", type=int, default=None, help="OMP/torch threads of the child")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"model {Path(args.model).name}; `python -m model_core segment` per size, fresh process each")
    print(f"{'size':>7}{'Mpx':>8}{'seconds':>9}{'peak RSS MB':>13}{'vs first':>10}")
    first = None
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            raster = Path(tmp) / f"scene_{size}.tif"
            subprocess.run([sys.executable, str(ROOT / "bench" / "big_raster.py"), str(raster), str(size)], check=True)
            command = [sys.executable, "-m", "model_core", "segment", str(raster), "--model", args.model,
                       "--out-dir", str(Path(tmp) / "out"), "--quiet", "--device", "cpu"]
            for option, value in (("--tile", args.tile), ("--threshold", args.threshold)):
                if value is not None:
                    command += [option, str(value)]
            rss, seconds = peak_rss_mb(command, env)
        first = first or rss
        print(f"{size:>7}{size * size / 1e6:8.1f}{seconds:9.1f}{rss:13.1f}{rss / first:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
