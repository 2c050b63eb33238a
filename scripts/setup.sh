#!/usr/bin/env bash
# Installs what MineC2F needs on Debian 12 (QGIS 3.22 from apt, a .venv on the system Python)
# and returns quickly when everything is already there. Sourced by demo.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
APT_PACKAGES=(qgis python3-qgis qgis-providers python3-rasterio python3-venv xvfb)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV from /usr/bin/python3 with --system-site-packages"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Install when requirements.txt changed since the last successful install, or when a requirement is missing
# from the venv or no longer at its pinned version (removed or upgraded by hand since).
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
installed() {
  "$VENV/bin/python" - "$ROOT/requirements.txt" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    requirement = line.split("#")[0].strip()
    if not requirement:
        continue
    name, pin = re.match(r"([A-Za-z0-9_.-]+)\s*(?:==\s*([^,;\s]+))?", requirement).groups()
    try:
        found = version(name)
    except PackageNotFoundError:
        sys.exit(f"setup: {name} is missing from the venv")
    if pin and found != pin:
        sys.exit(f"setup: {name} {found} is installed, the requirements pin {pin}")
PY
}
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! installed; then
  echo "setup: installing Python requirements into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
