"""Reports stored once, and compared bit for bit: a redesign that changes no number keeps every report.

Two cases: the demo (its bundled checkpoints of epochs 1 and 300, the first 450 digits of each split:
``extract`` on the CPU then ``analyze``) and a many-class file (K = 3 000 outputs of which 2 000 present, with
a classifier: pass 2's class tiles, the pair statistics over tiles). ``python tests/stored_reports.py``
computes both with the code as it is and stores their values (hexadecimal floats) in
``tests/data/stored_reports.json`` with the machine they were computed on; the tests compare with them bit for
bit on that machine, and to 1e-9 relative on another (another CPU's BLAS or torch kernels round differently).
"""

import json
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

STORED = Path(__file__).resolve().parent / "data" / "stored_reports.json"
DEMO = dict(checkpoints=(1, 300), limit=450, device="cpu")
IGNORED = ("file", "model")  # paths of this checkout, not numbers


def machine() -> str:
    """The CPU and the numerical libraries: where bit-for-bit equality can be asked."""
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{cpu}; numpy {np.__version__}; torch {torch.__version__}"


def report_values(path) -> list[dict]:
    """Every row of a report with its floats as exact hexadecimal strings (None for null)."""
    rows = pq.read_table(path).to_pylist()
    return [
        {
            key: float(value).hex() if isinstance(value, float) else value
            for key, value in row.items()
            if key not in IGNORED
        }
        for row in rows
    ]


def many_classes_file(path: Path) -> Path:
    from h5files import write_feature_file

    rng = np.random.default_rng(2026)
    k, present, n, d = 3000, 2000, 6000, 24
    classes = rng.choice(k, present, replace=False)
    labels = classes[rng.integers(0, present, n)]
    centres = rng.normal(size=(k, d))
    features = (centres[labels] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    weight, bias = centres + 0.1 * rng.normal(size=(k, d)), 0.1 * rng.normal(size=k)
    return write_feature_file(
        path, labels, {"fc_in": features}, weight=weight, bias=bias, classifier_layer="fc_in", num_classes=k
    )


def many_classes_report(folder: Path) -> Path:
    """``nccli analyze`` of the many-class file (through the command line, which every version has)."""
    path = many_classes_file(Path(folder) / "many.h5")
    out = Path(folder) / "many.parquet"
    command = [sys.executable, "-m", "nccli", "analyze", str(path), "--out", str(out), "--device", "cpu"]
    subprocess.run([*command, "--block-rows", "1000"], check=True, capture_output=True)
    return out


def demo_report(folder: Path) -> Path:
    from nccli.demo import DemoConfig, run_demo

    return run_demo(DemoConfig(out=str(folder), **DEMO)).report


def assert_as_stored(name: str, report) -> None:
    """``report``'s values equal the stored ones: bit for bit on the machine that stored them, else to 1e-9."""
    stored = json.loads(STORED.read_text())
    exact = stored["machine"] == machine()
    expected, actual = stored["reports"][name], report_values(report)
    assert len(actual) == len(expected), name
    for want, got in zip(expected, actual):
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            if exact or not (isinstance(value, str) and value.startswith(("0x", "-0x", "inf", "-inf", "nan"))):
                assert got[key] == value, (name, want.get("layer"), key, value, got[key])
            else:
                a, b = float.fromhex(value), float.fromhex(got[key])
                assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (
                    name,
                    key,
                    a,
                    b,
                )


def store() -> None:
    with tempfile.TemporaryDirectory() as folder:
        reports = {
            "demo": report_values(demo_report(Path(folder) / "demo")),
            "many_classes": report_values(many_classes_report(Path(folder))),
        }
    STORED.parent.mkdir(exist_ok=True)
    STORED.write_text(json.dumps({"machine": machine(), "reports": reports}, indent=0, sort_keys=True) + "\n")
    print(f"stored {sum(map(len, reports.values()))} report rows in {STORED}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    store()
