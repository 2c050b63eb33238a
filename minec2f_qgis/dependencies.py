"""Python packages the engine needs that a QGIS installation may lack, and the pip command that installs them
into the Python QGIS runs on.

Nothing here imports the packages themselves (torch takes seconds to import); they are only looked up.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# import name -> pip requirement; shapely's depends on the GEOS of the process (shapely_requirement)
REQUIRED = {
    "torch": "torch",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "rasterio": "rasterio",
    "safetensors": "safetensors",
}
# shapely 2.0 wheels bundle GEOS 3.11, the oldest GEOS that QGIS 3.22 ships with on current Linux distributions;
# shapely 2.1 wheels bundle GEOS 3.13.
SHAPELY = "shapely>=2"
SHAPELY_FOR_OLD_GEOS = "shapely>=2,<2.1"
NEWEST_SHAPELY_GEOS = (3, 13)


def _is_installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None or a module without a spec
        return False


def _has_shapely_2():
    """shapely can be imported and is 2.0 or newer (Debian 12's python3-shapely is 1.8, without the API used)."""
    if not _is_installed("shapely"):
        return False
    try:
        return int(importlib.metadata.version("shapely").split(".")[0]) >= 2
    except (importlib.metadata.PackageNotFoundError, ValueError):  # cannot tell: importing it will
        return True


def missing_requirements():
    """pip requirements to install: packages that cannot be imported, in REQUIRED order, then shapely when it is
    missing (:func:`shapely_requirement`) or clashes with the process's GEOS (:func:`shapely_clash`)."""
    missing = [requirement for module, requirement in REQUIRED.items() if not _is_installed(module)]
    if not _has_shapely_2():
        missing.append(shapely_requirement())
    elif shapely_clash():
        missing.append(SHAPELY_FOR_OLD_GEOS)
    return missing


def shapely_requirement():
    """The shapely to install: the 2.0 series where the process's GEOS is older than the newest wheels' (the
    newest shapely would be refused by :func:`shapely_clash` after the install), else any shapely 2."""
    process_geos = process_geos_version()
    return SHAPELY_FOR_OLD_GEOS if process_geos is not None and process_geos < NEWEST_SHAPELY_GEOS else SHAPELY


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
    if process_geos is None or not _has_shapely_2():
        return False
    import shapely

    return tuple(shapely.geos_version[:2]) > process_geos


def qgis_python():
    """The Python interpreter QGIS embeds. ``sys.executable`` is often the QGIS binary itself, or whichever python3
    comes first on PATH (pyenv, conda), so outside a virtual environment the interpreter is found from
    ``sys.exec_prefix``, the installation this process runs on."""
    if sys.prefix != sys.base_prefix:  # a virtual environment: its own interpreter
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
    clash = SHAPELY_FOR_OLD_GEOS in requirements and _has_shapely_2()
    missing = [requirement for requirement in requirements if not (clash and requirement == SHAPELY_FOR_OLD_GEOS)]
    too_old = " (or too old)" if _is_installed("shapely") and not _has_shapely_2() else ""
    parts = [f"MineC2F needs Python packages missing from this QGIS{too_old}: {', '.join(missing)}."] if missing else []
    if clash:
        parts.append(f"The installed shapely bundles a newer GEOS than this QGIS and would crash it; MineC2F needs "
                     f"{SHAPELY_FOR_OLD_GEOS} here.")
    parts.append(f"Install with: {format_command(pip_command(requirements))} (then restart QGIS)")
    if not _is_installed("pip"):
        parts.append("pip is missing from this Python too: install it first (Debian, Ubuntu: apt install python3-pip).")
    return " ".join(parts)


def install(requirements):
    """Run pip for ``requirements``; returns (success, last lines of pip's output)."""
    completed = subprocess.run(pip_command(requirements), capture_output=True, text=True, check=False)
    output = (completed.stdout + completed.stderr).strip().splitlines()
    return completed.returncode == 0, "\n".join(output[-10:])
