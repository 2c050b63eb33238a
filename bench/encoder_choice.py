"""Prints, for candidate encoders, parameters, bundle size and CPU time per 256x256 tile (6 bands, batch 4).

    .venv/bin/python bench/encoder_choice.py [--threads 2] [--repeats 5]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_core.nets import build_net, count_parameters  # noqa: E402
from net_speed import seconds_per_call  # noqa: E402

CANDIDATES = [  # (encoder, depth, decoder channels)
    ("resnet18", 4, (128, 64, 32, 16)),
    ("resnet18", 4, (64, 32, 16, 16)),
    ("resnet34", 4, (64, 32, 16, 16)),
    ("mobilenet_v2", 4, (64, 32, 16, 16)),
    ("efficientnet-b0", 4, (64, 32, 16, 16)),
    ("timm-regnetx_002", 4, (64, 32, 16, 16)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(4, 6, 256, 256)
    print(f"{'encoder':18} {'depth':>5} {'decoder':>16} {'params M':>9} {'MB fp32':>8} {'ms/tile':>8}")
    for encoder, depth, decoder in CANDIDATES:
        try:
            net = build_net("Unet", encoder, 6, encoder_depth=depth, decoder_channels=decoder).eval()
        except Exception as error:  # an encoder missing from this smp version is reported, not fatal
            print(f"{encoder:18} unavailable: {error}")
            continue
        seconds = seconds_per_call(net, x, args.repeats)
        params = count_parameters(net)
        print(f"{encoder:18} {depth:5d} {str(decoder):>16} {params / 1e6:9.2f} {params * 4 / 1e6:8.1f} "
              f"{1000 * seconds / 4:8.1f}")


if __name__ == "__main__":
    main()
