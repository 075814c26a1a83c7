"""The machine a CKF run uses: Accelerate's precision and CPU settings, and the process's peak memory."""

import os
import resource

import torch

from recbole_ckf.errors import CKFError


def peak_rss_gib():
    """The process's peak resident memory so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


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
