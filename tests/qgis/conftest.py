"""Fixtures for the plugin tests (pytest-qgis, offscreen): the provider registered as the plugin does, a model
bundle whose output is known, and a scene whose footprints are therefore known."""

import numpy as np
import pytest

from known_scene import BLOCKS, MODEL_BANDS


@pytest.fixture
def plugin(qgis_iface, qgis_processing):
    """The plugin as QGIS loads it (classFactory + initGui), unloaded after the test."""
    from minec2f_qgis import classFactory

    instance = classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def constant_bundle_path(tmp_path_factory):
    """A tiny U-Net bundle whose head outputs a constant logit of +6 (probability 0.998) wherever data is valid,
    so each valid-data region of a scene becomes exactly one footprint. Tile 64, overlap 16, threshold 0.5,
    minimum area 0.5 ha."""
    import torch

    from model_core.bundle import ModelSpec, save_bundle
    from model_core.nets import build_net

    decoder_channels = [16, 8, 4]
    net = build_net("Unet", "resnet18", in_channels=len(MODEL_BANDS), encoder_depth=3,
                    decoder_channels=decoder_channels)
    head = net.model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(6.0)
    spec = ModelSpec(name="constant-test", architecture="Unet", encoder="resnet18", encoder_depth=3,
                     decoder_channels=decoder_channels, in_channels=len(MODEL_BANDS),
                     bands=[{"name": name, "wavelength_nm": nm} for name, nm in MODEL_BANDS],
                     norm_mean=[0.1] * len(MODEL_BANDS), norm_std=[0.05] * len(MODEL_BANDS), tile_size=64,
                     overlap=16, threshold=0.5, min_area_ha=0.5, role="supervised", method="constant",
                     metrics={"val_iou": 0.5}, description="Predicts footprint wherever there is data (tests).")
    path = tmp_path_factory.mktemp("bundle") / "constant.safetensors"
    save_bundle(path, net, spec)
    return path


@pytest.fixture
def known_scene(make_raster):
    """A 96 x 96 px, 10 m, six-band uint16 scene (band descriptions B02..B12, EPSG:32633) that is nodata (0)
    except in BLOCKS: with the constant bundle the footprints are exactly these blocks."""
    data = np.zeros((len(MODEL_BANDS), 96, 96), dtype=np.uint16)
    rng = np.random.default_rng(0)
    for rows, cols in BLOCKS:
        data[:, rows, cols] = rng.integers(1200, 3000, size=data[:, rows, cols].shape)
    return make_raster("known_scene.tif", data, nodata=0, descriptions=[name for name, _ in MODEL_BANDS])
