"""One place for device choice and device-specific behaviour (CPU or CUDA).

``resolve_device("auto")`` picks CUDA when present, else the CPU. On CUDA: fp16 autocast, pinned host memory
with non-blocking copies, and batches halved on out-of-memory. On the CPU: full precision, a set thread count and
two inference calls at once.
"""

import os
import re
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
    unsupported = unsupported_gpu() if has_cuda and request != "cpu" else None
    if request == "cuda" and unsupported:
        raise InputError(f"the GPU {unsupported}; install a PyTorch build for it, or use device cpu")
    if request in ("auto", "cuda") and has_cuda and not unsupported:
        return DeviceInfo(torch.device("cuda"), torch.cuda.get_device_name(0), True)
    why = f"; the GPU {unsupported}" if unsupported else ""
    return DeviceInfo(torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads{why})", False)


def unsupported_gpu():
    """What to say of the first GPU when this PyTorch build has no kernels for it (its first kernel would fail
    with "no kernel image is available"), else None. Kernels for sm_XY run on the same major version with a minor
    of Y or more; PTX (compute_XY) is compiled for any GPU of capability XY or more."""
    arches = torch.cuda.get_arch_list()
    if not arches or torch.version.hip:  # the build does not say, or ROCm (gfx names): trust it
        return None
    major, minor = torch.cuda.get_device_capability(0)
    for arch in arches:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)a?", arch)  # sm_86: 8.6, sm_120: 12.0
        if not match:
            continue
        kind, arch_version = match[1], (int(match[2]), int(match[3]))
        if kind == "sm" and arch_version[0] == major and arch_version[1] <= minor or \
                kind == "compute" and arch_version <= (major, minor):
            return None
    return (f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor}) is not supported by this PyTorch "
            f"build ({', '.join(arches)})")


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


def is_out_of_memory(error):
    """True for ``torch.cuda.OutOfMemoryError`` and the allocation failures that PyTorch raises as a plain RuntimeError
    (cuDNN and cuBLAS workspaces, CUDA errors outside the caching allocator, the CPU allocator)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "ALLOC_FAILED", "can't allocate memory"))


def _free_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_with_oom_backoff(run, batch):
    """Call ``run(batch)``; on out-of-memory, free the CUDA cache and retry with half the batch, down to 1. The
    cache is freed after the ``except`` block: until then the failed call's frames hold its tensors."""
    while True:
        try:
            return run(batch)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        _free_cache()
        if batch <= 1:
            raise InputError("ran out of memory even with one tile per batch; use a smaller tile size (or device "
                             "cpu if this is the GPU)")
        batch = max(1, batch // 2)


def explaining_out_of_memory(advice, function, *args, **kwargs):
    """``function(*args, **kwargs)``; out of memory in it is an InputError that says so and gives ``advice``. The
    cache is freed once the failed call's frames are gone, as in :func:`run_with_oom_backoff`."""
    try:
        return function(*args, **kwargs)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        what = str(error).strip().splitlines()[0][:200]
    _free_cache()
    raise InputError(f"out of memory ({what}); {advice}")
