#!/usr/bin/env bash
# Builds dist/minec2f_qgis.zip: one plugin folder, minec2f_qgis/, holding what pb_tool.cfg lists - the plugin
# code, metadata.txt, LICENSE, the engine (model_core/) and resources/ (bundled model and card, styles, icons).
# Needs only bash and Python 3. Install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/dist/minec2f_qgis.zip}"
PYTHON="$( [[ -x "$ROOT/.venv/bin/python" ]] && echo "$ROOT/.venv/bin/python" || echo python3 )"
mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$ROOT" "$OUT" <<'PY'
import configparser, os, sys, zipfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
# pb_tool.cfg names the plugin folder's entries; each comes from minec2f_qgis/ or, if not there, the repo root.
config = configparser.ConfigParser()
config.read(root / "pb_tool.cfg")
entries = [name for key in ("python_files", "extras", "extra_dirs") for name in config["files"][key].split()]
sources = []
for entry in entries:
    source = next((path for path in (root / "minec2f_qgis" / entry, root / entry) if path.exists()), None)
    if source is None:
        sys.exit(f"package: {entry} (pb_tool.cfg) is neither in minec2f_qgis/ nor at the repository root")
    sources.append((source, entry))
skip_dirs = {"__pycache__", ".pytest_cache"}
skip_suffixes = {".pyc", ".pyo"}

def files(source):
    if source.is_file():
        yield source, Path()
        return
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix not in skip_suffixes and not name.startswith("."):
                yield path, path.relative_to(source)

temp = out.with_name(f".{out.name}.partial")
count = 0
with zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
    for source, target in sources:
        for path, relative in files(source):
            name = Path("minec2f_qgis") / target / relative
            archive.write(path, name.as_posix())
            count += 1
os.replace(temp, out)
print(f"package: {out} ({count} files, {out.stat().st_size / 1e6:.1f} MB)")
PY
