"""Model zoo sweep (issue 24): does ``layers → extract → analyze`` work end to end on every torchvision model
and on the small variant of each timm family, and when it does not, is the failure one line?

Run from the repository root (a script, not a pytest test; about an hour on 2 CPU cores)::

    nice -n 10 python tests/benchmarks/sweep_models.py > /tmp/sweep.md 2> /tmp/sweep.log
    python tests/benchmarks/sweep_models.py --zoo timm --only 'deit*,swin*'   # a few models again

For each model, each step runs as the ``nccli`` command a user types, in its own process (a crash cannot
take the sweep down; the exit code and stderr are the user's)::

    nccli layers MODEL --input-size 3,S,S --format json
    nccli extract MODEL fake:8 --resize S --num-classes 10 --batch-size 4 --workers 0 --out DIR/m.h5
    nccli analyze DIR/m.h5 --out DIR/m.parquet

with random weights (timm:NAME from ``--init-seed`` 0) and S the model's input size: timm's pretrained
config (``get_pretrained_cfg(NAME).input_size``), for torchvision 224 except the models in
``TORCHVISION_SIZES``. The steps stop at the first that fails. Each model is then

* ``ok``: the three exit 0, ``layers`` printed JSON, the report has rows; ``classifier`` says whether the
  feature file has ``/classifier/weight`` (when not, the ``note:`` saying why is quoted); stderr lines other
  than nccli's ``note:``/``warning:`` lines and the accuracy line are counted and the first quoted;
* ``refused``: exit 2 and stderr exactly one line starting with ``error:`` (quoted);
* ``bug``: a traceback, another exit code, more than one stderr line, or a broken output (quoted: the
  step and the last stderr line);
* ``timeout``: the three steps together ran past ``--timeout`` seconds (the step is named).

Prints a Markdown table (one row per model) and the totals on stdout, one progress line per model on
stderr. Each model's stderr is kept under ``--scratch`` (``ZOO/NAME/STEP.stderr``) for diagnosis.
"""

import argparse
import fnmatch
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# (family, timm architecture): the small variant of each family, so that the sweep runs on CPU.
TIMM_MODELS = [
    ("ResNet", "resnet18"),
    ("ResNet", "resnet50d"),
    ("SE-ResNeXt", "seresnext26d_32x4d"),
    ("Res2Net", "res2net50_26w_4s"),
    ("ResNeSt", "resnest14d"),
    ("TResNet", "tresnet_m"),
    ("ConvNeXt", "convnext_atto"),
    ("ConvNeXt", "convnextv2_atto"),
    ("EfficientNet", "efficientnet_b0"),
    ("EfficientNet", "efficientnetv2_rw_t"),
    ("EfficientNet", "tf_efficientnet_lite0"),
    ("RegNet", "regnetx_002"),
    ("RegNet", "regnety_002"),
    ("RegNet", "regnetz_b16"),
    ("ViT", "vit_tiny_patch16_224"),
    ("DeiT", "deit_tiny_patch16_224"),
    ("DeiT", "deit_tiny_distilled_patch16_224"),
    ("DeiT", "deit3_small_patch16_224"),
    ("Swin", "swin_tiny_patch4_window7_224"),
    ("Swin", "swinv2_tiny_window8_256"),
    ("MobileNet", "mobilenetv2_050"),
    ("MobileNet", "mobilenetv3_small_050"),
    ("MobileNet", "mobilenetv4_conv_small"),
    ("MobileNet", "mobilenetv4_hybrid_medium"),
    ("MNASNet", "mnasnet_small"),
    ("LCNet", "lcnet_050"),
    ("GhostNet", "ghostnet_100"),
    ("GhostNet", "ghostnetv2_100"),
    ("RepVGG", "repvgg_a0"),
    ("RepViT", "repvit_m0_9"),
    ("DenseNet", "densenet121"),
    ("Inception", "inception_v3"),
    ("Inception", "inception_v4"),
    ("InceptionNeXt", "inception_next_tiny"),
    ("Xception", "xception41"),
    ("EfficientFormer", "efficientformer_l1"),
    ("EfficientFormer", "efficientformerv2_s0"),
    ("EfficientViT", "efficientvit_b0"),
    ("EfficientViT", "efficientvit_m0"),
    ("MaxViT", "maxvit_nano_rw_256"),
    ("CoAtNet", "coatnet_nano_rw_224"),
    ("BEiT", "beit_base_patch16_224"),
    ("EVA", "eva02_tiny_patch14_224"),
    ("CaiT", "cait_xxs24_224"),
    ("PiT", "pit_ti_224"),
    ("PiT", "pit_ti_distilled_224"),
    ("Twins", "twins_pcpvt_small"),
    ("Twins", "twins_svt_small"),
    ("PoolFormer", "poolformer_s12"),
    ("PoolFormer", "poolformerv2_s12"),
    ("ConvMixer", "convmixer_1024_20_ks9_p14"),
    ("MLP-Mixer", "mixer_s16_224"),
    ("ResMLP", "resmlp_12_224"),
    ("gMLP", "gmlp_ti16_224"),
    ("NFNet", "nfnet_l0"),
    ("NFNet", "dm_nfnet_f0"),
    ("CSPNet", "cspresnet50"),
    ("CSPNet", "cspdarknet53"),
    ("DLA", "dla34"),
    ("DPN", "dpn68"),
    ("HRNet", "hrnet_w18_small"),
    ("VGG", "vgg11"),
    ("VoVNet", "ese_vovnet19b_dw"),
    ("HGNet", "hgnetv2_b0"),
    ("LeViT", "levit_128s"),
    ("LeViT", "levit_conv_128s"),
    ("MobileViT", "mobilevit_xxs"),
    ("MobileViT", "mobilevitv2_050"),
    ("FastViT", "fastvit_t8"),
    ("EdgeNeXt", "edgenext_xx_small"),
    ("CrossViT", "crossvit_tiny_240"),
    ("XCiT", "xcit_nano_12_p16_224"),
    ("PVT", "pvt_v2_b0"),
    ("FocalNet", "focalnet_tiny_srf"),
    ("DaViT", "davit_tiny"),
    ("GCViT", "gcvit_xxtiny"),
    ("NesT", "nest_tiny"),
    ("TNT", "tnt_s_patch16_224"),
    ("VOLO", "volo_d1_224"),
    ("TinyViT", "tiny_vit_5m_224"),
    ("Hiera", "hiera_tiny_224"),
    ("MambaOut", "mambaout_femto"),
    ("BoTNet", "botnet26t_256"),
    ("HaloNet", "halonet26t"),
    ("Sequencer", "sequencer2d_s"),
    ("Visformer", "visformer_tiny"),
    ("ReXNet", "rexnet_100"),
    ("StarNet", "starnet_s1"),
]

# torchvision models that need another input size than 224 (the crop of their ImageNet weights).
TORCHVISION_SIZES = {"inception_v3": 299}

STEPS = ("layers", "extract", "analyze")
EXPECTED_STDERR = ("note:", "warning:")  # nccli's own lines (fake:8 has unequal class counts: a warning)
ACCURACY_LINE = "top-1 accuracy of the model's logits"
FAKE_DATA = "fake:8"
NUM_CLASSES = 10


@dataclass
class Outcome:
    zoo: str
    family: str
    model: str
    size: int
    status: str = "ok"
    step: str = ""
    classifier: bool | None = None
    seconds: float = 0.0
    line: str = ""  # the refusal, the bug's last line, or an ok model's note


def cpu_name() -> str:
    with open("/proc/cpuinfo") as info:
        return next(
            (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor()
        )


def torchvision_family(name: str) -> str:
    return "wide_resnet" if name.startswith("wide_resnet") else re.match(r"[a-z]+", name).group()


def timm_size(name: str) -> int:
    """The height of timm's pretrained config's input size (that of the model when the name has none)."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        config = timm.create_model(name, pretrained=False).pretrained_cfg
        return int(config.get("input_size", (3, 224, 224))[1])
    return int(config.input_size[1])


def run_step(argv: list[str], stderr_path: str, budget: float) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr) of one command, in its own process group."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=max(budget, 1.0))
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        code = None
    with open(stderr_path, "w") as file:
        file.write(stderr)
    return code, stdout, stderr


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def sweep_one(outcome: Outcome, nccli: str, scratch: str, timeout: float) -> Outcome:
    import h5py
    import pyarrow.parquet as pq

    model = f"timm:{outcome.model}" if outcome.zoo == "timm" else outcome.model
    folder = os.path.join(scratch, outcome.zoo, outcome.model)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    features, report = os.path.join(folder, "m.h5"), os.path.join(folder, "m.parquet")
    size = str(outcome.size)
    commands = {
        "layers": [nccli, "layers", model, "--input-size", f"3,{size},{size}", "--format", "json"],
        "extract": [nccli, "extract", model, FAKE_DATA, "--resize", size, "--num-classes", str(NUM_CLASSES)]
        + ["--batch-size", "4", "--workers", "0", "--out", features],
        "analyze": [nccli, "analyze", features, "--out", report],
    }
    started = time.perf_counter()
    notes, others = [], []
    for step in STEPS:
        outcome.step = step
        budget = timeout - (time.perf_counter() - started)
        code, stdout, stderr = run_step(commands[step], os.path.join(folder, f"{step}.stderr"), budget)
        outcome.seconds = time.perf_counter() - started
        lines = [line for line in stderr.splitlines() if line.strip()]
        if code is None:
            outcome.status, outcome.line = "timeout", f"after {timeout:.0f} s"
            return outcome
        if code == 2 and len(lines) == 1 and lines[0].startswith("error:"):
            outcome.status, outcome.line = "refused", lines[0]
            return outcome
        if code != 0 or "Traceback (most recent call last)" in stderr:
            outcome.status = "bug"
            outcome.line = f"exit {code}, {len(lines)} stderr lines: {last_line(stderr)}"
            return outcome
        notes += [line for line in lines if line.startswith("note:")]
        others += [line for line in lines if not line.startswith(EXPECTED_STDERR) and ACCURACY_LINE not in line]
        if step == "layers":
            try:
                if not json.loads(stdout):
                    raise ValueError("no layers")
            except ValueError as error:
                outcome.status, outcome.line = "bug", f"stdout is not a JSON list of layers: {error}"
                return outcome
    with h5py.File(features, "r") as file:
        outcome.classifier = "classifier/weight" in file
    rows = pq.read_metadata(report).num_rows
    if rows == 0:
        outcome.status, outcome.line = "bug", "the report has no rows"
        return outcome
    outcome.step = ""
    if not outcome.classifier:
        outcome.line = notes[0].replace(f"'{features}': ", "") if notes else "(no note says why /classifier is missing)"
    if others:  # what else a user would see on stderr: library warnings, stray prints
        outcome.line = f"{outcome.line} {len(others)} other stderr lines: {others[0]}".strip()
    os.remove(features)  # the stderr files stay, for a look at what a user sees
    os.remove(report)
    return outcome


def markdown(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", choices=["all", "timm", "torchvision"], default="all")
    parser.add_argument("--only", help="comma-separated globs of the model names to run (default: all)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model, three steps together")
    parser.add_argument("--scratch", help="work folder (default: a new folder under /tmp)")
    parser.add_argument("--nccli", default=shutil.which("nccli") or "nccli", help="the nccli command")
    args = parser.parse_args()

    models = []
    if args.zoo in ("all", "timm"):
        models += [Outcome("timm", family, name, timm_size(name)) for family, name in TIMM_MODELS]
    if args.zoo in ("all", "torchvision"):
        names = subprocess.run([args.nccli, "models", "torchvision"], capture_output=True, text=True, check=True)
        models += [
            Outcome("torchvision", torchvision_family(name), name, TORCHVISION_SIZES.get(name, 224))
            for name in names.stdout.split()
        ]
    if args.only:
        patterns = args.only.split(",")
        models = [m for m in models if any(fnmatch.fnmatchcase(m.model, p) for p in patterns)]
    scratch = args.scratch or tempfile.mkdtemp(prefix="nccli_sweep_", dir="/tmp")

    import timm
    import torch

    print(f"# sweep of {len(models)} models; scratch {scratch}", file=sys.stderr)
    started = time.perf_counter()
    for index, outcome in enumerate(models, 1):
        sweep_one(outcome, args.nccli, scratch, args.timeout)
        step = f" at {outcome.step}" if outcome.step else ""
        print(
            f"[{index}/{len(models)}] {outcome.zoo}:{outcome.model} {outcome.status}{step}"
            f" {outcome.seconds:.0f} s {outcome.line}",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - started

    print(f"# {cpu_name()}; {os.cpu_count()} CPU cores; torch {torch.__version__}")
    print(f"# timm {timm.__version__}; timeout {args.timeout:.0f} s per model; {total / 60:.1f} min in all")
    print()
    print("| zoo | family | model | S | status | classifier | s | refusal, bug or note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in models:
        classifier = {True: "yes", False: "no", None: ""}[m.classifier]
        status = f"{m.status} ({m.step})" if m.step else m.status
        line = f"`{markdown(m.line)}`" if m.line else ""
        print(f"| {m.zoo} | {m.family} | {m.model} | {m.size} | {status} | {classifier} | {m.seconds:.0f} | {line} |")
    print()
    for zoo in ("timm", "torchvision", None):
        chosen = [m for m in models if zoo is None or m.zoo == zoo]
        if not chosen:
            continue
        count = {status: sum(m.status == status for m in chosen) for status in ("ok", "refused", "bug", "timeout")}
        written = sum(bool(m.classifier) for m in chosen)
        print(
            f"{zoo or 'all'}: {count['ok']} of {len(chosen)} work end to end ({written} with /classifier);"
            f" {count['refused']} refused in one line; {count['bug']} tracebacks or other failures;"
            f" {count['timeout']} timed out"
        )


if __name__ == "__main__":
    main()
