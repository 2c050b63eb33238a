"""The inference and mine-size benchmarks run and print their figures (at toy sizes here: the figures themselves
are measured by running the scripts as the README says, not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args):
    completed = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_throughput_bench_prints_km2_per_s_tiles_per_s_and_the_ratio():
    out = run_bench("bench/infer_throughput.py", "--size", "256", "--repeats", "1")
    rows = re.findall(r"^(naive|engine) .*?\s([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)$", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["naive", "engine"], out
    assert all(float(value) > 0 for row in rows for value in row[1:]), out
    assert re.search(r"engine / naive throughput \(km²/s\): [\d.]+x", out), out


def test_memory_bench_prints_peak_rss_per_size():
    out = run_bench("bench/infer_memory.py", "--sizes", "256", "512")
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)x$", out, re.MULTILINE)
    assert [int(size) for size, _, _ in rows] == [256, 512], out
    assert all(float(rss) > 0 for _, rss, _ in rows) and float(rows[0][2]) == 1.0, out


def test_mine_size_bench_prints_scores_per_size():
    out = run_bench("bench/mine_size.py", "--sizes", "1", "2", "--scenes", "1")
    rows = re.findall(r"^\S+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
    assert [float(row[0]) for row in rows] == [1.0, 2.0], out
    assert all(0 <= float(value) <= 1 for row in rows for value in row[1:]), out


def test_speck_bench_prints_seconds_and_what_the_minimum_area_left():
    out = run_bench("bench/vectorize_specks.py", "--size", "300")
    match = re.search(r"300² px, (\d+) speck pixels around a 60² px footprint: [\d.]+ s, 1 polygon\(s\), (\d+) "
                      r"footprint pixels left in the mask \(3600 in the footprint\)", out)
    assert match and int(match.group(1)) > 0, out
    assert 3600 <= int(match.group(2)) <= 3600 + 60 * 4, out  # specks touching the footprint join it
