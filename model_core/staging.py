"""Outputs written under temporary names and renamed only when a run succeeds: a failed or cancelled run leaves
nothing behind, and nothing the user had is touched unless overwriting is asked for."""

import os
import tempfile
from pathlib import Path

from .errors import OutputError, write_error


class StagedOutputs:
    """Outputs written under temporary names in their destination folders, renamed to their final names by
    :meth:`commit`. Leaving the ``with`` block removes the temporaries; on an exception (including a cancel) it
    also removes the folders it had to create, if still empty.

    ``paths`` maps a role to its final path. Missing or duplicate paths, existing files (unless ``overwrite``),
    paths that are ``protected`` (the input) and folders that cannot be written are refused here, before any work.
    """

    def __init__(self, paths, *, overwrite=False, protected=()):
        missing = [role for role, path in paths.items() if not path]
        if missing:
            raise OutputError(f"no path given for the {', '.join(missing)} output; give one for each output")
        self.final = {role: Path(path) for role, path in paths.items()}
        if len({path.resolve() for path in self.final.values()}) < len(self.final):
            raise OutputError("two outputs have the same path; give each output its own file name")
        protected = {Path(p).resolve() for p in protected}
        for path in self.final.values():
            if path.resolve() in protected:
                raise OutputError(f"output {path} is the input raster; choose another output name")
            if path.is_dir():
                raise OutputError(f"output {path} is a folder; give a file name")
            if path.exists() and not overwrite:
                raise OutputError(f"output {path} already exists; choose another output or allow overwriting "
                                  f"(--overwrite)")
        self.temp, self.created_folders = {}, []
        try:
            for role, path in self.final.items():
                self.temp[role] = self._reserve_temp_name(path)
        except BaseException:
            self._clean_up(failed=True)
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._clean_up(failed=exc_type is not None)
        return False

    def commit(self):
        """Rename every output to its final name, removing a GDAL sidecar (.aux.xml) left by a file replaced there:
        GDAL would read its statistics and metadata as the new file's."""
        for role, path in self.final.items():
            try:
                path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)
                os.replace(self.temp[role], path)
            except OSError as error:
                raise write_error(path, error) from error

    def _reserve_temp_name(self, final):
        """A fresh hidden file name next to ``final`` with the same suffix, proving the folder can be written
        (creating it if needed). The name is left free so any driver can create the file."""
        folders = (final.parent, *final.parent.parents)
        blocking = [folder for folder in folders if folder.exists() and not folder.is_dir()]
        if blocking:
            raise OutputError(f"{blocking[0]} is a file, not a folder; choose another output folder")
        missing = [folder for folder in folders if not folder.exists()]
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self.created_folders += [folder for folder in missing if folder not in self.created_folders]
            handle, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}",
                                            dir=final.parent)
        except OSError as error:
            raise write_error(f"to folder {final.parent}", error) from error
        os.close(handle)
        os.unlink(name)
        return Path(name)

    def _clean_up(self, failed):
        for temp in self.temp.values():
            for leftover in (temp, *(temp.with_name(temp.name + side) for side in ("-journal", "-wal", "-shm",
                                                                                      ".aux.xml"))):
                if leftover.exists():
                    leftover.unlink()
        if failed:
            for folder in self.created_folders:  # deepest first
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
