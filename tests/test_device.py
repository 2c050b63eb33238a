"""Device choice and CUDA back-off, tested on the CPU by injecting availability."""

import pytest
import torch

from model_core import device as devices
from model_core.errors import InputError


def test_auto_is_cpu_without_cuda():
    info = devices.resolve_device("auto", cuda_available=False)
    assert info.device.type == "cpu" and not info.is_cuda and info.name.startswith("CPU")


def test_auto_and_cuda_pick_the_gpu_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test GPU")
    for request in ("auto", "cuda", "CUDA"):
        info = devices.resolve_device(request, cuda_available=True)
        assert info.is_cuda and info.device.type == "cuda" and info.name == "NVIDIA Test GPU"
    assert not devices.resolve_device("cpu", cuda_available=True).is_cuda


def test_inference_batches_one_tile_on_the_cpu_and_four_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test GPU")
    assert devices.resolve_device("auto", cuda_available=False).inference_batch == 1
    assert devices.resolve_device("auto", cuda_available=True).inference_batch == 4


def test_cuda_requested_without_gpu_says_what_to_do():
    with pytest.raises(InputError, match="no CUDA device.*use device cpu or auto"):
        devices.resolve_device("cuda", cuda_available=False)
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")


def test_cpu_autocast_is_full_precision():
    info = devices.resolve_device("cpu")
    with info.autocast():
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.float32
    assert info.to_device(torch.ones(2)).device.type == "cpu"


def test_oom_backoff_halves_the_batch_until_it_fits():
    seen = []

    def run(batch):
        seen.append(batch)
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch

    assert devices.run_with_oom_backoff(run, 16) == 2
    assert seen == [16, 8, 4, 2]


def test_oom_with_batch_one_is_a_clear_error():
    def run(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(InputError, match="ran out of memory even with one tile"):
        devices.run_with_oom_backoff(run, 4)


def test_cpu_inference_runs_two_calls_at_once_and_cuda_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test GPU")
    cpu = devices.resolve_device("cpu")
    assert devices.inference_workers(cpu, threads=2) == 2
    assert devices.inference_workers(cpu, threads=8) == 2
    assert devices.inference_workers(cpu, threads=1) == 1
    assert devices.inference_workers(devices.resolve_device("auto", cuda_available=True), threads=8) == 1


def test_inference_calls_follow_minec2f_threads(monkeypatch):
    monkeypatch.setenv("MINEC2F_THREADS", "1")
    assert devices.inference_workers(devices.resolve_device("cpu")) == 1
