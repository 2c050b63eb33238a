"""Teacher training and student fine-tuning on small synthetic domains: learning, provenance, cancel/resume and
bad input. Tiny chips and few steps keep it to seconds; bench/coarse_to_fine.py measures accuracy properly."""

import csv
import errno
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from safetensors import safe_open

from raster_files import write_raster
from model_core import defaults
from model_core import train as training
from model_core.bands import DEFAULT_MODEL_BANDS, Band, RasterBandInfo, match_bands, resolve_radiometry
from model_core.bundle import load_bundle, save_bundle
from model_core.data import ChipDataset, build_chip_index, label_raster
from model_core.device import resolve_device
from model_core.distill import TeacherReliability
from model_core.errors import BandMismatchError, Cancelled, InputError, OutputError
from model_core.infer import predict_raster
from model_core.metrics import evaluate_mask_raster
from model_core.nets import build_net
from model_core.polygons import read_polygons
from model_core.synthetic import DomainShift, write_scene_set
from model_core.train import TrainConfig, finetune_student, train_teacher
from model_core.vectorize import write_polygons_gpkg

CHIPS = dict(chip_size=64, batch=8, patience=100)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    coarse = write_scene_set(root / "coarse", 3, 1, 160, lambda rng: DomainShift(landscape="mixed", haze=0.02),
                             "coarse")
    fine = write_scene_set(root / "fine", 2, 2, 160, lambda rng: DomainShift(landscape="temperate"), "fine")
    test = write_scene_set(root / "test", 1, 3, 160, lambda rng: DomainShift(landscape="temperate"), "fine")
    return {"coarse": coarse[:2], "fine": fine[:2], "test": test[2], "root": root}


@pytest.fixture(scope="module")
def teacher(domains):
    images, polygons = domains["coarse"]
    return train_teacher(images, polygons, domains["root"] / "teacher.safetensors",
                         config=TrainConfig(method="coarse_only", epochs=10, steps_per_epoch=12, lr=3e-3, **CHIPS))


def test_teacher_loss_goes_down_and_leaves_bundle_log_and_curves(teacher):
    losses = [row["loss"] for row in teacher.history]
    assert losses[-1] < 0.8 * losses[0]
    bundle = load_bundle(teacher.bundle_path)
    assert bundle.spec.role == "teacher" and bundle.spec.method == "coarse_only"
    assert bundle.spec.metrics["best_epoch"] == teacher.best_epoch
    hyper = bundle.spec.hyperparameters  # what it trained with, not the settings of students it ignored
    assert hyper["lr"] == 3e-3 and not {"lambda_feat", "rehearsal_scenes", "freeze_encoder"} & set(hyper)
    assert teacher.log_path.read_text().count("\n") == len(teacher.history) + 1
    assert teacher.curves_path.read_bytes()[:4] == b"\x89PNG"
    assert not training.resume_path(teacher.bundle_path).exists()  # a finished run leaves no checkpoint


def scene_iou(bundle_path, scenes, tmp_path):
    bundle = load_bundle(bundle_path)
    scores = []
    for scene in scenes:
        with rasterio.open(scene["image"]) as src:
            index = match_bands(RasterBandInfo.from_dataset(src), bundle.spec.band_list())
            radiometry, _ = resolve_radiometry(src)
        predict_raster(scene["image"], bundle, tmp_path / "p.tif", device="cpu", band_index=index,
                       radiometry=radiometry, mask_path=tmp_path / "m.tif")
        scores.append(evaluate_mask_raster(tmp_path / "m.tif", scene["fine_mask"])["iou"])
    return float(np.mean(scores))


def test_student_names_its_teacher_and_beats_a_random_init(domains, teacher, tmp_path):
    images, polygons = domains["fine"]
    messages = []
    student = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "student.safetensors",
                               config=TrainConfig(method="minec2f", epochs=6, steps_per_epoch=10, lr=2e-3,
                                                  lambda_feat=0.5, **CHIPS), log=messages.append)
    assert any(m.startswith("rehearsal: distilling also on") for m in messages)
    start_iou = float(next(m for m in messages if m.startswith("starting model")).split()[4])
    notes = [m for m in messages if m.startswith("note: the teacher agrees little")]
    assert bool(notes) == (start_iou < defaults.WEAK_TEACHER_IOU), (start_iou, messages)
    assert all("compare with method finetune" in note for note in notes)  # the teacher is coarse_only
    spec = load_bundle(student.bundle_path).spec
    parent = load_bundle(teacher.bundle_path)
    assert spec.role == "student" and spec.method == "minec2f" and spec.parent_hash == parent.sha256
    assert spec.hyperparameters["lambda_feat"] == 0.5 and spec.hyperparameters["teacher"] == parent.spec.name
    assert spec.hyperparameters["rehearsal_scenes"] == TrainConfig.rehearsal_scenes
    assert spec.norm_mean == parent.spec.norm_mean  # the teacher's normalisation carries over

    random_net = build_net(spec.architecture, spec.encoder, spec.in_channels, spec.encoder_depth,
                           spec.decoder_channels)
    random_path = save_bundle(tmp_path / "random.safetensors", random_net, spec)
    student_iou = scene_iou(student.bundle_path, domains["test"], tmp_path)
    random_iou = scene_iou(random_path, domains["test"], tmp_path)
    assert student_iou > random_iou + 0.1, (student_iou, random_iou)


@pytest.mark.parametrize("bound, chosen", [(0.0, "minec2f"), (1.01, "finetune")])
def test_auto_distils_only_from_a_teacher_that_fits_the_fine_labels(domains, teacher, tmp_path, monkeypatch, bound,
                                                                     chosen):
    """Method auto from a teacher trained on coarse outlines alone: minec2f when its validation IoU reaches
    WEAK_TEACHER_IOU, else finetune; logged, recorded, and trained exactly as a run that names that method."""
    monkeypatch.setattr(defaults, "WEAK_TEACHER_IOU", bound)
    images, polygons = domains["fine"]
    config = TrainConfig(method="auto", epochs=1, steps_per_epoch=2, rehearsal_scenes=0, **CHIPS)
    messages = []
    auto = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "auto.safetensors", config=config,
                            log=messages.append)
    named = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "named.safetensors",
                             config=replace(config, method=chosen))
    spec = load_bundle(auto.bundle_path).spec
    assert spec.method == spec.hyperparameters["method"] == chosen
    start_iou = float(next(m for m in messages if m.startswith("starting model")).split()[4])
    assert spec.hyperparameters["method_choice"] == (f"auto: teacher validation IoU {start_iou:.3f}, bound {bound} for "
                                                     "teachers trained on coarse outlines alone; this teacher: "
                                                     "teacher, method coarse_only")
    assert [m.split()[3].rstrip(":") for m in messages if m.startswith("method auto -> ")] == [chosen]
    with safe_open(auto.bundle_path, "pt") as a, safe_open(named.bundle_path, "pt") as b:
        assert a.keys() == b.keys() and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_auto_distils_from_a_student_however_low_it_starts(domains, teacher, tmp_path, monkeypatch):
    """The bound is for teachers trained on coarse outlines alone: from a student (such as the bundled model on
    unfamiliar imagery) auto distils even below it."""
    images, polygons = domains["fine"]
    config = TrainConfig(method="finetune", epochs=1, steps_per_epoch=2, rehearsal_scenes=0, **CHIPS)
    student = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "student.safetensors", config=config)
    monkeypatch.setattr(defaults, "WEAK_TEACHER_IOU", 1.01)  # every teacher starts below it
    messages = []
    again = finetune_student(student.bundle_path, images, polygons, tmp_path / "again.safetensors",
                             config=replace(config, method="auto"), log=messages.append)
    assert load_bundle(again.bundle_path).spec.method == "minec2f"
    chosen = [m for m in messages if m.startswith("method auto -> ")]
    assert len(chosen) == 1
    assert chosen[0].startswith("method auto -> minec2f: the teacher (a student trained with method finetune)")
    assert "below 1.01, but it is not a teacher trained on coarse outlines alone" in chosen[0]
    notes = [m for m in messages if m.startswith("note: the teacher agrees little")]
    assert len(notes) == 1 and "method finetune" not in notes[0]  # the coarse teachers' finding is not cited
    assert load_bundle(again.bundle_path).spec.hyperparameters["teacher_method"] == "finetune"


@pytest.mark.parametrize("method", ["fine_only", "finetune", "joint", "kd"])
def test_every_baseline_runs_in_the_same_code_path(domains, teacher, tmp_path, method):
    images, polygons = domains["fine"]
    result = finetune_student(teacher.bundle_path, images, polygons, tmp_path / f"{method}.safetensors",
                              coarse=domains["coarse"],
                              config=TrainConfig(method=method, epochs=1, steps_per_epoch=2, **CHIPS))
    assert load_bundle(result.bundle_path).spec.method == method
    if method == "joint":
        assert "joint_coarse" in load_bundle(result.bundle_path).spec.training


def test_cancel_mid_epoch_keeps_the_last_good_bundle_and_resumes(domains, tmp_path):
    images, polygons = domains["coarse"]
    out = tmp_path / "t.safetensors"
    config = TrainConfig(method="coarse_only", epochs=3, steps_per_epoch=4, **CHIPS)
    calls = []

    def cancel_in_epoch_two():
        calls.append(1)
        return len(calls) > 6  # epoch 1 takes 4 steps

    with pytest.raises(Cancelled, match="--resume"):
        train_teacher(images, polygons, out, config=config, is_canceled=cancel_in_epoch_two)
    assert load_bundle(out).spec.metrics["best_epoch"] == 1      # usable
    assert "of a training run that did not finish; finish it with --resume" in load_bundle(out).spec.unfinished_note()
    assert training.resume_path(out).exists()
    assert out.with_suffix(".log.csv").exists() and out.with_suffix(".curves.png").exists()  # epoch 1's curves
    with pytest.raises(OutputError, match=r"exists already; .*--overwrite \(or --resume: t.resume.safetensors"):
        train_teacher(images, polygons, out, config=config)
    # another run's settings or data must not continue this checkpoint (the bundle would describe neither)
    with pytest.raises(InputError, match="t.resume.safetensors was made with lr 0.001, this run has 0.01; resume "
                                         "with the interrupted run's command"):
        train_teacher(images, polygons, out, config=replace(config, lr=0.01), resume=True)
    with pytest.raises(InputError, match="t.resume.safetensors was made with .*; resume with the interrupted"):
        train_teacher(images[:1], polygons, out, config=config, resume=True)
    lines = []
    result = train_teacher(images, polygons, out, config=config, resume=True, log=lines.append)
    assert any("resumed" in line and "epoch 1" in line for line in lines)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert load_bundle(out).spec.unfinished_note() is None
    finished = out.read_bytes()
    with pytest.raises(OutputError, match="t.safetensors is a finished model .*; pass --overwrite to train it again"):
        train_teacher(images, polygons, out, config=config, resume=True)
    assert out.read_bytes() == finished


def test_resumed_student_trusts_the_teacher_as_much_as_before_the_cancel(domains, teacher, tmp_path, monkeypatch):
    images, polygons = domains["fine"]
    out = tmp_path / "s.safetensors"
    config = TrainConfig(method="minec2f", epochs=2, steps_per_epoch=3, **CHIPS)
    with pytest.raises(Cancelled, match="in epoch 2"):  # once epoch 1's checkpoint is there
        finetune_student(teacher.bundle_path, images, polygons, out, config=config,
                         is_canceled=training.resume_path(out).exists)
    with safe_open(str(training.resume_path(out)), framework="pt") as reader:
        saved = json.loads(reader.metadata()["loop"])["loss"]["reliability"]
    assert sum(map(sum, saved["calls"])) > 3 * 8 * 64 * 64 * 0.5  # epoch 1's labelled pixels were counted
    restored = []
    original = TeacherReliability.load_state_dict
    monkeypatch.setattr(TeacherReliability, "load_state_dict",
                        lambda self, state: restored.append(state) or original(self, state))
    resumed = finetune_student(teacher.bundle_path, images, polygons, out, config=config, resume=True)
    assert restored == [saved]
    # and epoch 2 trains as in an uninterrupted run: the same distillation imagery, so the same loss and scores
    whole = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "whole.safetensors", config=config)
    assert [(row["loss"], row["val_iou"]) for row in resumed.history] == \
        [(row["loss"], row["val_iou"]) for row in whole.history]


def test_resume_checkpoint_of_a_net_with_other_layers_is_refused_clearly(tmp_path):
    """A checkpoint written before the encoder's unused stage was dropped cannot resume (AdamW's moments are
    per parameter): a clear error, not a mismatch deep in torch."""
    import segmentation_models_pytorch as smp

    older = torch.nn.Module()
    older.model = smp.Unet("mobilenet_v2", encoder_weights=None, in_channels=6, classes=1, encoder_depth=4,
                           decoder_channels=[16, 8, 4, 4])
    optimizer = torch.optim.AdamW(older.parameters())
    older.model(torch.randn(2, 6, 32, 32)).mean().backward()
    optimizer.step()
    path = tmp_path / "s.resume.safetensors"
    training.save_resume(path, older, optimizer, {"epoch": 1})
    net = build_net("Unet", "mobilenet_v2", 6, 4, [16, 8, 4, 4])
    with pytest.raises(InputError, match="older MineC2F.*without resuming"):
        training.load_resume(path, net, torch.optim.AdamW(net.parameters()))


def test_cancel_before_the_first_epoch_leaves_no_bundle(domains, tmp_path):
    images, polygons = domains["coarse"]
    out = tmp_path / "t.safetensors"
    with pytest.raises(Cancelled):
        train_teacher(images, polygons, out, config=TrainConfig(epochs=2, **CHIPS), is_canceled=lambda: True)
    assert not out.exists()


def test_cancel_while_generating_rehearsal_scenes_stops_before_training(domains, teacher, tmp_path):
    images, polygons = domains["fine"]
    out = tmp_path / "s.safetensors"
    calls = []

    def cancel_after_one_scene():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled, match=r"before its first epoch \(scene generation cancelled after 1 of 4 scenes"):
        finetune_student(teacher.bundle_path, images, polygons, out, is_canceled=cancel_after_one_scene,
                         config=TrainConfig(method="minec2f", epochs=2, rehearsal_scenes=4, **CHIPS))
    assert not out.exists() and not training.resume_path(out).exists()


def test_existing_output_is_refused_and_kept(domains, teacher, tmp_path):
    images, polygons = domains["fine"]
    out = tmp_path / "keep.safetensors"
    out.write_bytes(b"analyst's earlier model")
    with pytest.raises(OutputError, match="exists already.*--overwrite"):
        finetune_student(teacher.bundle_path, images, polygons, out, config=TrainConfig(**CHIPS))
    assert out.read_bytes() == b"analyst's earlier model"
    with pytest.raises(OutputError, match="does not exist"):
        train_teacher(images, polygons, tmp_path / "no" / "dir" / "t.safetensors", config=TrainConfig(**CHIPS))
    folder = tmp_path / "models.safetensors"
    folder.mkdir()
    with pytest.raises(OutputError, match="models.safetensors is a folder; give the model a file name"):
        finetune_student(teacher.bundle_path, images, polygons, folder, overwrite=True, config=TrainConfig(**CHIPS))
    with pytest.raises(OutputError, match="keep.safetensors is a file, not a folder; choose another --out"):
        train_teacher(images, polygons, out / "t.safetensors", config=TrainConfig(**CHIPS))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.safetensors", "models.safetensors"]
    assert list(folder.iterdir()) == []


def test_output_that_is_an_input_is_refused_even_with_overwrite(domains, teacher, tmp_path):
    """--overwrite replaces an earlier model, never the imagery, the polygons or the teacher being read."""
    images, polygons = domains["fine"]
    before = {path: path.read_bytes() for path in (images[0], Path(polygons), Path(teacher.bundle_path))}
    with pytest.raises(OutputError, match=r"--out .*\.tif: a model bundle is a .safetensors file; give a name such "):
        train_teacher(images, polygons, images[0], overwrite=True, config=TrainConfig(**CHIPS))
    with pytest.raises(OutputError, match="would overwrite the input .*teacher.safetensors; choose another --out"):
        finetune_student(teacher.bundle_path, images, polygons, teacher.bundle_path, overwrite=True,
                         config=TrainConfig(**CHIPS))
    sidecar = tmp_path / "notes.log.csv"  # polygons named like the log written beside --out notes.safetensors
    sidecar.write_bytes(Path(polygons).read_bytes())
    with pytest.raises(OutputError, match="would overwrite the input .*notes.log.csv"):
        train_teacher(images, sidecar, tmp_path / "notes.safetensors", overwrite=True, config=TrainConfig(**CHIPS))
    assert {path: path.read_bytes() for path in before} == before



def test_output_folder_without_write_permission_is_refused_before_training(domains, tmp_path, monkeypatch):
    images, polygons = domains["coarse"]
    monkeypatch.setattr("model_core.errors.os.access", lambda path, mode: False)  # root may write anywhere
    with pytest.raises(OutputError, match="folder .* is not writable; choose another --out"):
        train_teacher(images, polygons, tmp_path / "t.safetensors", config=TrainConfig(**CHIPS))
    assert list(tmp_path.iterdir()) == []


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(domains, tmp_path):
    images, polygons = domains["coarse"]
    lines = []
    result = train_teacher(images, polygons, tmp_path / "t.safetensors", resume=True, log=lines.append,
                           config=TrainConfig(epochs=1, steps_per_epoch=1, **CHIPS))
    assert "nothing to resume: no checkpoint t.resume.safetensors next to t.safetensors; training from the start" \
        in lines
    assert result.best_epoch == 1 and len(result.history) == 1


def test_disk_full_is_an_output_error_and_leaves_no_partial_file(domains, tmp_path, monkeypatch):
    images, polygons = domains["coarse"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("model_core.bundle.save_file", no_space)
    with pytest.raises(OutputError, match="No space left on device; free disk space"):
        train_teacher(images, polygons, tmp_path / "t.safetensors",
                      config=TrainConfig(epochs=1, steps_per_epoch=1, **CHIPS))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_the_checkpoint_names_the_cause(domains, tmp_path, monkeypatch):
    images, polygons = domains["coarse"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("model_core.train.save_resume", no_space)
    with pytest.raises(OutputError, match="cannot write the training log or checkpoint next to .*t.safetensors: No "
                                          "space left on device; free disk space"):
        train_teacher(images, polygons, tmp_path / "t.safetensors",
                      config=TrainConfig(epochs=1, steps_per_epoch=1, **CHIPS))


def test_teacher_bands_missing_from_the_raster(domains, teacher, make_raster, tmp_path):
    _, polygons = domains["fine"]
    with rasterio.open(domains["test"][0]["image"]) as src:
        profile, rgb = src.profile, src.read([2, 3, 4])
    three = tmp_path / "rgb.tif"
    profile.update(count=3)
    with rasterio.open(three, "w", **profile) as dst:
        dst.write(rgb)
    with pytest.raises(BandMismatchError,
                       match=r"teacher teacher.safetensors cannot train on raster rgb.tif: the raster lacks.*B08"):
        finetune_student(teacher.bundle_path, [three], polygons, tmp_path / "s.safetensors",
                         config=TrainConfig(**CHIPS))


def test_fewer_chips_than_one_batch(domains, teacher, tmp_path):
    images, polygons = domains["fine"]
    with pytest.raises(InputError, match="fewer than one batch of 64; lower --batch"):
        finetune_student(teacher.bundle_path, images[:1], polygons, tmp_path / "s.safetensors",
                         config=TrainConfig(chip_size=64, batch=64))


def test_polygons_that_miss_the_raster(domains, tmp_path):
    coarse_images, _ = domains["coarse"]
    far = tmp_path / "far.gpkg"
    write_polygons_gpkg(far, [shapely.box(0, 0, 100, 100)],
                              rasterio.crs.CRS.from_epsg(32633).to_wkt(), {"id": [1]})
    with pytest.raises(InputError, match="none of the 1 polygons overlap the raster"):
        train_teacher(coarse_images[:1], far, tmp_path / "t.safetensors", config=TrainConfig(**CHIPS))


def test_resume_compares_only_what_both_runs_record():
    """A checkpoint from before a MineC2F update lacks entries it added and keeps ones it dropped."""
    checkpoint = Path("s.resume.safetensors")
    run = {"data": {"rasters": ["a.tif"], "raster_bands": [[1, 2]]}, "hyperparameters": {"lr": 1e-3}, "teacher": "x"}
    older = {"data": {"rasters": ["a.tif"]}, "hyperparameters": {"lr": 1e-3, "lambda_feat": 0.1}, "teacher": "x"}
    training._check_same_run(checkpoint, older, run)
    with pytest.raises(InputError, match="made with lr 0.01, this run has 0.001"):
        training._check_same_run(checkpoint, {**older, "hyperparameters": {"lr": 1e-2}}, run)
    with pytest.raises(InputError, match="s.resume.safetensors was made from another teacher"):
        training._check_same_run(checkpoint, {**older, "teacher": "y"}, run)


def test_out_of_memory_in_training_says_what_to_lower(domains, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training, "_fit", out_of_memory)
    with pytest.raises(InputError, match=r"out of memory \(CUDA out of memory. Tried to allocate 2.00 GiB\); lower "
                                         r"--batch \(8\) or --chip-size \(64\), or train on the CPU"):
        train_teacher(*domains["coarse"], tmp_path / "t.safetensors", config=TrainConfig(**CHIPS))


def test_cli_train_and_finetune(domains, teacher, tmp_path, capsys):
    from model_core.cli import main

    images, polygons = domains["fine"]
    args = ["finetune", "--teacher", str(teacher.bundle_path), "--polygons", str(polygons), "--epochs", "1",
            "--chip-size", "64", "--scale", "0.0001", "--out", str(tmp_path / "cli.safetensors")]
    for image in images:
        args += ["--raster", str(image)]
    assert main(args) == 0
    spec = load_bundle(tmp_path / "cli.safetensors").spec
    assert spec.role == "student"
    assert spec.training["radiometry"] == ["given"] * len(images)  # --scale for every raster, offset still detected
    with rasterio.open(images[0]) as src:  # which raster band fed each model band, per raster
        assert spec.training["raster_bands"] == [list(match_bands(RasterBandInfo.from_dataset(src),
                                                                  spec.band_list()))] * len(images)
    assert spec.hyperparameters["gain_jitter"] == defaults.STUDENT["gain_jitter"]
    out, err = capsys.readouterr()
    assert "model:" in out
    assert f"validation IoU {spec.metrics['val_iou']:.3f} at threshold {spec.threshold}" in out  # the bundle's own
    # a student's epoch on a few chips is still long enough to learn from
    steps = defaults.STUDENT["min_steps_per_epoch"]
    with open(tmp_path / "cli.log.csv") as stream:
        assert [row["steps"] for row in csv.DictReader(stream)] == [str(steps)]
    assert f"1 epoch of {steps} steps" in err
    assert main(args) == 1  # exists: refused, one line
    assert capsys.readouterr().err.startswith("error: ")


def test_loader_workers_feed_a_gpu_and_spare_the_cpu():
    from model_core.device import DeviceInfo

    gpu = DeviceInfo(torch.device("cuda"), "NVIDIA Test GPU", True)
    cpu = DeviceInfo(torch.device("cpu"), "CPU", False)
    assert training.loader_workers(TrainConfig(), gpu) >= 1
    assert training.loader_workers(TrainConfig(), cpu) == 0
    assert training.loader_workers(TrainConfig(workers=3), cpu) == 3


def test_minec2f_loss_learns_the_teachers_reliability_from_labelled_pixels_only():
    """The labelled chips feed the reliability counts; the unlabelled imagery batch does not."""
    torch.manual_seed(0)
    teacher = build_net(in_channels=6).eval()
    loss = training.LossForMethod(TrainConfig(method="minec2f"), teacher)
    image, imagery = torch.randn(2, 6, 32, 32), torch.randn(3, 6, 32, 32)
    mask, valid = torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    valid[:, :, :8] = 0
    value, parts = loss(build_net(in_channels=6), image, mask, valid, imagery)
    assert torch.isfinite(value) and set(parts) == {"seg", "feat", "pred"}
    with torch.no_grad():
        mine_calls = ((teacher(image) > 0) & (valid > 0)).sum().item()
    bins = loss.reliability.calls.shape[1]       # one pseudo-count per call and distance bin
    assert loss.reliability.calls.sum(1).tolist() == [bins + valid.sum().item() - mine_calls, bins + mine_calls]
    assert loss.reliability.agreed.sum(1).tolist() == [bins + valid.sum().item() - mine_calls, bins]  # all background
    assert training.LossForMethod(TrainConfig(method="kd"), teacher).reliability is None


class SwirRampNet(torch.nn.Module):
    """Probability rising with SWIR1 reflectance (band 4, normalised with mean 0, std 1): in the scene below
    (DN 9000, 7000, 1000 read with the L2A offset) 0.92 on the footprint, 0.83 on a bright field that is not one,
    0.31 on vegetation."""

    def forward(self, x):
        return 4.0 * (x[:, 4:5] - 0.2)


def test_validation_offers_thresholds_beyond_0_7(tmp_path):
    """A net that is confident everywhere near a footprint needs a high threshold; validation scores one."""
    image = np.full((6, 96, 96), 1000, dtype=np.uint16)
    image[4, 40:70, 30:60] = 9000  # the footprint
    image[4, 10:30, 60:90] = 7000  # a bright field
    raster = write_raster(tmp_path / "s.tif", image, descriptions=[b.name for b in DEFAULT_MODEL_BANDS])
    box = shapely.box(500000 + 300, 5800000 - 700, 500000 + 600, 5800000 - 400)  # rows 40-69, columns 30-59
    write_polygons_gpkg(tmp_path / "p.gpkg", [box], rasterio.crs.CRS.from_epsg(32633).to_wkt(), {})
    labelled = label_raster(raster, read_polygons(tmp_path / "p.gpkg"), model_bands=DEFAULT_MODEL_BANDS)
    dataset = ChipDataset([labelled], build_chip_index([labelled], 32, 32, val_fraction=0), [0.0] * 6, [1.0] * 6)
    scores = training.evaluate_net(SwirRampNet(), dataset, resolve_device("cpu"), batch=4)
    assert scores[0.85]["iou"] == scores[0.9]["iou"] == 1.0
    assert max(scores[t]["iou"] for t in training.THRESHOLDS if t <= 0.8) < 0.7 and scores[0.95]["iou"] == 0.0


def test_rehearsal_imagery_is_chips_of_generated_scenes_in_the_teachers_normalisation(tmp_path, monkeypatch):
    messages, shifts = [], []
    write = training.synthetic.write_scene_set

    def recording_shifts(*args, shift_for, **kwargs):
        def recorded(rng):
            shifts.append(shift_for(rng))
            return shifts[-1]
        return write(*args, shift_for=recorded, **kwargs)

    monkeypatch.setattr(training.synthetic, "write_scene_set", recording_shifts)
    bands = DEFAULT_MODEL_BANDS
    norm = ([0.0] * len(bands), [1.0] * len(bands))  # normalised = reflectance
    config = TrainConfig(rehearsal_scenes=2, chip_size=64, batch=32)  # fewer chips than a batch: fine here
    chips = training._rehearsal_imagery(config, bands, norm, tmp_path, messages.append)
    # neutral sensor, one landscape after another, coal mines and dark ground as the bundled model learnt them
    assert [(s.landscape, s.gain, s.haze, s.dark_mines) for s in shifts] == [
        ("temperate", (1.0,) * 12, 0.0, defaults.DARK_MINES), ("arid", (1.0,) * 12, 0.0, defaults.DARK_MINES)]
    assert len(list(tmp_path.glob("*.tif"))) == 2 * 3  # image, fine and coarse mask of each scene
    assert len(chips) == 2 * 9  # scenes twice the chip size across, chips every half chip
    image = chips[0]["image"].numpy()
    assert image.shape == (len(bands), 64, 64)
    assert -0.2 < image.min() < image.max() < 1.2 and image.std() > 0.01
    assert messages[0] == "rehearsal: generating 2 synthetic scenes of 128 px" and "2 generated scenes" in messages[-1]


def test_no_rehearsal_when_asked_for_none_or_the_generator_lacks_the_teachers_bands(tmp_path):
    messages = []
    assert training._rehearsal_imagery(TrainConfig(rehearsal_scenes=0, **CHIPS), DEFAULT_MODEL_BANDS,
                                       ([0.0] * 6, [1.0] * 6), tmp_path, messages.append) is None
    assert not any(tmp_path.iterdir()) and not messages
    thermal = (Band("B10", 10895.0),)
    assert training._rehearsal_imagery(TrainConfig(rehearsal_scenes=1, **CHIPS), thermal, ([0.0], [1.0]),
                                       tmp_path, messages.append) is None
    assert messages[-1].startswith("no rehearsal") and "B10" in messages[-1]
    with pytest.raises(InputError, match="rehearsal scenes"):
        TrainConfig(rehearsal_scenes=-1).check()


@pytest.mark.parametrize("field, value, message", [
    ("lr", float("nan"), "--lr nan: must be a number above 0"), ("lr", -1.0, "--lr -1.0: must be a number above 0"),
    ("temperature", float("nan"), "--temperature nan: must be a number above 0"),
    ("lambda_feat", -1.0, "--lambda-feat -1.0: must be a number 0 or more"),
    ("lambda_pred", float("inf"), "--lambda-pred inf: must be a number 0 or more"),
    ("gain_jitter", -0.5, "--gain-jitter -0.5: must be a number 0 or more and below 1"),
    ("gain_jitter", 5.0, "--gain-jitter 5.0: must be a number 0 or more and below 1"),
    ("patience", 0, "--patience 0: must be at least 1 epoch"),
    ("max_chips", 0, "--max-chips 0: must be at least 1 (leave it out to train on every chip)")])
def test_training_options_out_of_range_or_not_a_number_are_named(field, value, message):
    """NaN passed every 'not positive' test: a NaN rate crashed torch, a NaN temperature trained to loss nan."""
    with pytest.raises(InputError, match=re.escape(message)):
        TrainConfig(**{field: value}).check()


def test_a_student_with_a_frozen_encoder_trains_the_decoder_and_head_only(domains, teacher, tmp_path, monkeypatch):
    optimised = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **options):
            optimised.append(list(params))
            super().__init__(optimised[-1], **options)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    images, polygons = domains["fine"]
    config = TrainConfig(method="finetune", epochs=1, steps_per_epoch=2, freeze_encoder=True, **CHIPS)
    result = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "s.safetensors", config=config)
    student, parent = load_bundle(result.bundle_path), load_bundle(teacher.bundle_path)
    assert student.spec.hyperparameters["freeze_encoder"] is True
    assert not {"lambda_feat", "feature_stages"} & set(student.spec.hyperparameters)  # plain fine-tuning
    names = [name for name, _ in parent.net.named_parameters()]
    assert len(optimised[0]) == len([n for n in names if not n.startswith("model.encoder.")]) < len(names)
    changed = {name for name, value in parent.net.state_dict().items()
               if not torch.equal(student.net.state_dict()[name], value)}
    assert all(".decoder." in name or ".segmentation_head." in name for name in changed), changed
    assert bool(changed) == (result.best_epoch == 1)  # epoch 0: the student kept the teacher whole
    with pytest.raises(InputError, match="fine_only does not start from the teacher"):
        finetune_student(teacher.bundle_path, images, polygons, tmp_path / "f.safetensors",
                         config=TrainConfig(method="fine_only", freeze_encoder=True, **CHIPS))


def test_a_student_that_never_beats_its_teacher_on_validation_is_the_teacher(domains, teacher, tmp_path):
    images, polygons = domains["fine"]
    lines = []
    config = TrainConfig(method="finetune", epochs=1, steps_per_epoch=2, lr=10.0, **CHIPS)  # wrecks the weights
    result = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "s.safetensors", config=config,
                              log=lines.append)
    start = next(line for line in lines if line.startswith("starting model"))
    assert result.best_epoch == 0, (start, result.history)
    student, parent = load_bundle(result.bundle_path), load_bundle(teacher.bundle_path)
    assert student.spec.role == "student" and student.spec.metrics["best_epoch"] == 0
    assert student.spec.threshold == parent.spec.threshold
    assert student.spec.metrics["val_iou"] > result.history[0]["val_iou_best_threshold"]
    # its recorded scores are the teacher's at the threshold it keeps, not at the teacher's best threshold on chips
    data = training.chip_datasets(config, images, polygons, parent.spec.band_list(), val_fraction=config.val_fraction,
                                  norm=(parent.spec.norm_mean, parent.spec.norm_std))
    kept = training.evaluate_net(parent.net, data.val, resolve_device("cpu"), thresholds=(parent.spec.threshold,))
    assert student.spec.metrics["val_iou"] == pytest.approx(kept[parent.spec.threshold]["iou"])
    assert f"threshold {parent.spec.threshold} (validation IoU {kept[parent.spec.threshold]['iou']:.3f} there)" in \
        next(line for line in lines if line.startswith("no epoch beat"))
    for name, value in parent.net.state_dict().items():
        assert torch.equal(student.net.state_dict()[name], value), name
    assert any("keeps the teacher's weights" in line for line in lines)
    assert not any(line.startswith("note: the teacher agrees little") for line in lines)  # finetune: no distillation
    assert result.log_path.exists() and not training.resume_path(result.bundle_path).exists()


def test_the_bar_for_a_student_is_its_teacher_at_the_threshold_the_teacher_keeps(domains, teacher, tmp_path):
    """A teacher whose own threshold suits the fine chips badly gives way to an epoch that scores better than it
    does there, even when the teacher scores higher on the chips at another threshold: keeping it would deliver
    its score at its own threshold."""
    parent = load_bundle(teacher.bundle_path)
    parent.spec.threshold = 0.95
    path = save_bundle(tmp_path / "teacher.safetensors", parent.net, parent.spec)
    lines = []
    config = TrainConfig(method="finetune", epochs=1, steps_per_epoch=1, lr=1e-9, **CHIPS)  # the weights stay put
    result = finetune_student(path, *domains["fine"], tmp_path / "s.safetensors", config=config, log=lines.append)
    start = next(line for line in lines if line.startswith("starting model"))
    said = re.search(r"val IoU ([\d.]+) .*\), ([\d.]+) at its own threshold 0.95", start)
    best, own = float(said[1]), float(said[2])
    assert own < best - 0.05, start  # the premise: 0.95 is far from the teacher's best threshold on these chips
    epoch = result.history[0]["val_iou_best_threshold"]
    assert own < epoch <= best + 0.005, (own, epoch, best)  # the epoch is the teacher, nearly
    assert result.best_epoch == 1 and load_bundle(result.bundle_path).spec.metrics["best_epoch"] == 1
    assert not any(line.startswith("no epoch beat") for line in lines)


def test_the_bundles_threshold_is_the_best_on_all_labelled_chips(domains, teacher, tmp_path):
    """Validation chooses the epoch; the threshold comes from the training and validation chips together."""
    images, polygons = domains["fine"]
    lines = []
    config = TrainConfig(method="fine_only", epochs=2, steps_per_epoch=3, **CHIPS)
    result = finetune_student(teacher.bundle_path, images, polygons, tmp_path / "s.safetensors", config=config,
                              log=lines.append)
    bundle = load_bundle(result.bundle_path)
    data = training.chip_datasets(config, images, polygons, bundle.spec.band_list(),
                                  val_fraction=config.val_fraction, norm=(bundle.spec.norm_mean, bundle.spec.norm_std))
    assert len(data.labelled) == len(data.train) + len(data.val) and len(data.val) > 0
    assert data.labelled._open is data.train._open is data.val._open  # one in-memory copy of each raster
    first = data.labelled[0]["image"]
    data.labelled.set_epoch(7)
    assert torch.equal(data.labelled[0]["image"], first)  # no augmentation
    info = resolve_device("cpu")
    pooled = training.evaluate_net(bundle.net, data.labelled, info, config.batch)
    threshold = training.best_threshold({t: score["iou"] for t, score in pooled.items()})
    assert bundle.spec.threshold == threshold
    assert bundle.spec.metrics["labelled_iou"] == pytest.approx(pooled[threshold]["iou"])
    val = training.evaluate_net(bundle.net, data.val, info, config.batch)
    assert bundle.spec.metrics["val_iou"] == pytest.approx(val[threshold]["iou"])
    assert bundle.spec.metrics["best_epoch"] == result.best_epoch >= 1
    assert any(line.startswith(f"threshold {threshold} ") and f"all {len(data.labelled)} labelled chips" in line
               for line in lines), lines


def test_a_student_segments_with_its_teachers_tiles(domains, tmp_path):
    from model_core.paths import DEFAULT_MODEL

    images, polygons = domains["fine"]
    result = finetune_student(DEFAULT_MODEL, images, polygons, tmp_path / "s.safetensors",
                              config=TrainConfig(method="finetune", epochs=1, steps_per_epoch=2, **CHIPS))
    parent = load_bundle(DEFAULT_MODEL).spec
    spec = load_bundle(result.bundle_path).spec
    assert parent.tile_size == 512 and (spec.tile_size, spec.overlap) == (parent.tile_size, parent.overlap)


def test_the_log_of_a_run_resumed_from_an_older_checkpoint_keeps_every_column(tmp_path):
    training._write_log(tmp_path / "log.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "steps": 100, "loss": 0.4}])
    with open(tmp_path / "log.csv") as stream:
        assert list(csv.DictReader(stream)) == [{"epoch": "1", "loss": "0.5", "steps": ""},
                                                {"epoch": "2", "steps": "100", "loss": "0.4"}]
