"""Exceptions raised by model_core. Every message names the problem and the fix."""


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
