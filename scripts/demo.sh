#!/usr/bin/env bash
# Segments the sample scene with the bundled model and says where the outputs are.
# The sample scene (a synthetic Sentinel-2 L2A-like scene with three mines) is generated deterministically on
# first use, with its true footprint, so the result can be compared with the truth.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
SAMPLE="resources/sample"
OUT="out/demo"
if [[ ! -f "$SAMPLE/sample_scene.tif" ]]; then
  python -m model_core.synthetic "$SAMPLE" --stem sample_scene --size 768 --seed 2026 --mines 3 --landscape mixed >/dev/null
fi
python -m model_core segment "$SAMPLE/sample_scene.tif" --model resources/models/minec2f_default.safetensors \
  --out-dir "$OUT" --overwrite
python -m model_core evaluate "$OUT/sample_scene_mask.tif" --reference "$SAMPLE/sample_scene_fine.tif"
echo "demo: outputs in $ROOT/$OUT: sample_scene_prob.tif, sample_scene_mask.tif, sample_scene_footprints.gpkg"
echo "demo: true footprint for comparison: $ROOT/$SAMPLE/sample_scene_fine.gpkg"
