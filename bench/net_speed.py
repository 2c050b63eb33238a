"""Seconds per tile of the bundled network alone on the CPU, as the naive loop runs it (as loaded) and as the
engine runs it (model_core.infer.inference_net: BatchNorm folded, unused layers dropped, 1x1 convolutions as
matrix products, channels-last), optionally torch.compile'd, and where the time goes (encoder vs decoder
stages). Explains the throughput ratio of bench/infer_throughput.py.

    python bench/net_speed.py [--model BUNDLE] [--sizes 256 464 512 736] [--repeats 5] [--threads N] [--compile]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_core import paths  # noqa: E402
from model_core.bundle import load_bundle  # noqa: E402
from model_core.device import resolve_device  # noqa: E402
from model_core.infer import inference_net  # noqa: E402


def seconds_per_call(net, inputs, repeats):
    """Mean seconds of one forward pass over ``repeats`` calls, after one warm-up call."""
    with torch.inference_mode():
        net(inputs)
        started = time.perf_counter()
        for _ in range(repeats):
            net(inputs)
    return (time.perf_counter() - started) / repeats


def stage_shares(net, inputs, repeats):
    """Share of the forward time spent in the encoder, each decoder block and the head (as loaded)."""
    unet = net.model
    stages = [("encoder", unet.encoder)] + [(f"decoder block {i}", block) for i, block in
                                            enumerate(unet.decoder.blocks)] + [("head", unet.segmentation_head)]
    spent, started = {name: 0.0 for name, _ in stages}, {}
    handles = []
    for name, module in stages:
        handles.append(module.register_forward_pre_hook(
            lambda module, args, name=name: started.__setitem__(name, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda module, args, out, name=name: spent.__setitem__(
                name, spent[name] + time.perf_counter() - started[name])))
    seconds_per_call(net, inputs, repeats)
    for handle in handles:
        handle.remove()
    total = sum(spent.values())
    return {name: value / total for name, value in spent.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(paths.DEFAULT_MODEL))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 464, 512, 736], help="tile sides (px)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (needs a C++ compiler)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; the engine's two calls "
                                                     "at once use 1 each on 2 cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    loaded = bundle.net.eval()
    engine = inference_net(bundle.net, resolve_device("cpu"))
    compiled = torch.compile(engine) if args.compile else None
    print(f"model {bundle.spec.name} ({bundle.spec.encoder}), torch threads {torch.get_num_threads()}, "
          f"mean of {args.repeats}")
    overlap = bundle.spec.overlap
    print(f"{'tile':>6}{'as loaded s':>13}{'engine s':>10}{'speed-up':>10}{'engine µs/px':>14}"
          f"{f'µs/output px (overlap {overlap})':>30}" + (f"{'compiled s':>12}" if compiled is not None else ""))
    for size in args.sizes:
        inputs = torch.randn(1, bundle.spec.in_channels, size, size)
        as_loaded = seconds_per_call(loaded, inputs, args.repeats)
        channels_last = inputs.contiguous(memory_format=torch.channels_last)
        fast = seconds_per_call(engine, channels_last, args.repeats)
        line = (f"{size:6d}{as_loaded:13.3f}{fast:10.3f}{as_loaded / fast:9.2f}x{fast / size ** 2 * 1e6:14.3f}"
                f"{fast / (size - overlap) ** 2 * 1e6:30.3f}")  # tiles in a large raster step by size - overlap
        if compiled is not None:
            line += f"{seconds_per_call(compiled, channels_last, args.repeats):12.3f}"
        print(line)
    shares = stage_shares(loaded, torch.randn(1, bundle.spec.in_channels, 464, 464), args.repeats)
    print("time by stage at 464 px (as loaded): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


if __name__ == "__main__":
    main()
