"""Model bundles: one ``.safetensors`` file holding the weights and, in its header, the JSON model spec.

Loading validates the spec and the weights against it and refuses anything else with a message that says what
is wrong and what to do. Nothing is ever unpickled.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .bands import Band
from .defaults import MIN_AREA_HA
from .errors import BundleError, OutputError, check_output_folder, write_error

FORMAT = "minec2f-bundle"
FORMAT_VERSION = 1
SPEC_KEY = "minec2f_spec"
ROLES = ("teacher", "student", "supervised")


def utc_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


UNFINISHED = "training_unfinished"  # metrics key: saved during training, cleared when the run ends


@dataclass
class ModelSpec:
    """Everything needed to rebuild, feed and judge a model; stored as JSON in the bundle header."""
    name: str
    architecture: str
    encoder: str
    encoder_depth: int
    decoder_channels: list
    in_channels: int
    bands: list            # [{"name": "B02", "wavelength_nm": 490.0}, ...] in input order
    norm_mean: list        # per band, reflectance units
    norm_std: list
    tile_size: int = 256
    overlap: int = 32
    threshold: float = 0.5
    min_area_ha: float = MIN_AREA_HA
    role: str = "supervised"
    method: str = ""
    parent_hash: str = None
    training: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str = field(default_factory=utc_now)
    description: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def band_list(self):
        return [Band(b["name"], float(b["wavelength_nm"])) for b in self.bands]

    def unfinished_note(self):
        """What to say of a bundle saved by a training run that has not finished (cancelled, interrupted or
        failed after an epoch), else None."""
        if not self.metrics.get(UNFINISHED):
            return None
        return (f"model {self.name} is the best epoch ({self.metrics.get('best_epoch')}) of a training run that did "
                "not finish; finish it with --resume while its .resume.safetensors checkpoint remains (or train it "
                "again) before relying on it")

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text, source="bundle"):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise BundleError(f"{source}: the model spec in the header is not valid JSON ({error}); "
                              "the file is damaged, get a fresh copy") from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{source} is not a MineC2F model bundle; choose a .safetensors file made by MineC2F")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(f"{source} uses bundle format {version}, newer than this MineC2F reads "
                              f"({FORMAT_VERSION}); update the MineC2F plugin")
        known = {f.name for f in fields(cls)}
        required = {"name", "architecture", "encoder", "encoder_depth", "decoder_channels", "in_channels", "bands",
                    "norm_mean", "norm_std"}
        missing = sorted(required - data.keys())
        if missing:
            raise BundleError(f"{source}: the model spec lacks {', '.join(missing)}; the file is damaged or not "
                              "made by MineC2F")
        spec = cls(**{key: value for key, value in data.items() if key in known})
        spec.validate(source)
        return spec

    def validate(self, source="bundle"):
        problems = []
        if not (isinstance(self.in_channels, int) and self.in_channels > 0):
            problems.append(f"in_channels={self.in_channels!r}")
        for name in ("bands", "norm_mean", "norm_std"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != self.in_channels:
                problems.append(f"{name} must list {self.in_channels} entries")
        if isinstance(self.bands, list) and not all(isinstance(b, dict) and "name" in b and "wavelength_nm" in b
                                                    for b in self.bands):
            problems.append("each band needs a name and a wavelength_nm")
        if isinstance(self.norm_std, list) and any(not isinstance(s, (int, float)) or s <= 0 for s in self.norm_std):
            problems.append("norm_std must be positive")
        if self.role not in ROLES:
            problems.append(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not (0.0 < float(self.threshold) < 1.0):
            problems.append(f"threshold {self.threshold} is not between 0 and 1")
        if not (isinstance(self.tile_size, int) and self.tile_size > 0 and 0 <= self.overlap < self.tile_size):
            problems.append(f"tile_size {self.tile_size} / overlap {self.overlap} are not usable")
        if problems:
            raise BundleError(f"{source}: invalid model spec ({'; '.join(problems)}); the file is damaged or was "
                              "edited by hand")


@dataclass
class Bundle:
    spec: ModelSpec
    net: torch.nn.Module
    sha256: str
    path: Path


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(path, net, spec, *, overwrite=False):
    """Write ``net``'s weights and ``spec`` to ``path`` atomically; refuse to replace a file unless ``overwrite``."""
    path = Path(path)
    spec.validate(str(path))
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the model a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists already; choose another file name or allow overwriting")
    check_output_folder(path.parent, "output")
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in net.state_dict().items()}
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temp, metadata={SPEC_KEY: spec.to_json()})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it private; a model is a file to share
        os.replace(temp, path)
    except OSError as error:
        raise write_error(path, error) from error
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def _open(path):
    path = Path(path)
    if path.is_dir():
        raise BundleError(f"model {path} is a folder; choose a .safetensors model bundle file in it")
    if not path.is_file():
        raise BundleError(f"model file {path} does not exist; choose an existing .safetensors model bundle")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        if path.suffix.lower() != ".safetensors":
            raise BundleError(f"{path} is not a model bundle (a {path.suffix or 'suffix-less'} file); choose a "
                              ".safetensors model bundle made by MineC2F") from error
        raise BundleError(f"{path} is not a readable model bundle (truncated or not a .safetensors file: {error}); "
                          "get a fresh copy of the model") from error


def read_spec(path):
    """The spec of the bundle at ``path``, read from the header only (fast)."""
    with _open(path) as reader:
        metadata = reader.metadata() or {}
    if SPEC_KEY not in metadata:
        raise BundleError(f"{path} is a safetensors file but not a MineC2F model bundle (no model spec); "
                          "choose a bundle made by MineC2F")
    return ModelSpec.from_json(metadata[SPEC_KEY], str(path))


def load_bundle(path, device="cpu"):
    """Load and validate the bundle at ``path``; its net is on ``device`` in eval mode."""
    from .nets import SegmentationNet

    path = Path(path)
    spec = read_spec(path)
    try:
        with _open(path) as reader:
            state = {key: reader.get_tensor(key) for key in reader.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path}: the weights cannot be read ({error}); the file is truncated or damaged, "
                          "get a fresh copy") from error
    net = SegmentationNet.from_spec(spec)
    try:
        net.load_state_dict(net.fitting_state(state), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise BundleError(f"{path}: the weights do not fit the model spec ({first}); the file is damaged or "
                          "was assembled by hand") from error
    return Bundle(spec, net.to(device).eval(), file_sha256(path), path)
