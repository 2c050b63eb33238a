#!/usr/bin/env bash
# Segments the bundled sample scene with the bundled model and says where the outputs are.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
SCENE="resources/sample/sample_scene.tif"
OUT="out/demo"
mkdir -p "$OUT"
python -m model_core segment "$SCENE" --model resources/models/minec2f_default.safetensors --out-dir "$OUT" --overwrite
echo "demo: open $OUT/sample_scene_prob.tif, $OUT/sample_scene_mask.tif and $OUT/sample_scene_footprints.gpkg in QGIS"
