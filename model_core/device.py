"""One place for device choice and device-specific behaviour (CPU or CUDA).

``resolve_device("auto")`` picks CUDA when present, else the CPU. On CUDA: fp16 autocast, pinned host memory
with non-blocking copies, and batches halved on out-of-memory. On the CPU: full precision, a set thread count and
two inference calls at once.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str
    is_cuda: bool

    def autocast(self):
        """fp16 autocast on CUDA; a no-op context on the CPU."""
        return torch.autocast("cuda", dtype=torch.float16) if self.is_cuda else nullcontext()

    @property
    def inference_batch(self):
        """Default tiles per model call: 4 on CUDA (keeps the GPU busy); 1 on the CPU, where a batch of 512 px
        tiles outgrows the caches and runs slower per tile (bench/infer_throughput.py --batch)."""
        return 4 if self.is_cuda else 1

    def to_device(self, array_or_tensor):
        """Host array/tensor -> tensor on this device (pinned and non-blocking on CUDA)."""
        tensor = torch.as_tensor(array_or_tensor)
        if not self.is_cuda:
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


def resolve_device(request="auto", *, cuda_available=None):
    """DeviceInfo for "auto", "cpu" or "cuda" (``cuda_available`` overrides detection, for tests)."""
    request = (request or "auto").lower()
    if request not in DEVICE_CHOICES:
        raise InputError(f"unknown device {request!r}; use one of {', '.join(DEVICE_CHOICES)}")
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if request == "cuda" and not has_cuda:
        raise InputError("CUDA was requested but no CUDA device is available; use device cpu or auto")
    if request in ("auto", "cuda") and has_cuda:
        return DeviceInfo(torch.device("cuda"), torch.cuda.get_device_name(0), True)
    return DeviceInfo(torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)", False)


def cpu_threads():
    """CPU threads MineC2F may use: MINEC2F_THREADS, else all cores."""
    return int(os.environ.get("MINEC2F_THREADS", 0)) or os.cpu_count() or 1


def set_cpu_threads(count=None):
    """Use ``count`` CPU threads for torch in the calling thread (default: :func:`cpu_threads`)."""
    count = count or cpu_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def inference_workers(info, threads=None):
    """Model calls to run at once for inference on ``info``'s device with ``threads`` CPU threads (default
    :func:`cpu_threads`), which they share. One on CUDA. Two on the CPU: convolutions scale poorly across threads,
    so two 1-thread calls on 2 cores finish sooner than two 2-thread calls in turn
    (bench/infer_throughput.py --workers)."""
    return 1 if info.is_cuda or (threads or cpu_threads()) < 2 else 2


def run_with_oom_backoff(run, batch):
    """Call ``run(batch)``; on CUDA out-of-memory, free the cache and retry with half the batch, down to 1."""
    while True:
        try:
            return run(batch)
        except torch.cuda.OutOfMemoryError as error:
            if batch <= 1:
                raise InputError("the GPU ran out of memory even with one tile per batch; use a smaller tile "
                                 "size or device cpu") from error
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch = max(1, batch // 2)
