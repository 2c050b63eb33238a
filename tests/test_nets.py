"""Networks: any band count, stride-aligned shapes, decoder feature taps for distillation."""

import pytest
import torch

from model_core.errors import BundleError
from model_core.nets import build_net, copy_weights


@pytest.mark.parametrize("bands", [4, 6, 12])
def test_forward_shape_for_any_band_count(bands):
    net = build_net("Unet", "resnet18", in_channels=bands, encoder_depth=3, decoder_channels=[16, 8, 4]).eval()
    with torch.no_grad():
        assert net(torch.randn(2, bands, 32, 48)).shape == (2, 1, 32, 48)
    assert net.stride == 8


def test_default_net_features_are_multi_stage_coarse_to_fine():
    net = build_net(in_channels=6).eval()
    with torch.no_grad():
        logits, features = net.forward_with_features(torch.randn(1, 6, 64, 64))
        plain = net(torch.randn(1, 6, 64, 64))
    assert logits.shape == plain.shape == (1, 1, 64, 64)
    assert len(features) >= 3
    sizes = [f.shape[-1] for f in features]
    assert sizes == sorted(sizes) and sizes[-1] == 64
    # taps are only collected on request
    assert net._taps is None


def test_copy_weights_makes_identical_student():
    teacher = build_net("Unet", "resnet18", in_channels=6, encoder_depth=3, decoder_channels=[16, 8, 4]).eval()
    student = copy_weights(teacher, build_net("Unet", "resnet18", in_channels=6, encoder_depth=3,
                                              decoder_channels=[16, 8, 4])).eval()
    x = torch.randn(1, 6, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), student(x))


def test_unknown_architecture_and_encoder():
    with pytest.raises(BundleError, match="unknown architecture"):
        build_net("NoSuchNet", "resnet18", 6)
    with pytest.raises(BundleError, match="cannot build Unet with encoder 'no-such-encoder'"):
        build_net("Unet", "no-such-encoder", 6)
