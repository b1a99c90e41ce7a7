"""nccli beside the public reference library rhubarbwu/neural-collapse, on the same arrays.

For every definition the two share, print nccli's value, the library's, the
library's converted to nccli's convention, and the relative difference. The
library is never part of nccli: give its checkout and an interpreter that has
its requirements (torch, scipy); the script skips with a message when either
is absent. The library side runs in that interpreter, on arrays passed as an
.npz file, with its own accumulators in float64.

    python tests/benchmarks/compare_reference_library.py /tmp/nclib --python /tmp/nclib-venv/bin/python

Conventions that differ (converted in the "library → nccli" column):
* ``torch.std``/``Tensor.var`` default to ddof = 1: nc2_equinorm, w_equinorm
  (std over K) and nc3_uniform_duality (variance over K) are scaled by
  √((K−1)/K) and (K−1)/K;
* ``simplex_etf_error`` is the ETF distance of the *unnormalised* Gram MMᵀ
  (nccli's nc2_etf normalises the rows first); with ⟨MMᵀ, P⟩ = tr(MMᵀ) it
  gives Tirer's residual as e·√(1 − e²/4): nccli's nc2_tirer; likewise
  ``self_duality_error`` (= nccli's nc3_etf) gives nc3_tirer;
* ``clf_ncc_agreement`` takes argmax(XWᵀ), no bias: compared with
  1 − nc4_ncc_mismatch on a bias-free classifier.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

CASES = {
    "random (K=10, d=32, N=2000)": dict(k=10, d=32, n=200, spread=0.5, noise=1.0),
    "clustered (K=10, d=32, N=2000)": dict(k=10, d=32, n=200, spread=3.0, noise=1.0),
    "near collapse (K=8, d=16, N=800)": dict(k=8, d=16, n=100, spread=0.0, noise=0.05, etf=True),
    "imbalanced (K=20, d=64, N≈3000)": dict(k=20, d=64, n=None, spread=2.0, noise=1.0),
}


def make_case(k, d, n, spread, noise, etf=False, seed=0):
    """Features, labels, a bias-free classifier near the class means, and OOD rows."""
    rng = np.random.default_rng(seed)
    counts = np.full(k, n) if n else rng.integers(20, 300, k)
    labels = rng.permutation(np.repeat(np.arange(k), counts))
    if etf:
        q, _ = np.linalg.qr(rng.standard_normal((d, k)))
        centres = 3.0 * math.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k) @ q.T
    else:
        centres = spread * rng.standard_normal((k, d))
    features = centres[labels] + noise * rng.standard_normal((len(labels), d))
    weight = centres + 0.3 * rng.standard_normal((k, d))
    ood = rng.standard_normal((500, d)) + 0.2
    return features, labels, weight, ood


def nccli_side(features, labels, weight, ood, folder) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from h5files import write_feature_file

    from nccli.analyze.analysis import AnalyzeConfig, analyze_features

    path = write_feature_file(
        os.path.join(folder, "run.h5"),
        labels,
        {"feat": features},
        weight=weight,
        bias=np.zeros(len(weight)),
        classifier_layer="feat",
    )
    ood_path = write_feature_file(
        os.path.join(folder, "ood.h5"), np.zeros(len(ood), dtype=int), {"feat": ood}, num_classes=1
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze_features(AnalyzeConfig(files=(str(path),), device="cpu", snr=True, ood=str(ood_path))).summary[0]


def library_side(arrays_path: str, library: str) -> dict:
    """Runs in the library's interpreter: its accumulators and measurements, float64, as its README shows."""
    sys.path.insert(0, library)
    import torch
    from neural_collapse.accumulate import (
        CovarAccumulator,
        DecAccumulator,
        MeanAccumulator,
        VarNormAccumulator,
    )
    from neural_collapse.kernels import kernel_stats, log_kernel
    from neural_collapse.measure import (
        clf_ncc_agreement,
        covariance_ratio,
        mean_norms,
        orthogonality_deviation,
        self_duality_error,
        similarities,
        simplex_etf_error,
        variability_cdnv,
    )

    data = np.load(arrays_path)
    x, y = torch.from_numpy(data["features"]), torch.from_numpy(data["labels"])
    w, ood = torch.from_numpy(data["weight"]), torch.from_numpy(data["ood"])
    k, d = w.shape
    f64 = dict(dtype=torch.float64)
    means_acc = MeanAccumulator(k, d, "cpu", **f64)
    means_acc.accumulate(x, y)
    means, mean_g = means_acc.compute()
    var_acc, cov_acc = VarNormAccumulator(k, d, "cpu", M=means, **f64), CovarAccumulator(k, d, "cpu", M=means, **f64)
    var_acc.accumulate(x, y, means)
    cov_acc.accumulate(x, y, means)
    dec_acc = DecAccumulator(k, d, "cpu", M=means, W=w, **f64)
    dec_acc.accumulate(x, y, w, means)
    ood_acc = MeanAccumulator(1, d, "cpu", **f64)
    ood_acc.accumulate(ood, torch.zeros(len(ood), dtype=torch.int64))
    _, ood_mean = ood_acc.compute()
    norms, w_norms = mean_norms(means, mean_g), mean_norms(w)
    return {
        "nc1": covariance_ratio(cov_acc.compute(), means, mean_g),
        "nc1_tilde": covariance_ratio(cov_acc.compute(), means, mean_g, "quotient"),
        "cdnv": variability_cdnv(var_acc.compute()[0], means),
        "nc2_equinorm": (norms.std() / norms.mean()).item(),
        "simplex_etf_error": simplex_etf_error(means, mean_g),
        "gnc2_dist_var": kernel_stats(means, mean_g)[1],
        "gnc2_log_var": kernel_stats(means, mean_g, kernel=log_kernel)[1],
        "w_equinorm": (w_norms.std() / w_norms.mean()).item(),
        "self_duality_error": self_duality_error(w, means, mean_g),
        "nc3_uniform_duality": similarities(w, means, mean_g, cos=True).var().item(),
        "clf_ncc_agreement": clf_ncc_agreement(dec_acc),
        "nc5_ood_orthogonality": orthogonality_deviation(means, ood_mean),
    }


def tirer(etf: float) -> float:
    return etf * math.sqrt(max(1 - etf * etf / 4, 0.0))


def rows(ours: dict, theirs: dict, k: int):
    """(nccli column, nccli value, library function, library value, library → nccli)."""
    ddof_std, ddof_var = math.sqrt((k - 1) / k), (k - 1) / k
    yield "nc1", ours["nc1"], "covariance_ratio(pinv)", theirs["nc1"], theirs["nc1"]
    yield "nc1_tilde", ours["nc1_tilde"], "covariance_ratio(quotient)", theirs["nc1_tilde"], theirs["nc1_tilde"]
    yield "cdnv", ours["cdnv"], "variability_cdnv", theirs["cdnv"], theirs["cdnv"]
    yield (
        "nc2_equinorm",
        ours["nc2_equinorm"],
        "mean_norms std/mean (ddof 1)",
        theirs["nc2_equinorm"],
        theirs["nc2_equinorm"] * ddof_std,
    )
    yield (
        "nc2_tirer",
        ours["nc2_tirer"],
        "simplex_etf_error → e√(1−e²/4)",
        theirs["simplex_etf_error"],
        tirer(theirs["simplex_etf_error"]),
    )
    yield (
        "gnc2_dist_var",
        ours["gnc2_dist_var"],
        "kernel_stats(dist_kernel) var",
        theirs["gnc2_dist_var"],
        theirs["gnc2_dist_var"],
    )
    yield (
        "gnc2_log_var",
        ours["gnc2_log_var"],
        "kernel_stats(log_kernel) var",
        theirs["gnc2_log_var"],
        theirs["gnc2_log_var"],
    )
    yield (
        "w_equinorm",
        ours["w_equinorm"],
        "mean_norms(W) std/mean (ddof 1)",
        theirs["w_equinorm"],
        theirs["w_equinorm"] * ddof_std,
    )
    yield "nc3_etf", ours["nc3_etf"], "self_duality_error", theirs["self_duality_error"], theirs["self_duality_error"]
    yield (
        "nc3_tirer",
        ours["nc3_tirer"],
        "self_duality_error → e√(1−e²/4)",
        theirs["self_duality_error"],
        tirer(theirs["self_duality_error"]),
    )
    yield (
        "nc3_uniform_duality",
        ours["nc3_uniform_duality"],
        "similarities(cos).var() (ddof 1)",
        theirs["nc3_uniform_duality"],
        theirs["nc3_uniform_duality"] * ddof_var,
    )
    yield (
        "1 − nc4_ncc_mismatch",
        1 - ours["nc4_ncc_mismatch"],
        "clf_ncc_agreement (no bias)",
        theirs["clf_ncc_agreement"],
        theirs["clf_ncc_agreement"],
    )
    yield (
        "nc5_ood_orthogonality",
        ours["nc5_ood_orthogonality"],
        "orthogonality_deviation",
        theirs["nc5_ood_orthogonality"],
        theirs["nc5_ood_orthogonality"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", help="Checkout of rhubarbwu/neural-collapse (the folder holding neural_collapse/).")
    parser.add_argument(
        "--python", default=sys.executable, help="Interpreter with the library's requirements (torch, scipy)."
    )
    parser.add_argument("--library-side", metavar="ARRAYS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library_side:
        print(json.dumps(library_side(args.library_side, args.library)))
        return
    if not os.path.isdir(os.path.join(args.library, "neural_collapse")) or not os.path.exists(args.python):
        print(f"skipped: no neural_collapse/ under '{args.library}' or no interpreter '{args.python}'")
        return
    print("| case | nccli column | nccli | library function | library | library → nccli | rel. diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, case in CASES.items():
        features, labels, weight, ood = make_case(**case)
        with tempfile.TemporaryDirectory() as folder:
            ours = nccli_side(features, labels, weight, ood, folder)
            arrays = os.path.join(folder, "arrays.npz")
            np.savez(arrays, features=features, labels=labels, weight=weight, ood=ood)
            done = subprocess.run(
                [args.python, __file__, args.library, "--library-side", arrays],
                capture_output=True,
                text=True,
                check=True,
            )
            theirs = json.loads(done.stdout.strip().splitlines()[-1])
        for column, mine, function, raw, converted in rows(ours, theirs, len(weight)):
            diff = abs(mine - converted) / max(abs(mine), abs(converted), 1e-300)
            print(f"| {name} | `{column}` | {mine:.10g} | `{function}` | {raw:.10g} | {converted:.10g} | {diff:.1e} |")


if __name__ == "__main__":
    main()
