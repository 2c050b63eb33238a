"""Tiled, batched, overlap-blended inference over a raster, read and written window by window.

How a raster (or a window of it) is processed:

- The region is covered by a grid of windows of at most ``tile`` x ``tile`` pixels that overlap by at least
  ``overlap`` pixels: per axis, as many tiles as ``tile`` needs, shrunk to the smallest multiple of the net's
  stride that still covers it and spread evenly from edge to edge, so every tile lies inside the raster and no
  tile is mostly overlap. A region smaller than a tile gets one tile of its own size, padded (reflect) up to a
  multiple of the net's stride.
- Each tile's probabilities are weighted by a 2-D raised cosine (Hann) window with a small floor, so tile edges
  count little and seams vanish; pixels at the raster edge (covered by one tile) still get a non-zero weight.
  The tile grid is a product of row and column origins, so the sum of weights is the outer product of two 1-D
  sums and needs no buffer.
- Blended probabilities are accumulated in a strip one tile high and as wide as the region; each time a tile row
  is done, the rows no later tile touches are written out. Peak memory therefore grows with width x tile, never
  with the raster's height, and the GDAL block cache is what bounds the rest.
- A reader thread reads, normalises and batches tiles ahead of the model (a bounded prefetch queue); a writer
  thread encodes and writes finished rows, so disk and model overlap. On the CPU two model calls run at once on
  half the threads each (:func:`device.inference_workers`); their tiles are blended in reading order, so the
  result does not depend on the number of calls.
- Pixels that are nodata in any model band (dataset nodata, per-band or alpha masks, NaN; in a raster that
  declares none, 0 in every band) are written as nodata in the probability raster and the mask. Tiles with no
  valid pixel skip the model.
"""

import copy
import math
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
import torch
from rasterio.features import geometry_mask
from rasterio.windows import Window
from torch.fx.experimental.optimization import fuse as fold_batchnorm

from . import device as devices
from .errors import Cancelled, InputError
from .rasters import (MASK_CONTENT, PROBABILITY_CONTENT, encode_probability, mask_profile, output_tags, read_bands,
                      probability_profile, threshold_mask, valid_pixels)

WEIGHT_FLOOR = 1e-3
PREFETCH_BATCHES = 2
PRECISIONS = ("auto", "float32")


@lru_cache(maxsize=1)
def cpu_has_native_bf16():
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX flags in Linux's /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_for(info, precision):
    """Reduced precision where the hardware does it natively when ``precision`` is "auto": float16 on CUDA,
    bfloat16 on CPUs with AVX512-BF16/AMX (faster; probabilities typically move by ~1e-3); else
    float32."""
    if precision == "float32":
        return nullcontext()
    if info.is_cuda:
        return info.autocast()
    return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_has_native_bf16() else nullcontext()


class PointwiseLinear(torch.nn.Module):
    """A 1x1 convolution (stride 1, one group) as a matrix product over channels-last pixels. Same results; on
    one CPU thread PyTorch sends 1x1 convolutions to its slow im2col path instead of oneDNN, and these are half
    of the default net's convolutions (mobilenet_v2's expansions and projections)."""

    def __init__(self, conv):
        super().__init__()
        self.weight = torch.nn.Parameter(conv.weight.detach().flatten(1), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach(), requires_grad=False)

    @staticmethod
    def replaces(module):
        return (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
                and module.groups == 1 and module.dilation == (1, 1) and module.padding in (0, (0, 0))
                and module.padding_mode == "zeros")

    def forward(self, x):
        return torch.nn.functional.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


def inference_net(net, info):
    """A copy of ``net`` made for inference on ``info.device``, with the same results: when torch.fx can trace
    the net, BatchNorm folded into the preceding convolutions (about 1.4x faster on the CPU) and layers whose
    output is never used dropped (smp's efficientnet encoders run, then discard, the stage below their depth;
    build_net drops it from mobilenet_v2 already); on the CPU 1x1 convolutions as matrix products
    (:class:`PointwiseLinear`); channels-last layout (1.2-1.5x faster convolutions). bench/net_speed.py times it."""
    try:
        net = fold_batchnorm(net.eval())
        net.graph.eliminate_dead_code()
        net.delete_all_unused_submodules()
        net.recompile()
    except Exception:  # a net torch.fx cannot trace runs as it is, with the same results
        net = copy.deepcopy(net)
    if not info.is_cuda:
        for name, module in list(net.named_modules()):
            if PointwiseLinear.replaces(module):
                parent, _, leaf = name.rpartition(".")
                setattr(net.get_submodule(parent), leaf, PointwiseLinear(module))
    return net.to(info.device, memory_format=torch.channels_last).eval()


def tiling(spec, tile=None, overlap=None):
    """(tile, overlap) in px: an unset tile is the model's, an unset overlap the model's but at most a quarter of the
    tile (so that a smaller tile alone works)."""
    tile = spec.tile_size if tile is None else int(tile)
    return tile, min(spec.overlap, tile // 4) if overlap is None else int(overlap)


def tile_count(length, tile, overlap):
    """Tiles of size ``tile`` needed to cover ``length`` with at least ``overlap`` overlap."""
    return 1 if length <= tile else math.ceil((length - tile) / (tile - overlap)) + 1


def fitted_tile_size(length, tile, overlap, multiple=1):
    """The smallest tile size, a multiple of ``multiple`` and at most ``tile``, that covers ``length`` with as few
    tiles as ``tile`` needs and at least ``overlap`` overlap: tiles shrink to fit the axis instead of the last one
    overlapping its neighbour by most of its size (fewer pixels through the net)."""
    if length <= tile:
        return length
    count = tile_count(length, tile, overlap)
    size = math.ceil((length + (count - 1) * overlap) / count)
    return min(tile, math.ceil(size / multiple) * multiple)


def tile_origins(length, tile, overlap):
    """Start offsets, evenly spread, of tiles of size ``min(tile, length)`` covering ``length`` with at least
    ``overlap`` overlap."""
    if length <= tile:
        return [0]
    count = tile_count(length, tile, overlap)
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def hann_weights(size, floor=WEIGHT_FLOOR):
    """1-D raised cosine window over ``size`` pixels, peaking at the centre, never below ``floor``."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    return (floor + (1.0 - floor) * np.sin(np.pi * centres) ** 2).astype(np.float32)


def weight_coverage(length, origins, weights):
    """Sum over tiles of the 1-D weights at each position along one axis."""
    total = np.zeros(length, dtype=np.float64)
    for origin in origins:
        total[origin:origin + len(weights)] += weights
    return total.astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a region of ``height`` x ``width`` pixels, in row-major order."""
    height: int
    width: int
    tile_height: int
    tile_width: int
    row_origins: list
    col_origins: list

    @classmethod
    def over(cls, height, width, tile, overlap, multiple=1):
        """Tiles of at most ``tile`` px, fitted to each axis (see :func:`fitted_tile_size`)."""
        tile_height = fitted_tile_size(height, tile, overlap, multiple)
        tile_width = fitted_tile_size(width, tile, overlap, multiple)
        return cls(height, width, tile_height, tile_width,
                   tile_origins(height, tile_height, overlap), tile_origins(width, tile_width, overlap))

    def __len__(self):
        return len(self.row_origins) * len(self.col_origins)

    def tiles(self):
        """(row origin, column origin) of each tile, row by row."""
        for row in self.row_origins:
            for col in self.col_origins:
                yield row, col


@dataclass
class Batch:
    """Tiles ready for the model: inputs [N, C, H', W'] (normalised, padded) and per-tile placement."""
    inputs: np.ndarray
    valid: np.ndarray  # [N, tile_height, tile_width] bool
    places: list       # (row origin, column origin) per tile
    has_data: np.ndarray  # [N] bool: at least one valid pixel


class TileReader:
    """Reads the tiles of ``grid`` (offset by ``region``) from ``src_path``: selected bands, DN -> reflectance ->
    normalised, nodata (and pixels inside the ``exclude`` polygons, in the raster's CRS) found and zeroed, padded to
    a multiple of ``stride``, grouped in batches of ``batch``."""

    def __init__(self, src_path, grid, region, band_index, scale, offset, mean, std, stride, batch, exclude=()):
        self.src_path, self.grid, self.region, self.batch = src_path, grid, region, batch
        self.exclude = list(exclude)
        self.band_index = list(band_index)
        bands = len(self.band_index)
        scale = np.broadcast_to(np.asarray(scale, np.float32), (bands,))
        offset = np.broadcast_to(np.asarray(offset, np.float32), (bands,))
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.gain = (scale / std).reshape(-1, 1, 1)
        self.bias = ((offset - mean) / std).reshape(-1, 1, 1)
        self.padded = tuple(-(-size // stride) * stride for size in (grid.tile_height, grid.tile_width))

    def batches(self):
        with rasterio.open(self.src_path) as src:
            places = []
            for place in self.grid.tiles():
                places.append(place)
                if len(places) == self.batch:
                    yield self._read_batch(src, places)
                    places = []
            if places:
                yield self._read_batch(src, places)

    def _read_batch(self, src, places):
        grid = self.grid
        height, width = grid.tile_height, grid.tile_width
        inputs = np.empty((len(places), len(self.band_index)) + self.padded, dtype=np.float32)
        valid = np.empty((len(places), height, width), dtype=bool)
        for k, (row, col) in enumerate(places):
            window = Window(self.region.col_off + col, self.region.row_off + row, width, height)
            tile = read_bands(src, self.band_index, window=window, out_dtype="float32",
                              where=f" at pixel rows {window.row_off}-{window.row_off + height - 1}")
            tile_valid = valid_pixels(src, self.band_index, tile, window)
            if self.exclude:
                tile_valid &= geometry_mask(self.exclude, (height, width), src.window_transform(window))
            tile *= self.gain
            tile += self.bias
            tile[:, ~tile_valid] = 0.0
            pad = ((0, 0), (0, self.padded[0] - height), (0, self.padded[1] - width))
            inputs[k] = np.pad(tile, pad, mode="reflect") if any(p for _, p in pad) else tile
            valid[k] = tile_valid
        return Batch(inputs, valid, list(places), valid.reshape(len(places), -1).any(axis=1))


class _Worker(threading.Thread):
    """A daemon thread that, if it fails, sets ``stop`` (so no one waits on it) and keeps the exception for
    :meth:`finish` to re-raise in the caller."""

    def __init__(self, target, stop):
        super().__init__(daemon=True)
        self._target_fn, self._stop_event, self.error = target, stop, None

    def run(self):
        try:
            self._target_fn()
        except BaseException as exc:  # handed to the main thread
            self.error = exc
            self._stop_event.set()

    def finish(self):
        self.join()
        if self.error is not None:
            raise self.error


class _Pipe:
    """Bounded queue between threads that gives up when ``stop`` is set instead of blocking forever."""

    _END = object()

    def __init__(self, maxsize, stop):
        self.queue, self.stop = queue.Queue(maxsize), stop

    def put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self):
        self.put(self._END)

    def __iter__(self):
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is self._END:
                return
            yield item


class RowWriter:
    """Writes finished rows of blended probabilities (and optionally the thresholded mask) in a thread."""

    def __init__(self, prob_path, mask_path, threshold, prob_format, grid_profile, tags, stop):
        self.prob_path, self.mask_path, self.threshold, self.prob_format = prob_path, mask_path, threshold, prob_format
        self.grid_profile, self.tags = grid_profile, tags
        self.pipe = _Pipe(PREFETCH_BATCHES, stop)
        self.thread = _Worker(self._write_all, stop)

    def _write_all(self):
        prob_profile = probability_profile(self.prob_format, **self.grid_profile)
        with rasterio.open(self.prob_path, "w", **prob_profile) as prob_dst:
            prob_dst.update_tags(**output_tags(PROBABILITY_CONTENT, **self.tags))
            mask_dst = (rasterio.open(self.mask_path, "w", **mask_profile(**self.grid_profile))
                        if self.mask_path else None)
            try:
                if mask_dst is not None:
                    mask_dst.update_tags(**output_tags(MASK_CONTENT, **self.tags))
                for row, prob, valid in self.pipe:
                    window = Window(0, row, prob.shape[1], prob.shape[0])
                    prob_dst.write(encode_probability(prob, valid, self.prob_format), 1, window=window)
                    if mask_dst is not None:
                        mask_dst.write(threshold_mask(prob, valid, self.threshold), 1, window=window)
            finally:
                if mask_dst is not None:
                    mask_dst.close()


class StripAccumulator:
    """Weighted probabilities of the tile row being blended, as wide as the region, one tile high."""

    def __init__(self, grid):
        self.grid = grid
        weights_y, weights_x = hann_weights(grid.tile_height), hann_weights(grid.tile_width)
        self.tile_weights = np.outer(weights_y, weights_x)
        self.coverage_y = weight_coverage(grid.height, grid.row_origins, weights_y)
        self.coverage_x = weight_coverage(grid.width, grid.col_origins, weights_x)
        self.sums = np.zeros((grid.tile_height, grid.width), dtype=np.float32)
        self.valid = np.zeros((grid.tile_height, grid.width), dtype=bool)
        self.top = 0  # raster row of the strip's first row
        self.valid_pixels = 0

    def add(self, row, col, prob, valid):
        rows = slice(row - self.top, row - self.top + self.grid.tile_height)
        cols = slice(col, col + self.grid.tile_width)
        self.sums[rows, cols] += prob * self.tile_weights
        self.valid[rows, cols] = valid

    def advance(self, new_top):
        """Release rows [top, new_top) as (first row, probabilities, valid) and move the strip down to new_top."""
        done = new_top - self.top
        coverage = self.coverage_y[self.top:new_top, None] * self.coverage_x[None, :]
        finished = (self.top, self.sums[:done] / coverage, self.valid[:done].copy())
        self.valid_pixels += int(finished[2].sum())
        keep = len(self.sums) - done
        self.sums[:keep] = self.sums[done:]
        self.valid[:keep] = self.valid[done:]
        self.sums[keep:] = 0.0
        self.valid[keep:] = False
        self.top = new_top
        return finished


def predict_raster(src_path, bundle, prob_path, *, device="auto", tile=None, overlap=None, batch=None, band_index,
                   radiometry, window=None, mask_path=None, threshold=None, prob_format="uint8", precision="auto",
                   workers=None, exclude=(), tags=None, progress=None, is_canceled=None):
    """Run ``bundle``'s net over ``src_path`` (or its ``window``) and write the probability raster ``prob_path``.

    ``band_index``: 1-based raster band per model band. ``radiometry``: reflectance = DN * scale + offset (scalars
    or per model band); the bundle's per-band mean/std then normalise. ``batch``: tiles per model call (default:
    the device's, see :attr:`DeviceInfo.inference_batch`). With ``mask_path`` the thresholded mask
    (``threshold``, default the bundle's) is written in the same pass. Outputs share the region's grid.
    ``precision``: "auto" (see :func:`autocast_for`) or "float32". ``workers``: model calls run at once, sharing
    the CPU threads (default: :func:`device.inference_workers`). ``exclude``: shapely polygons in the raster's CRS
    whose pixels are nodata in the outputs (and skip the model). ``tags``: more :data:`rasters.TAGS` values for
    the outputs (the model and the threshold are always tagged).
    Raises InputError when no pixel of the region has data or the raster cannot be read, Cancelled when
    ``is_canceled()`` turns True; a run that fails or is cancelled removes its output files.
    """
    spec = bundle.spec
    tile, overlap = tiling(spec, tile, overlap)
    threshold = float(spec.threshold if threshold is None else threshold)
    progress = progress or (lambda percent: None)
    is_canceled = is_canceled or (lambda: False)
    info = device if isinstance(device, devices.DeviceInfo) else devices.resolve_device(device)
    batch = int(batch or info.inference_batch)

    with rasterio.open(src_path) as src:
        region = window or Window(0, 0, src.width, src.height)
        grid_profile = {"width": int(region.width), "height": int(region.height), "crs": src.crs,
                        "transform": src.window_transform(region)}
    grid = TileGrid.over(int(region.height), int(region.width), tile, overlap, bundle.net.stride)
    reader = TileReader(src_path, grid, region, band_index, radiometry.scale, radiometry.offset,
                        spec.norm_mean, spec.norm_std, bundle.net.stride, batch, exclude)
    try:
        _run_tiles(reader, bundle, info, grid, grid_profile, prob_path, mask_path, threshold, prob_format, precision,
                   workers, exclude, {"model": spec.name, "threshold": threshold, **(tags or {})}, progress,
                   is_canceled)
    except BaseException:  # a failed or cancelled run leaves no output that looks complete
        for path in (prob_path, mask_path):
            if path is not None:
                Path(path).unlink(missing_ok=True)
        raise


def _run_tiles(reader, bundle, info, grid, grid_profile, prob_path, mask_path, threshold, prob_format, precision,
               workers, exclude, tags, progress, is_canceled):
    """predict_raster's work: tiles read, predicted (``workers`` calls at once), blended and written."""
    batch = reader.batch
    stop = threading.Event()
    batches = _Pipe(PREFETCH_BATCHES, stop)
    reader_thread = _Worker(lambda: _feed(reader, batches), stop)
    writer = RowWriter(prob_path, mask_path, threshold, prob_format, grid_profile, tags, stop)
    strip = StripAccumulator(grid)
    workers = int(workers or devices.inference_workers(info))
    calls = ThreadPoolExecutor(workers, initializer=devices.set_cpu_threads,
                               initargs=(max(1, devices.cpu_threads() // workers),))
    reader_thread.start()
    writer.thread.start()
    try:
        net = inference_net(bundle.net, info)  # while the reader reads the first tiles
        running, tiles_done = deque(), 0

        def blend_oldest():
            nonlocal batch, tiles_done
            item, call = running.popleft()
            probs, batch = call.result()
            for (row, col), prob, valid in zip(item.places, probs, item.valid):
                if row > strip.top:
                    writer.pipe.put(strip.advance(row))
                strip.add(row, col, prob, valid)
            tiles_done += len(item.places)
            progress(100.0 * tiles_done / len(grid))

        for item in batches:
            if is_canceled():
                raise Cancelled("segmentation was cancelled; no output was written")
            call = calls.submit(_predict_batch, net, info, autocast_for(info, precision), item, batch)
            running.append((item, call))
            if len(running) == workers:
                blend_oldest()
        while running:
            blend_oldest()
        reader_thread.finish()
        if not stop.is_set():  # else the writer failed: finish() below raises its error
            writer.pipe.put(strip.advance(grid.height))
            writer.pipe.close()
        writer.thread.finish()
    finally:
        stop.set()
        calls.shutdown(cancel_futures=True)
        reader_thread.join()
        writer.thread.join()
    if strip.valid_pixels == 0:
        raise InputError("every pixel of the raster (or of the requested extent) is nodata in the model's bands"
                         f"{' or excluded' if exclude else ''}; choose a raster or extent with data, or fix the "
                         "raster's nodata value")


def _feed(reader, pipe):
    for item in reader.batches():
        if not pipe.put(item):
            return
    pipe.close()


def _predict_batch(net, info, autocast, item, batch):
    """(probabilities [N, tile_height, tile_width], zeros for tiles without data; the number of tiles per model
    call that fitted in memory, ``batch`` unless a CUDA out-of-memory error halved it - kept for later batches)."""
    grid_height, grid_width = item.valid.shape[1:]
    probs = np.zeros(item.valid.shape, dtype=np.float32)
    todo = np.flatnonzero(item.has_data)
    if todo.size == 0:
        return probs, batch
    inputs = torch.from_numpy(item.inputs if todo.size == len(probs) else item.inputs[todo])
    inputs = inputs.contiguous(memory_format=torch.channels_last)

    def run(sub_batch):
        outputs = []
        with torch.inference_mode(), autocast:
            for start in range(0, len(inputs), sub_batch):
                logits = net(info.to_device(inputs[start:start + sub_batch]))
                outputs.append(torch.sigmoid(logits.float())[:, 0, :grid_height, :grid_width].cpu().numpy())
        return np.concatenate(outputs), sub_batch

    probs[todo], batch = devices.run_with_oom_backoff(run, batch)
    return probs, batch
