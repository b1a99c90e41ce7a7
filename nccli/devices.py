"""``--device``: one meaning and one wording for every command (extract, analyze, demo, ``measure_collapse``).

``auto`` is CUDA when torch sees a device (checked without importing torch when
no NVIDIA driver is installed, so CPU-only runs start fast), else the CPU;
``cpu``; ``cuda`` (torch's current CUDA device) or ``cuda:N``. Anything else,
or a CUDA device that is not there, is refused in one line naming the choices.
Under torchrun, ``auto`` and ``cuda`` mean the process's own GPU
(:func:`nccli.distributed.rank_device`).
"""

import re
from pathlib import Path

from nccli.errors import UsageError

CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(:(\d+))?")


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is installed (without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_device(spec: str, option: str = "--device") -> str:
    """``cpu``, ``cuda`` or ``cuda:N``: where ``spec`` computes on this machine (``auto`` decided here).

    A CUDA device that torch cannot see (none, torch missing, an index past the last) is refused in one line,
    naming ``option`` as the caller spells it (``--device``, or ``device=`` from Python).
    """

    def given(value: str) -> str:
        return f"{option}'{value}'" if option.endswith("=") else f"{option} {value}"

    if spec not in ("auto", "cpu") and not _CUDA.fullmatch(spec):
        quoted = f"{option}'{spec}'" if option.endswith("=") else f"{option} '{spec}'"
        raise UsageError(f"{quoted} is not a device; use {CHOICES}")
    if spec == "cpu":
        return "cpu"
    if spec == "auto" and not nvidia_driver_present():
        return "cpu"
    try:
        import torch
    except ImportError:
        if spec == "auto":
            return "cpu"
        raise UsageError(f"{given(spec)} needs torch, which is not installed; use {given('cpu')}") from None
    if not torch.cuda.is_available():
        if spec == "auto":
            return "cpu"
        raise UsageError(f"{given(spec)}: no CUDA device is available here; use {given('cpu')} or {given('auto')}")
    if spec == "auto":
        return "cuda"
    index = _CUDA.fullmatch(spec).group(2)
    if index is not None and int(index) >= torch.cuda.device_count():
        raise UsageError(f"{given(spec)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return spec
