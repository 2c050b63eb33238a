"""Shared test fixtures: small rasters written on demand, and a tiny random-weight model bundle."""

import pytest
from raster_files import write_raster


@pytest.fixture
def make_raster(tmp_path):
    """Factory: ``make_raster(name, data, **kwargs)`` writes tmp_path/name with :func:`write_raster`."""
    return lambda name, data, **kwargs: write_raster(tmp_path / name, data, **kwargs)


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory):
    """A random-weight bundle of a tiny U-Net (resnet18 encoder, depth 3) for the six default model bands:
    tile 64, overlap 16, threshold 0.5, min area 0 ha."""
    import torch

    from model_core.bands import DEFAULT_MODEL_BANDS
    from model_core.bundle import FORMAT_VERSION, ModelSpec, save_bundle
    from model_core.nets import build_net

    torch.manual_seed(0)
    decoder_channels = [16, 8, 4]
    net = build_net("Unet", "resnet18", in_channels=len(DEFAULT_MODEL_BANDS), encoder_depth=3,
                    decoder_channels=decoder_channels)
    spec = ModelSpec(
        format="minec2f-bundle", format_version=FORMAT_VERSION, name="tiny-test", architecture="Unet",
        encoder="resnet18", encoder_depth=3, decoder_channels=decoder_channels, in_channels=len(DEFAULT_MODEL_BANDS),
        bands=[{"name": b.name, "wavelength_nm": b.wavelength_nm} for b in DEFAULT_MODEL_BANDS],
        norm_mean=[0.1] * len(DEFAULT_MODEL_BANDS), norm_std=[0.05] * len(DEFAULT_MODEL_BANDS), tile_size=64,
        overlap=16, threshold=0.5, min_area_ha=0.0, role="supervised", method="random-init", parent_hash=None,
        training={}, hyperparameters={}, metrics={}, created="2026-01-01T00:00:00Z",
        description="random weights, for tests")
    path = tmp_path_factory.mktemp("bundle") / "tiny.safetensors"
    save_bundle(path, net, spec)
    return path


@pytest.fixture
def tiny_bundle(tiny_bundle_path):
    """The tiny bundle, loaded."""
    from model_core.bundle import load_bundle

    return load_bundle(tiny_bundle_path)
