#!/usr/bin/env bash
# Runs the whole MineC2F test suite (engine and QGIS plugin), installing what is missing first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
exec python -m pytest -q -p no:cacheprovider "$@" tests
