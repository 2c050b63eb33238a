"""infer: tiled, Hann-blended, windowed inference that streams its output."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import rasterio.errors
import shapely
import torch
from rasterio.windows import Window
from torch.fx.experimental.optimization import fuse

from model_core.errors import Cancelled, InputError
from model_core.infer import (PointwiseLinear, TileGrid, fitted_tile_size, hann_weights, inference_net, predict_raster,
                              tile_origins)
from model_core.nets import build_net, count_parameters
from model_core.rasters import PROB_UINT8_MAX, UINT8_NODATA

RADIOMETRY = SimpleNamespace(scale=1e-4, offset=0.0)
predict = partial(predict_raster, device="cpu", precision="float32", radiometry=RADIOMETRY)


class PixelNet(torch.nn.Module):
    """Logit = a fixed linear function of each pixel's bands: tiling must not change its output at all."""

    stride = 8

    def __init__(self, bands):
        super().__init__()
        self.conv = torch.nn.Conv2d(bands, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1.0, 1.0, bands).reshape(1, bands, 1, 1))
            self.conv.bias.fill_(0.2)

    def forward(self, x):
        return self.conv(x)


def pixel_bundle(bands=3, tile=64, overlap=16):
    spec = SimpleNamespace(name="pixel-test", tile_size=tile, overlap=overlap, threshold=0.5, norm_mean=[0.1] * bands,
                           norm_std=[0.05] * bands)
    return SimpleNamespace(spec=spec, net=PixelNet(bands).eval())


def expected_prob(dn, bundle):
    """The model applied to the whole image at once (no tiles)."""
    spec = bundle.spec
    x = (dn * RADIOMETRY.scale - np.reshape(spec.norm_mean, (-1, 1, 1))) / np.reshape(spec.norm_std, (-1, 1, 1))
    with torch.no_grad():
        return torch.sigmoid(bundle.net(torch.from_numpy(x.astype(np.float32))[None]))[0, 0].numpy()


def random_dn(shape, seed=0):
    return np.random.default_rng(seed).integers(500, 3500, size=shape).astype(np.uint16)


def read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile


@pytest.mark.parametrize("length,tile,overlap", [(1, 64, 16), (64, 64, 16), (65, 64, 16), (300, 64, 16),
                                                 (1000, 256, 0), (257, 256, 32)])
def test_tile_origins_cover_the_axis_with_the_overlap(length, tile, overlap):
    origins = tile_origins(length, tile, overlap)
    size = min(tile, length)
    covered = np.zeros(length, int)
    for origin in origins:
        covered[origin:origin + size] += 1
    assert covered.min() >= 1 and origins[0] == 0 and origins[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in zip(origins, origins[1:]))


@pytest.mark.parametrize("length,tile,overlap", [(2048, 512, 64), (10980, 512, 64), (600, 512, 64), (513, 512, 0),
                                                 (1000, 256, 32), (100, 256, 64)])
def test_fitted_tiles_need_no_more_tiles_and_fewer_pixels(length, tile, overlap):
    size = fitted_tile_size(length, tile, overlap, multiple=16)
    origins = tile_origins(length, size, overlap)
    assert size <= min(tile, length) and (size % 16 == 0 or size == length)
    assert len(origins) == len(tile_origins(length, tile, overlap))
    assert origins[-1] + size == length and all(b - a <= size - overlap for a, b in zip(origins, origins[1:]))
    if length == 2048:
        assert size == 464  # 5 tiles of 464 px instead of 4 of 512 px and a fifth overlapping by 448 px


def test_hann_weights_peak_in_the_middle_and_never_vanish():
    weights = hann_weights(64)
    assert weights.min() >= 1e-3 and weights.max() <= 1.0
    assert np.argmax(weights) in (31, 32) and weights[0] < 0.01
    assert np.allclose(weights, weights[::-1])


def test_blended_tiles_equal_the_untiled_prediction(make_raster, tmp_path):
    dn = random_dn((3, 150, 230))
    bundle = pixel_bundle()
    src = make_raster("in.tif", dn)
    predict(src, bundle, tmp_path / "prob.tif", batch=3, band_index=[1, 2, 3], prob_format="float32")
    prob, _ = read(tmp_path / "prob.tif")
    assert len(TileGrid.over(150, 230, 64, 16)) > 12
    np.testing.assert_allclose(prob, expected_prob(dn.astype(np.float32), bundle), atol=1e-5)


def test_auto_precision_stays_close_to_float32(make_raster, tmp_path, tiny_bundle):
    dn = random_dn((6, 64, 64))
    src = make_raster("in.tif", dn)
    probs = {}
    for precision in ("auto", "float32"):
        predict(src, tiny_bundle, tmp_path / f"{precision}.tif", precision=precision,
                band_index=list(range(1, 7)), prob_format="float32")
        probs[precision], _ = read(tmp_path / f"{precision}.tif")
    difference = np.abs(probs["auto"] - probs["float32"])
    assert difference.mean() < 0.005 and difference.max() < 0.05  # random weights: a worst case for bfloat16


def test_outputs_are_on_the_input_grid_tiled_and_compressed(make_raster, tmp_path):
    src = make_raster("in.tif", random_dn((3, 90, 70)), crs="EPSG:32719")
    predict(src, pixel_bundle(), tmp_path / "prob.tif", band_index=[1, 2, 3], mask_path=tmp_path / "mask.tif")
    with rasterio.open(src) as source:
        for name in ("prob.tif", "mask.tif"):
            with rasterio.open(tmp_path / name) as out:
                assert (out.crs, out.transform, out.shape) == (source.crs, source.transform, source.shape)
                assert out.dtypes[0] == "uint8" and out.nodata == UINT8_NODATA
                assert out.profile["tiled"] and out.block_shapes[0] == (256, 256)
                assert out.compression.value == "DEFLATE"


def test_mask_is_the_thresholded_probability(make_raster, tmp_path):
    dn = random_dn((3, 40, 50))
    bundle = pixel_bundle()
    predict(make_raster("in.tif", dn), bundle, tmp_path / "prob.tif", band_index=[1, 2, 3],
            mask_path=tmp_path / "mask.tif", threshold=0.6)
    prob, _ = read(tmp_path / "prob.tif")
    mask, _ = read(tmp_path / "mask.tif")
    expected = expected_prob(dn.astype(np.float32), bundle)
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(mask, (expected >= 0.6).astype(np.uint8))
    np.testing.assert_allclose(prob / PROB_UINT8_MAX, expected, atol=0.5 / PROB_UINT8_MAX + 1e-6)


@pytest.mark.parametrize("height,width", [(30, 20), (1, 70), (1, 1), (5, 300)])
def test_rasters_smaller_than_a_tile_and_single_rows(make_raster, tmp_path, height, width):
    dn = random_dn((3, height, width))
    bundle = pixel_bundle()
    predict(make_raster("in.tif", dn), bundle, tmp_path / "prob.tif", band_index=[1, 2, 3], prob_format="float32")
    prob, profile = read(tmp_path / "prob.tif")
    assert prob.shape == (height, width)
    np.testing.assert_allclose(prob, expected_prob(dn.astype(np.float32), bundle), atol=1e-5)


def test_band_order_follows_band_index(make_raster, tmp_path):
    dn = random_dn((4, 20, 20))
    bundle = pixel_bundle()
    predict(make_raster("in.tif", dn), bundle, tmp_path / "prob.tif", band_index=[4, 2, 1], prob_format="float32")
    prob, _ = read(tmp_path / "prob.tif")
    np.testing.assert_allclose(prob, expected_prob(dn[[3, 1, 0]].astype(np.float32), bundle), atol=1e-5)


def test_nodata_value_nan_and_alpha_become_nodata(make_raster, tmp_path):
    dn = random_dn((3, 60, 80))
    dn[1, 10:20, 10:30] = 0  # nodata in one model band is enough
    bundle = pixel_bundle()
    predict(make_raster("nodata.tif", dn, nodata=0), bundle, tmp_path / "prob.tif",
            band_index=[1, 2, 3], mask_path=tmp_path / "mask.tif")
    prob, _ = read(tmp_path / "prob.tif")
    mask, _ = read(tmp_path / "mask.tif")
    assert (prob[10:20, 10:30] == UINT8_NODATA).all() and (mask[10:20, 10:30] == UINT8_NODATA).all()
    assert np.isin(mask[30:], [0, 1]).all() and (prob[30:] < UINT8_NODATA).all()

    floats = dn.astype(np.float32)
    floats[2, 40:45, :] = np.nan
    predict(make_raster("nan.tif", floats), bundle, tmp_path / "prob_nan.tif",
            band_index=[1, 2, 3], prob_format="float32")
    prob, _ = read(tmp_path / "prob_nan.tif")
    assert np.isnan(prob[40:45]).all() and np.isfinite(prob[:40]).all()

    alpha = np.full((1, 60, 80), 255, np.uint16)
    alpha[0, :, 70:] = 0
    path = make_raster("alpha.tif", np.concatenate([random_dn((3, 60, 80)), alpha]), photometric="RGB", alpha="YES")
    predict(path, bundle, tmp_path / "prob_alpha.tif", band_index=[1, 2, 3])
    prob, _ = read(tmp_path / "prob_alpha.tif")
    assert (prob[:, 70:] == UINT8_NODATA).all() and (prob[:, :70] < UINT8_NODATA).all()


def test_undeclared_zero_fill_is_nodata(make_raster, tmp_path):
    """A Sentinel-2/Landsat product exported without its nodata value (0): pixels 0 in every model band are fill,
    a pixel 0 in one band only is data."""
    dn = random_dn((3, 60, 80))
    dn[:, :, 60:] = 0   # outside the swath
    dn[0, 5:10, 5:10] = 0
    predict(make_raster("fill.tif", dn), pixel_bundle(), tmp_path / "prob.tif", band_index=[1, 2, 3],
            mask_path=tmp_path / "mask.tif")
    prob, _ = read(tmp_path / "prob.tif")
    mask, _ = read(tmp_path / "mask.tif")
    assert (prob[:, 60:] == UINT8_NODATA).all() and (mask[:, 60:] == UINT8_NODATA).all()
    assert (prob[:, :60] < UINT8_NODATA).all() and np.isin(mask[:, :60], [0, 1]).all()
    predict(make_raster("fill_float.tif", dn.astype(np.float32) / 10000), pixel_bundle(), tmp_path / "prob_f.tif",
            band_index=[1, 2, 3], radiometry=SimpleNamespace(scale=1.0, offset=0.0))
    prob, _ = read(tmp_path / "prob_f.tif")
    assert (prob[:, 60:] == UINT8_NODATA).all() and (prob[:, :60] < UINT8_NODATA).all()  # a float export alike


def test_excluded_polygons_are_nodata_and_the_rest_unchanged(make_raster, tmp_path):
    """Grid (default): 10 m pixels from (500000, 5800000); the polygon covers rows 20-39 and columns 30-59."""
    dn = random_dn((3, 60, 80))
    bundle, path = pixel_bundle(), make_raster("in.tif", dn)
    water = shapely.box(500300.0, 5799600.0, 500600.0, 5799800.0)
    predict(path, bundle, tmp_path / "prob.tif", band_index=[1, 2, 3], prob_format="float32", exclude=[water])
    prob, _ = read(tmp_path / "prob.tif")
    outside = np.ones(prob.shape, bool)
    outside[20:40, 30:60] = False
    assert np.isnan(prob[~outside]).all()
    np.testing.assert_allclose(prob[outside], expected_prob(dn.astype(np.float32), bundle)[outside], atol=1e-5)
    with pytest.raises(InputError, match="nodata in the model's bands or excluded"):
        predict(path, bundle, tmp_path / "none.tif", band_index=[1, 2, 3],
                exclude=[shapely.box(499000.0, 5799000.0, 501000.0, 5801000.0)])


def test_all_nodata_raster_is_refused(make_raster, tmp_path):
    path = make_raster("empty.tif", np.zeros((3, 40, 40), np.uint16), nodata=0)
    with pytest.raises(InputError, match="every pixel .* is nodata"):
        predict(path, pixel_bundle(), tmp_path / "prob.tif", band_index=[1, 2, 3])


def test_window_output_is_on_the_cropped_grid(make_raster, tmp_path):
    dn = random_dn((3, 100, 120))
    bundle = pixel_bundle()
    src = make_raster("in.tif", dn)
    window = Window(30, 20, 50, 40)
    predict(src, bundle, tmp_path / "prob.tif", band_index=[1, 2, 3],
            window=window, prob_format="float32")
    prob, profile = read(tmp_path / "prob.tif")
    with rasterio.open(src) as source:
        assert profile["transform"] == source.window_transform(window)
    np.testing.assert_allclose(prob, expected_prob(dn.astype(np.float32), bundle)[20:60, 30:80], atol=1e-5)


def test_cancel_stops_the_run_and_progress_is_reported(make_raster, tmp_path):
    src = make_raster("in.tif", random_dn((3, 200, 200)))
    calls = []
    with pytest.raises(Cancelled, match="cancelled; no output was written"):
        predict(src, pixel_bundle(), tmp_path / "prob.tif", batch=1, band_index=[1, 2, 3],
                mask_path=tmp_path / "mask.tif", is_canceled=lambda: len(calls) >= 3, progress=calls.append)
    assert len(calls) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.tif"]  # rows written before the cancel: gone

    predict(src, pixel_bundle(), tmp_path / "prob2.tif", band_index=[1, 2, 3], progress=calls.append)
    assert calls[3:] == sorted(calls[3:]) and calls[-1] == pytest.approx(100.0)


def test_seams_vanish_with_a_convolutional_net(make_raster, tmp_path, tiny_bundle):
    """A real (tiny) U-Net sees tile borders, so plain tiling leaves jumps at tile edges; with blending the jump
    between neighbouring pixels across a tile edge matches the untiled prediction as well as anywhere else."""
    bundle = tiny_bundle
    bands = len(bundle.spec.norm_mean)
    yy, xx = np.mgrid[:192, :192]
    dn = (1500 + 800 * np.sin(yy / 9.0)[None] * np.cos(xx / 13.0)[None]
          + 300 * np.arange(bands)[:, None, None]).astype(np.uint16)
    src = make_raster("in.tif", dn)
    untiled = expected_prob(dn.astype(np.float32), bundle)
    seams, elsewhere = {}, {}
    for overlap in (0, 32):
        predict(src, bundle, tmp_path / f"prob{overlap}.tif", tile=64, overlap=overlap,
                band_index=list(range(1, bands + 1)), prob_format="float32")
        prob, _ = read(tmp_path / f"prob{overlap}.tif")
        jump_error = np.concatenate([np.abs(np.diff(prob, axis=a) - np.diff(untiled, axis=a)).swapaxes(0, a)
                                     for a in (0, 1)], axis=1)  # [step index, ...] for steps along rows and columns
        edge_steps = [63, 127]  # between pixels 63|64 and 127|128: tile edges with and without overlap
        seams[overlap] = jump_error[edge_steps].mean()
        elsewhere[overlap] = np.delete(jump_error, edge_steps, axis=0).mean()
    assert seams[0] > 3 * elsewhere[0]  # plain tiling: visible seams
    assert seams[32] < seams[0] / 5
    assert seams[32] < 1.5 * elsewhere[32]  # blended: tile edges no worse than anywhere else


def test_a_failing_writer_stops_the_run_with_its_error(make_raster, tmp_path):
    src = make_raster("in.tif", random_dn((3, 300, 300)))
    with pytest.raises(rasterio.errors.RasterioIOError):
        predict(src, pixel_bundle(), tmp_path / "missing_folder" / "prob.tif", batch=1, band_index=[1, 2, 3])


def test_a_failing_reader_stops_the_run_with_its_error(make_raster, tmp_path):
    src = make_raster("in.tif", random_dn((3, 300, 300)))
    with pytest.raises(IndexError):
        predict(src, pixel_bundle(), tmp_path / "prob.tif", batch=1, band_index=[1, 2, 9])


def test_cuda_out_of_memory_halves_the_batch_for_the_rest_of_the_run(make_raster, tmp_path, monkeypatch):
    """Simulated on the CPU: the net fails like CUDA does on more than two tiles per call."""
    bundle = pixel_bundle()
    calls = []

    class TwoTilesAtMost(torch.nn.Module):
        stride = 8

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            calls.append(len(x))
            if len(x) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return self.net(x)

    monkeypatch.setattr("model_core.infer.inference_net", lambda net, info: TwoTilesAtMost(net))
    dn = random_dn((3, 200, 200))
    predict(make_raster("in.tif", dn), bundle, tmp_path / "prob.tif", batch=8, band_index=[1, 2, 3],
            prob_format="float32", workers=1)  # one call at a time, as on CUDA (device.inference_workers)
    prob, _ = read(tmp_path / "prob.tif")
    np.testing.assert_allclose(prob, expected_prob(dn.astype(np.float32), bundle), atol=1e-5)
    assert calls[:3] == [8, 4, 2] and set(calls[3:]) <= {1, 2}  # halved once, then kept small


@pytest.mark.parametrize("workers", [1, 3])
def test_model_calls_run_at_once_give_the_probabilities_of_one_call_at_a_time(make_raster, tmp_path, tiny_bundle,
                                                                              workers):
    """Tiles come back from parallel calls in reading order, so blending is the same whatever the worker count.
    The threads per call change with the count, and on some CPUs (an Intel Xeon with AMX) so does the rounding of
    the convolutions, by up to 3e-6; a tile out of order would move probabilities by tenths."""
    src = make_raster("in.tif", random_dn((6, 150, 230)))
    outputs = {}
    for count in (workers, 2):
        path = tmp_path / f"prob_{count}.tif"
        predict(src, tiny_bundle, path, tile=64, overlap=16, band_index=list(range(1, 7)), prob_format="float32",
                workers=count)
        outputs[count] = read(path)[0]
    assert np.ptp(outputs[2]) > 0.01
    np.testing.assert_allclose(outputs[workers], outputs[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("device_is_cuda", [False, True])
def test_the_inference_copy_of_a_net_gives_its_logits_and_leaves_it_as_it_was(device_is_cuda):
    """BatchNorm folded, unused layers dropped, 1x1 convolutions as matrix products (CPU only): same logits."""
    torch.manual_seed(0)
    net = build_net("Unet", "mobilenet_v2", in_channels=6, encoder_depth=4).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # running statistics that folding has to get right
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    info = SimpleNamespace(device=torch.device("cpu"), is_cuda=device_is_cuda)  # placement logic only, on the CPU
    fast = inference_net(net, info)
    x = torch.randn(2, 6, 64, 96)
    with torch.inference_mode():
        expected, got = net(x), fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, PointwiseLinear) for m in fast.modules()) != device_is_cuda
    assert all(torch.equal(value, before[name]) for name, value in net.state_dict().items())
    assert not any(isinstance(m, PointwiseLinear) for m in net.modules())


def test_the_inference_copy_drops_layers_whose_output_is_never_used():
    """smp's efficientnet encoders run, then discard, the stage below their depth: the copy does not."""
    torch.manual_seed(0)
    net = build_net("Unet", "efficientnet-b0", in_channels=6, encoder_depth=4).eval()
    fast = inference_net(net, SimpleNamespace(device=torch.device("cpu"), is_cuda=False))
    x = torch.randn(1, 6, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), net(x), atol=1e-4,
                                   rtol=1e-4)
    assert count_parameters(fast) < count_parameters(fuse(net)) / 2


def test_a_raster_whose_data_cannot_be_read_is_an_input_error_and_leaves_nothing(make_raster, tmp_path):
    """A file whose header is fine but whose data is cut off (a broken download): one clear error, no outputs."""
    src = make_raster("in.tif", random_dn((3, 200, 200)))
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cannot read damaged.tif at pixel rows .*; the file is damaged or "
                                         r"incomplete .*: copy or download it again"):
        predict(damaged, pixel_bundle(), tmp_path / "prob.tif", band_index=[1, 2, 3], mask_path=tmp_path / "m.tif")
    assert not (tmp_path / "prob.tif").exists() and not (tmp_path / "m.tif").exists()
