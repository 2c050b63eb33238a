"""Python packages the engine needs that a QGIS installation may lack, and the pip command that installs them
into the Python QGIS runs on.

Nothing here imports the packages themselves (torch takes seconds to import); they are only looked up.
"""

import ctypes
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
# shapely 2.0 wheels bundle GEOS 3.11, the oldest GEOS that QGIS 3.22 ships with on current Linux distributions.
SHAPELY_FOR_OLD_GEOS = "shapely>=2,<2.1"


def _is_installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None or a module without a spec
        return False


def missing_requirements():
    """pip requirements to install: packages that cannot be imported, in REQUIRED order, and :func:`shapely_clash`."""
    missing = [requirement for module, requirement in REQUIRED.items() if not _is_installed(module)]
    if "shapely>=2" not in missing and shapely_clash():
        missing.append(SHAPELY_FOR_OLD_GEOS)
    return missing


def process_geos_version():
    """(major, minor) of the GEOS in the process's global symbol scope, or None. On Linux the QGIS application
    and qgis_process link GEOS there, and it then takes precedence over the GEOS bundled in shapely's wheel."""
    try:
        version = ctypes.CDLL(None).GEOSversion
    except (AttributeError, OSError, TypeError):  # TypeError: Windows, where symbols never clash
        return None
    version.restype = ctypes.c_char_p
    major, minor = version().decode().split(".")[:2]
    return int(major), int(minor)


def shapely_clash():
    """True when the installed shapely bundles a newer GEOS than the process provides: its newer functions would
    then run on geometries built by the older GEOS and crash QGIS (shapely 2.1 with QGIS 3.22 on Debian 12)."""
    process_geos = process_geos_version()
    if process_geos is None or not _is_installed("shapely"):
        return False
    import shapely

    return tuple(shapely.geos_version[:2]) > process_geos


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
    """The one-line explanation shown when ``requirements`` must be installed."""
    missing = [requirement for requirement in requirements if requirement != SHAPELY_FOR_OLD_GEOS]
    parts = [f"MineC2F needs Python packages missing from this QGIS: {', '.join(missing)}."] if missing else []
    if SHAPELY_FOR_OLD_GEOS in requirements:
        parts.append(f"The installed shapely bundles a newer GEOS than this QGIS and would crash it; MineC2F needs "
                     f"{SHAPELY_FOR_OLD_GEOS} here.")
    parts.append(f"Install with: {format_command(pip_command(requirements))} (then restart QGIS)")
    return " ".join(parts)


def install(requirements):
    """Run pip for ``requirements``; returns (success, last lines of pip's output)."""
    completed = subprocess.run(pip_command(requirements), capture_output=True, text=True, check=False)
    output = (completed.stdout + completed.stderr).strip().splitlines()
    return completed.returncode == 0, "\n".join(output[-10:])
