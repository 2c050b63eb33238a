"""Networks: any band count, stride-aligned shapes, decoder feature taps for distillation."""

import pytest
import segmentation_models_pytorch as smp
import torch

from model_core.errors import BundleError
from model_core.nets import build_net, copy_weights, count_parameters


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


@pytest.mark.parametrize("encoder, depth", [("mobilenet_v2", 4), ("mobilenet_v2", 3), ("vgg11", 4),
                                            ("mobilenet_v2", 5)])
def test_encoder_layers_that_smp_runs_and_discards_are_dropped_with_the_same_logits(encoder, depth):
    decoder_channels = [32, 16, 8, 8, 8][:depth]
    torch.manual_seed(0)
    full = smp.Unet(encoder, encoder_weights=None, in_channels=6, classes=1, encoder_depth=depth,
                    decoder_channels=decoder_channels).eval()
    net = build_net("Unet", encoder, 6, depth, decoder_channels).eval()
    net.load_state_dict(net.fitting_state({f"model.{k}": v for k, v in full.state_dict().items()}), strict=True)
    x = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        assert torch.allclose(full(x), net(x), atol=1e-6)
        assert net.forward_with_features(x)[1][-1].shape[-1] == 64
    layers_dropped = len(full.encoder.features) - len(net.model.encoder.features)
    assert layers_dropped > 0 if depth < 5 else layers_dropped == 0
    if (encoder, depth) == ("mobilenet_v2", 4):  # the default encoder: its stage 5 held 70 % of the weights
        assert count_parameters(full) - count_parameters(net) > 2 * count_parameters(net)
