"""Baseline (b) of bench_analyze.py: the same metrics, straightforward and in memory.

Loads every layer whole and computes each quantity with one matrix product
(one-hot class sums, d × d Σ_W and Σ_B, np.linalg.pinv, distance and logit
matrices). What a researcher would write in a notebook; not part of nccli.

    python inmemory_numpy.py FILE.h5
"""

import sys

import h5py
import numpy as np


def metrics(features: np.ndarray, labels: np.ndarray, weight=None, bias=None) -> dict:
    n, d = features.shape
    k = labels.max() + 1
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0
    counts = onehot.sum(axis=0)
    means = (onehot.T @ features) / counts[:, None]
    mu_g = means.mean(axis=0)
    centred = means - mu_g
    residuals = features - means[labels]
    sigma_w = residuals.T @ residuals / n
    sigma_b = centred.T @ centred / k
    out = {"nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / k}
    out["nc1_tilde"] = np.trace(sigma_w) / np.trace(sigma_b)
    variances = (onehot.T @ (residuals**2).sum(axis=1)) / counts
    sq_dist = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    upper = np.triu_indices(k, 1)
    out["cdnv"] = np.mean(((variances[:, None] + variances[None, :]) / (2 * sq_dist))[upper])
    norms = np.linalg.norm(centred, axis=1)
    cosines = (centred @ centred.T) / np.outer(norms, norms)
    out["nc2_equinorm"] = norms.std() / norms.mean()
    out["nc2_equiangular"] = cosines[upper].std()
    out["nc2_maxangle"] = np.abs(cosines[upper] + 1 / (k - 1)).mean()
    centring = np.eye(k) - 1 / k
    out["nc2_etf"] = np.linalg.norm(cosines / np.linalg.norm(cosines) - centring / np.sqrt(k - 1))
    distances = (features**2).sum(1)[:, None] - 2 * features @ means.T + (means**2).sum(1)[None, :]
    ncc = distances.argmin(axis=1)
    out["ncc_accuracy"] = np.mean(ncc == labels)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    unit_sums = onehot.T @ unit
    gram = unit_sums @ unit_sums.T / np.outer(counts, counts)
    out["intra_cos_mean"] = np.diag(gram).mean()
    out["inter_cos_mean"] = gram[upper].mean()
    if weight is not None:
        logits = features @ weight.T + bias
        out["clf_accuracy"] = np.mean(logits.argmax(1) == labels)
        out["nc4_ncc_mismatch"] = np.mean(logits.argmax(1) != ncc)
        out["nc3_duality"] = np.linalg.norm(weight / np.linalg.norm(weight) - centred / np.linalg.norm(centred))
    return out


def main(path: str) -> None:
    with h5py.File(path, "r") as handle:
        labels = handle["labels"][()]
        classifier_layer = handle["classifier"].attrs["layer"] if "classifier" in handle else None
        for name in handle["layers"]:
            features = handle["layers"][name][()].astype(np.float64)
            weight = bias = None
            if name == classifier_layer:
                weight, bias = handle["classifier/weight"][()], handle["classifier/bias"][()]
            print(name, {key: round(float(value), 6) for key, value in metrics(features, labels, weight, bias).items()})


if __name__ == "__main__":
    main(sys.argv[1])
