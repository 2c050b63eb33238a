"""Device choice and CUDA back-off, tested on the CPU by injecting availability."""

import pytest
import torch

from model_core import device as devices
from model_core.errors import InputError


@pytest.fixture(autouse=True)
def test_gpu(monkeypatch):
    """A GPU this PyTorch build runs, where a test says CUDA is available (cuda_available=True)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_86"])


def test_auto_is_cpu_without_cuda():
    info = devices.resolve_device("auto", cuda_available=False)
    assert info.device.type == "cpu" and not info.is_cuda and info.name.startswith("CPU")


def test_auto_and_cuda_pick_the_gpu_when_present():
    for request in ("auto", "cuda", "CUDA"):
        info = devices.resolve_device(request, cuda_available=True)
        assert info.is_cuda and info.device.type == "cuda" and info.name == "NVIDIA Test GPU"
    assert not devices.resolve_device("cpu", cuda_available=True).is_cuda


def test_inference_batches_one_tile_on_the_cpu_and_four_on_cuda():
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


def test_cpu_inference_runs_two_calls_at_once_and_cuda_one():
    cpu = devices.resolve_device("cpu")
    assert devices.inference_workers(cpu, threads=2) == 2
    assert devices.inference_workers(cpu, threads=8) == 2
    assert devices.inference_workers(cpu, threads=1) == 1
    assert devices.inference_workers(devices.resolve_device("auto", cuda_available=True), threads=8) == 1


def test_inference_calls_follow_minec2f_threads(monkeypatch):
    monkeypatch.setenv("MINEC2F_THREADS", "1")
    assert devices.inference_workers(devices.resolve_device("cpu")) == 1


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
                                   RuntimeError("CUDA error: out of memory")])
def test_oom_backoff_knows_every_allocation_failure(error):
    """cuDNN and cuBLAS workspaces, and CUDA errors outside the caching allocator, fail as plain RuntimeErrors."""
    def run(batch):
        if batch > 1:
            raise error
        return batch

    assert devices.run_with_oom_backoff(run, 4) == 1


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    def run(batch):
        raise RuntimeError("size mismatch")

    with pytest.raises(RuntimeError, match="size mismatch"):
        devices.run_with_oom_backoff(run, 4)
    with pytest.raises(RuntimeError, match="size mismatch"):
        devices.explaining_out_of_memory("lower it", run, 1)


def test_out_of_memory_in_a_call_is_an_input_error_with_advice():
    def run(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried\nto allocate")

    with pytest.raises(InputError, match=r"^out of memory \(CUDA out of memory\. Tried\); lower --batch$"):
        devices.explaining_out_of_memory("lower --batch", run, 8)
    assert devices.explaining_out_of_memory("lower --batch", lambda batch: batch, 8) == 8


@pytest.mark.parametrize("capability, arches, supported", [
    ((8, 9), ["sm_50", "sm_80", "sm_86", "sm_90"], True),   # sm_86 kernels run on 8.9
    ((12, 0), ["sm_50", "sm_80", "sm_86", "sm_90"], False),  # a newer GPU than the build
    ((12, 0), ["sm_80", "sm_90", "compute_90"], True),      # PTX compiled for it at load
    ((3, 7), ["sm_50", "sm_60", "compute_60"], False),      # an older GPU than the build
])
def test_a_gpu_this_torch_build_cannot_run_is_not_chosen(monkeypatch, capability, arches, supported):
    """torch.cuda.is_available() is True for such a GPU; its first kernel would fail ("no kernel image")."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arches)
    info = devices.resolve_device("auto", cuda_available=True)
    assert info.is_cuda == supported
    if not supported:
        assert f"the GPU NVIDIA Test GPU (compute capability {capability[0]}.{capability[1]}) is not supported by " \
               "this PyTorch build" in info.name
        with pytest.raises(InputError, match="is not supported by this PyTorch build .*; install a PyTorch build"):
            devices.resolve_device("cuda", cuda_available=True)
