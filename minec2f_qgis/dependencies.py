"""Python packages the engine needs that a QGIS installation may lack, and the pip command that installs them
into the Python QGIS runs on.

Nothing here imports the packages themselves (torch takes seconds to import); they are only looked up.
"""

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# import name -> pip requirement
REQUIRED = {
    "torch": "torch",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "rasterio": "rasterio",
    "safetensors": "safetensors",
    "shapely": "shapely>=2",
}


def _is_installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None or a module without a spec
        return False


def missing_requirements():
    """pip requirements of the engine's packages that cannot be imported, in REQUIRED order."""
    return [requirement for module, requirement in REQUIRED.items() if not _is_installed(module)]


def qgis_python():
    """The Python interpreter QGIS embeds (``sys.executable`` is often the QGIS binary itself)."""
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    prefix = Path(sys.exec_prefix)
    if os.name == "nt":  # OSGeo4W / standalone installer: apps/Python3x/python.exe
        candidates = [prefix / "python.exe", prefix / "python3.exe"]
    else:  # Linux packages, macOS app bundle
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [prefix / "bin" / f"python{version}", prefix / "bin" / "python3"]
    return str(next((path for path in candidates if path.exists()), candidates[0]))


def pip_command(requirements):
    """The command (argument list) that installs ``requirements`` for QGIS's Python. Where the distribution
    marks that Python as externally managed (Debian, Ubuntu), the packages go to the user's site-packages."""
    command = [qgis_python(), "-m", "pip", "install"]
    externally_managed = (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()
    if externally_managed and sys.prefix == sys.base_prefix:  # a virtual environment is never externally managed
        command += ["--user", "--break-system-packages"]
    return command + list(requirements)


def format_command(command):
    """``command`` as one line to paste into a terminal."""
    return subprocess.list2cmdline(command) if os.name == "nt" else " ".join(
        f"'{part}'" if any(c in part for c in " <>=") else part for part in command)


def missing_message(requirements):
    """The one-line explanation shown when ``requirements`` are missing."""
    return (f"MineC2F needs Python packages missing from this QGIS: {', '.join(requirements)}. "
            f"Install them with: {format_command(pip_command(requirements))} (then restart QGIS)")


def install(requirements):
    """Run pip for ``requirements``; returns (success, last lines of pip's output)."""
    completed = subprocess.run(pip_command(requirements), capture_output=True, text=True, check=False)
    output = (completed.stdout + completed.stderr).strip().splitlines()
    return completed.returncode == 0, "\n".join(output[-10:])
