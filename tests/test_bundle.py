"""Model bundles: round trip, header-only spec reads, and a clear refusal of every bad file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from model_core.bundle import FORMAT_VERSION, SPEC_KEY, load_bundle, read_spec, save_bundle
from model_core.errors import BundleError, OutputError
from model_core.nets import build_net


def test_round_trip_keeps_spec_and_predictions(tiny_bundle_path, tiny_bundle):
    spec = read_spec(tiny_bundle_path)
    assert spec.name == "tiny-test" and spec.in_channels == 6 and spec.format_version == FORMAT_VERSION
    assert [b.name for b in spec.band_list()] == ["B02", "B03", "B04", "B08", "B11", "B12"]
    again = load_bundle(tiny_bundle_path)
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.equal(tiny_bundle.net(x), again.net(x))
    assert tiny_bundle.sha256 == again.sha256 and len(tiny_bundle.sha256) == 64
    assert not tiny_bundle.net.training


def test_save_refuses_to_overwrite_and_leaves_no_temp(tmp_path, tiny_bundle):
    path = tmp_path / "model.safetensors"
    save_bundle(path, tiny_bundle.net, tiny_bundle.spec)
    before = path.read_bytes()
    with pytest.raises(OutputError, match="exists already"):
        save_bundle(path, tiny_bundle.net, tiny_bundle.spec)
    assert path.read_bytes() == before
    save_bundle(path, tiny_bundle.net, tiny_bundle.spec, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.safetensors")
    with pytest.raises(BundleError, match="is a folder; choose a .safetensors model bundle file in it"):
        load_bundle(tmp_path)


def test_truncated_file(tmp_path, tiny_bundle_path):
    cut = tmp_path / "cut.safetensors"
    data = tiny_bundle_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(cut)


def test_not_a_safetensors_file(tmp_path):
    text = tmp_path / "model.safetensors"
    text.write_text("hello, I am not a model\n" * 10)
    with pytest.raises(BundleError, match="not a readable model bundle"):
        load_bundle(text)
    raster = tmp_path / "scene.tif"  # a raster picked as the model (--teacher, MODEL): named as such, not "truncated"
    raster.write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(BundleError, match=r"scene.tif is not a model bundle \(a .tif file\); choose a .safetensors"):
        load_bundle(raster)


def test_foreign_safetensors_file(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(BundleError, match="not a MineC2F model bundle"):
        load_bundle(foreign)


def _rewrite_spec(src, dst, **changes):
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as reader:
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
        spec = json.loads(reader.metadata()[SPEC_KEY])
    spec.update(changes)
    save_file(tensors, str(dst), metadata={SPEC_KEY: json.dumps(spec)})
    return dst


def test_newer_format_is_refused(tmp_path, tiny_bundle_path):
    newer = _rewrite_spec(tiny_bundle_path, tmp_path / "newer.safetensors", format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match="newer than this MineC2F reads.*update"):
        load_bundle(newer)


def test_inconsistent_spec_is_refused(tmp_path, tiny_bundle_path):
    bad = _rewrite_spec(tiny_bundle_path, tmp_path / "bad.safetensors", norm_std=[0.1] * 5)
    with pytest.raises(BundleError, match="norm_std must list 6 entries"):
        read_spec(bad)


def test_weights_that_do_not_fit_the_spec(tmp_path, tiny_bundle_path):
    other = tmp_path / "other.safetensors"
    with __import__("safetensors").safe_open(str(tiny_bundle_path), framework="pt") as reader:
        metadata = reader.metadata()
    net = build_net("Unet", "resnet18", in_channels=4, encoder_depth=3, decoder_channels=[16, 8, 4])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(other), metadata=metadata)
    with pytest.raises(BundleError, match="weights do not fit the model spec"):
        load_bundle(other)


def test_bundle_with_the_encoder_layers_nets_now_drop_still_loads(tmp_path, tiny_bundle):
    """Bundles saved before the unused encoder stage was dropped carry its weights; they load, same logits."""
    import dataclasses

    import segmentation_models_pytorch as smp

    spec = dataclasses.replace(tiny_bundle.spec, encoder="mobilenet_v2", encoder_depth=4,
                               decoder_channels=[16, 8, 4, 4])
    torch.manual_seed(0)
    full = smp.Unet("mobilenet_v2", encoder_weights=None, in_channels=6, classes=1, encoder_depth=4,
                    decoder_channels=[16, 8, 4, 4]).eval()
    old = tmp_path / "old.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in full.state_dict().items()}, str(old),
              metadata={SPEC_KEY: spec.to_json()})
    bundle = load_bundle(old)
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bundle.net(x), full(x), atol=1e-6)
    again = save_bundle(tmp_path / "new.safetensors", bundle.net, spec)
    assert again.stat().st_size < old.stat().st_size / 2  # saved without them
    with torch.no_grad():
        assert torch.equal(load_bundle(again).net(x), bundle.net(x))
