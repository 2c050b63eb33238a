"""Exceptions raised by model_core. Every message names the problem and the fix."""

import errno
import os
from pathlib import Path


class MineC2FError(Exception):
    """Base class: an error the user can act on (shown as one line by the CLI and the plugin)."""


class InputError(MineC2FError):
    """A raster, polygon layer or parameter cannot be used as given."""


class BundleError(MineC2FError):
    """A model bundle is missing, corrupt, foreign or of a newer format."""


class BandMismatchError(InputError):
    """The raster's bands cannot supply the bands the model needs."""


class OutputError(MineC2FError):
    """An output exists already (and overwrite was not asked for) or cannot be written."""


class Cancelled(MineC2FError):
    """The run was cancelled by the user; no partial output is left behind."""


WRITE_FIXES = {errno.ENOSPC: "free disk space or choose another folder",
               errno.EDQUOT: "free space in your disk quota or choose another folder",
               errno.EACCES: "choose a folder you can write to", errno.EPERM: "choose a folder you can write to",
               errno.EROFS: "the disk is read-only; choose another folder",
               errno.EISDIR: "a folder has that name; give a file name"}


def write_error(what, error):
    """OutputError for the OSError ``error`` raised while writing ``what``, with the fix its cause calls for."""
    fix = WRITE_FIXES.get(error.errno, "check that the folder exists and can be written, and that the disk has space")
    return OutputError(f"cannot write {what}: {error.strerror or error}; {fix}")


def check_output_folder(folder, option):
    """Raise OutputError unless ``folder`` is an existing, writable folder (``option`` names the setting to change)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; choose another {option}")
    if not folder.is_dir():
        raise OutputError(f"folder {folder} does not exist; create it or choose another {option}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"folder {folder} is not writable; choose another {option}")
