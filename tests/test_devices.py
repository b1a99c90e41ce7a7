"""``--device`` (nccli/devices.py): one meaning and one wording for extract, analyze and measure_collapse."""

import subprocess
import sys

import pytest
import torch

from nccli import devices
from nccli.errors import UsageError
from nccli.metrics.backend import NumpyBackend, TorchBackend, select_backend


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "cuda:-1", "CPU", "cuda:0:1", ""])
def test_what_is_not_a_device_is_refused_naming_the_choices(spec):
    with pytest.raises(UsageError, match=r"is not a device; use auto, cpu, cuda or cuda:N"):
        devices.resolve_device(spec)


def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == devices.resolve_device("cpu") == "cpu"
    assert isinstance(select_backend("auto"), NumpyBackend)
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match=f"--device {spec}: no CUDA device is available here; use --device cpu"):
            devices.resolve_device(spec)


def test_with_cuda_auto_is_cuda_and_an_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [devices.resolve_device(spec) for spec in ("auto", "cuda", "cuda:1")] == ["cuda", "cuda", "cuda:1"]
    assert isinstance(select_backend("cuda:1"), TorchBackend)
    with pytest.raises(UsageError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        devices.resolve_device("cuda:2")


def test_auto_without_a_driver_never_imports_torch():
    code = "import sys; from nccli import devices; devices.nvidia_driver_present = lambda: False; "
    code += "assert devices.resolve_device('auto') == 'cpu'; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
