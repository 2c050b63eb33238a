"""Segmentation networks: smp encoder-decoders with any number of input bands, plus feature taps for distillation.

Encoders are always built with ``encoder_weights=None`` (no downloads at run time). The default encoder was
chosen by measured CPU time per tile and size (``bench/encoder_choice.py``): mobilenet_v2 at depth 4 is
2.4 M parameters (9.5 MB), about 19 ms per 256x256 tile on 2 cores, against 46 MB and 31 ms for resnet18 (before
the layers it never used were dropped: 0.7 M parameters now).
"""

import segmentation_models_pytorch as smp
import torch
from torch import nn

from .errors import BundleError

DEFAULT_ARCHITECTURE = "Unet"
DEFAULT_ENCODER = "mobilenet_v2"
DEFAULT_ENCODER_DEPTH = 4
DEFAULT_DECODER_CHANNELS = (64, 32, 16, 16)


class SegmentationNet(nn.Module):
    """Binary segmentation net: ``forward(x) -> logits [N, 1, H, W]`` for ``x`` [N, in_channels, H, W].

    H and W must be multiples of :attr:`stride`. :meth:`forward_with_features` also returns the decoder's stage
    outputs (coarse to fine) that feature distillation compares between teacher and student.
    """

    def __init__(self, model, encoder_depth):
        super().__init__()
        self.model = model
        self.stride = 2 ** encoder_depth
        self.dropped_prefixes = _drop_unused_encoder_layers(model.encoder, encoder_depth)
        self._taps = None
        blocks = getattr(model.decoder, "blocks", None)
        self._tapped = list(blocks) if isinstance(blocks, nn.ModuleList) else [model.decoder]
        for block in self._tapped:
            block.register_forward_hook(self._tap)

    def _tap(self, module, inputs, output):
        if self._taps is not None:
            self._taps.append(output)

    def forward(self, x):
        return self.model(x)

    def forward_with_features(self, x):
        """(logits, [decoder stage outputs, coarse to fine])."""
        self._taps = []
        try:
            logits = self.model(x)
            return logits, self._taps
        finally:
            self._taps = None

    def fitting_state(self, state):
        """``state`` without weights of the encoder layers this net drops (see _drop_unused_encoder_layers), so
        that bundles saved with them still load."""
        return {key: value for key, value in state.items() if not key.startswith(self.dropped_prefixes)}

    @classmethod
    def from_spec(cls, spec):
        return build_net(spec.architecture, spec.encoder, spec.in_channels, encoder_depth=spec.encoder_depth,
                         decoder_channels=spec.decoder_channels)


def build_net(architecture=DEFAULT_ARCHITECTURE, encoder=DEFAULT_ENCODER, in_channels=6,
              encoder_depth=DEFAULT_ENCODER_DEPTH, decoder_channels=DEFAULT_DECODER_CHANNELS):
    """A randomly initialised :class:`SegmentationNet` of smp class ``architecture`` (Unet, UnetPlusPlus, FPN...)."""
    model_class = getattr(smp, architecture, None)
    if not isinstance(model_class, type) or not issubclass(model_class, nn.Module):
        raise BundleError(f"unknown architecture {architecture!r}; use a segmentation-models-pytorch class such as "
                          "Unet")
    kwargs = {"encoder_name": encoder, "encoder_weights": None, "in_channels": int(in_channels), "classes": 1,
              "encoder_depth": int(encoder_depth)}
    if decoder_channels is not None and architecture in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = list(decoder_channels)
    try:
        model = model_class(**kwargs)
    except (KeyError, ValueError, TypeError) as error:
        raise BundleError(f"cannot build {architecture} with encoder {encoder!r}: {error}") from error
    return SegmentationNet(model, int(encoder_depth))


def _drop_unused_encoder_layers(encoder, depth, deepest=5):
    """Delete the encoder layers below ``depth`` that smp runs and then discards; returns their state-dict key
    prefixes. smp 0.5's encoders that loop over ``features`` (mobilenet_v2, vgg, inceptionv4) stop only after the
    stage below their depth: for mobilenet_v2 at depth 4, 13 convolutions and 70 % of the net's weights."""
    features, out_indexes = getattr(encoder, "features", None), getattr(encoder, "_out_indexes", None)
    if not isinstance(features, nn.Sequential) or not isinstance(out_indexes, list) or depth >= deepest:
        return ()
    last = out_indexes[len(out_indexes) - 1 - (deepest - depth)]  # the layer of the deepest feature kept
    dropped = tuple(f"model.encoder.features.{index}." for index in range(last + 1, len(features)))
    del features[last + 1:]
    return dropped


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def copy_weights(source, target):
    """Initialise ``target`` with ``source``'s weights (same architecture), e.g. a student from its teacher."""
    target.load_state_dict(source.state_dict())
    return target
