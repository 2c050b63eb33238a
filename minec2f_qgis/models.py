"""The models the plugin offers: the bundled one and any bundle in the user's models folder."""

import html
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication


def user_models_dir():
    """``<QGIS settings>/minec2f/models``: drop .safetensors bundles here to offer them in the dock."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "minec2f" / "models"


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    label: str
    spec: object = None  # model_core.bundle.ModelSpec, None when the bundle cannot be read
    error: str = ""


def available_models():
    """ModelEntry for the bundled model (first) and each bundle in :func:`user_models_dir` (not the resume
    checkpoints an interrupted training leaves there), sorted by name.
    A bundle that cannot be read is listed with its error, so the user sees why it is unusable."""
    from model_core.bundle import read_spec
    from model_core.errors import MineC2FError
    from model_core.paths import DEFAULT_MODEL

    paths = [(DEFAULT_MODEL, "bundled")] + [(path, "user") for path in sorted(user_models_dir().glob("*.safetensors"))
                                            if not path.name.endswith(".resume.safetensors")]
    entries = []
    for path, origin in paths:
        try:
            spec = read_spec(path)
        except MineC2FError as error:
            entries.append(ModelEntry(path, f"{path.stem} ({origin}, unusable)", None, str(error)))
        else:
            unfinished = ", unfinished training" if spec.unfinished_note() else ""
            entries.append(ModelEntry(path, f"{spec.name} ({origin}{unfinished})", spec))
    return entries


def model_card(entry):
    """HTML summary of a model for the dock: what it is, its bands, recommended settings, validation scores."""
    if entry.spec is None:
        return f"<b>Cannot use {entry.path.name}</b>: {entry.error}"
    from model_core.bundle import UNFINISHED

    spec = entry.spec
    metrics = ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in spec.metrics.items()
                        if not isinstance(value, (dict, list)) and key != UNFINISHED)
    rows = [("Role", f"{spec.role}" + (f" ({spec.method})" if spec.method else "")),
            ("Network", f"{spec.architecture} / {spec.encoder}"),
            ("Bands", " ".join(band["name"] for band in spec.bands)),
            ("Defaults", f"threshold {spec.threshold:g}, min. area {spec.min_area_ha:g} ha, tile {spec.tile_size} px"),
            ("Validation", metrics or "not recorded"),
            ("Created", spec.created)]
    table = "".join(f"<tr><td><i>{key}</i>&nbsp;</td><td>{value}</td></tr>" for key, value in rows)
    description = f"<p>{spec.description}</p>" if spec.description else ""
    if spec.unfinished_note():
        description += f"<p><b>Warning</b>: {html.escape(spec.unfinished_note())}</p>"
    return f"<b>{spec.name}</b>{description}<table>{table}</table><small>{entry.path.name}</small>"
