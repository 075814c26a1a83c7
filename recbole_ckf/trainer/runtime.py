"""The machine a CKF run uses: Accelerate's precision and CPU settings, and the process's peak memory."""

import ctypes
import ctypes.util
import os
import resource

import torch

from recbole_ckf.errors import CKFError


def peak_rss_gib():
    """The process's peak resident memory so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _libc_malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to release
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_memory():
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere). torch's CPU
    tensors live on that heap: a training step's activations (about 1.7 GB for 4 x 320 Gemma-3-270M tokens)
    are freed after the step but stay resident, and prompts of other lengths fragment them, so that without
    this the resident set grew by ~0.1 GB per long step (measured: 4.0 GB held after 6 rounds of the four tasks
    against 2.0 GB with a trim after each step). Its cost: the amazon main job's peak fell from 7.11 to 4.69-4.94
    GiB and its training from 501 / 443 to 465-475 / 404-415 tokens/s (epoch 0 / 1; three runs, 2 CPU cores)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def resolve_mixed_precision(setting, cuda=None):
    """``auto``: bf16 on a GPU that supports it, none elsewhere. On the CPUs we measured (2 cores, no
    AVX512-BF16), bf16 autocast made a Gemma-3-270M step 5x (forward) to 60x (backward) slower than float32.
    ``cuda``: whether the run uses the GPU (default: whether there is one)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting in (None, "auto"):
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting not in ("no", "bf16", "fp16"):
        raise CKFError(f"mixed_precision: expected auto, no, bf16 or fp16, got '{setting}'")
    return setting


def use_cpu(config):
    """Accelerate's ``cpu`` flag. Accelerate forms a multi-process CPU group (gloo) only when told ``cpu=True``:
    without it, on a machine without a GPU, ``accelerate launch --multi_gpu --num_processes N`` would run N
    independent copies of the whole run, each unaware of the others."""
    if not config["use_gpu"]:
        return True
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator
