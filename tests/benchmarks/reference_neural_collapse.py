"""Baseline of bench_many_classes.py: the public library rhubarbwu/neural-collapse on a feature file.

Run by the reference's own interpreter (a virtual environment with torch, h5py
and that library installed; never part of nccli). It follows the library's
README: a MeanAccumulator pass, a VarNormAccumulator + CovarAccumulator pass
with the means, a DecAccumulator pass with the means and the classifier, then
its measurements, on the CPU, reading the file's rows in batches with h5py.
Writes one JSON object of values to VALUES.json.

    REFERENCE_PYTHON reference_neural_collapse.py FILE.h5 VALUES.json [--dtype float32] [--batch 1024] [--tile 1024]
"""

import argparse
import json

import h5py
import numpy as np
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
    self_duality_error,
    similarities,
    simplex_etf_error,
    variability_cdnv,
)


def batches(handle, layer: str, batch: int):
    features, labels = handle[f"layers/{layer}"], handle["labels"]
    for start in range(0, labels.shape[0], batch):
        stop = min(start + batch, labels.shape[0])
        yield torch.from_numpy(features[start:stop]), torch.from_numpy(labels[start:stop].astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("values", help="Where the JSON values go.")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="The library's accumulator dtype (its default: float32).",
    )
    parser.add_argument("--batch", type=int, default=1024, help="Rows per accumulate call.")
    parser.add_argument("--tile", type=int, default=1024, help="tile_size of its K × K kernels.")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    with h5py.File(args.path, "r") as handle:
        k, layer = int(handle.attrs["num_classes"]), handle["classifier"].attrs["layer"]
        d = handle[f"layers/{layer}"].shape[1]
        weight = torch.from_numpy(handle["classifier/weight"][()]).to(dtype)
        mean_accum = MeanAccumulator(k, d, "cpu", dtype=dtype)
        for x, y in batches(handle, layer, args.batch):
            mean_accum.accumulate(x, y)
        means, mean_g = mean_accum.compute()
        var_accum = VarNormAccumulator(k, d, "cpu", dtype=dtype, M=means)
        covar_accum = CovarAccumulator(k, d, "cpu", dtype=dtype, M=means)
        for x, y in batches(handle, layer, args.batch):
            var_accum.accumulate(x, y, means)
            covar_accum.accumulate(x, y, means)
        var_norms, _ = var_accum.compute()
        covar_within = covar_accum.compute()
        dec_accum = DecAccumulator(k, d, "cpu", dtype=dtype, M=means, W=weight)
        for x, y in batches(handle, layer, args.batch):
            dec_accum.accumulate(x, y, weight, means)
    norms = mean_norms(means, mean_g)
    values = {
        "nc1": covariance_ratio(covar_within, means, mean_g),
        "nc1_tilde": covariance_ratio(covar_within, means, mean_g, "quotient"),
        "cdnv": variability_cdnv(var_norms, means, tile_size=args.tile),
        "nc2_equinorm_ddof1": (norms.std() / norms.mean()).item(),
        "nc2_etf_err": simplex_etf_error(means, mean_g),
        "gnc2_dist_var": kernel_stats(means, mean_g, tile_size=args.tile)[1],
        "gnc2_log_var": kernel_stats(means, mean_g, kernel=log_kernel, tile_size=args.tile)[1],
        "nc3_dual_err": self_duality_error(weight, means, mean_g),
        "nc3_uniform_duality_ddof1": similarities(weight, means, mean_g, cos=True).var().item(),
        "clf_ncc_agreement": clf_ncc_agreement(dec_accum),
    }
    with open(args.values, "w") as out:
        json.dump(values, out)


if __name__ == "__main__":
    main()
