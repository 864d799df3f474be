#!/usr/bin/env python3
"""The training frameworks' normalization formulas, written out as their sources have them.

A second, independent implementation of what `Normalization::affine` (models/src/manifest.rs)
must reproduce, in numpy with each framework's arithmetic:

- LeRobot 0.6.1, `src/lerobot/processor/normalize_processor.py`,
  `NormalizerProcessorStep._apply_transform`: float32 tensors (as torch keeps them), eps = 1e-8;
  MEAN_STD `(x - mean) / (std + eps)` with the inverse `x * std + mean` (no epsilon), MIN_MAX /
  QUANTILES / QUANTILE10 with a zero denominator replaced by eps.
- openpi, `src/openpi/transforms.py`, `Normalize._normalize{,_quantile}` and
  `Unnormalize._unnormalize{,_quantile}`: float64 statistics (numpy arrays read from
  norm_stats.json), epsilon 1e-6 always added.
- plain: the textbook formulas without epsilon (what reflex bundles meant before conventions).

usage: normalize_ref.py CASES.json OUT.json

CASES.json: a list of {"convention", "kind", "stats": {name: [values]}, "x": [[...]], "y": [[...]]}
(x: physical rows to normalize, y: normalized rows to unnormalize, each row one value per
dimension). OUT.json: a list of {"normalized": [[...]], "unnormalized": [[...]]} in float64.
"""

import json
import sys

import numpy as np

RANGE_STATS = {"min_max": ("min", "max"), "quantile": ("q01", "q99"), "quantile10": ("q10", "q90")}


def lerobot(kind, stats, tensor, inverse):
    eps = 1e-8
    st = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
    tensor = np.asarray(tensor, dtype=np.float32)
    if kind == "mean_std":
        mean, std = st["mean"], st["std"]
        denom = std + eps
        if inverse:
            return tensor * std + mean
        return (tensor - mean) / denom
    lo_name, hi_name = RANGE_STATS[kind]
    lo, hi = st[lo_name], st[hi_name]
    denom = hi - lo
    denom = np.where(denom == 0, np.float32(eps), denom).astype(np.float32)
    if kind == "min_max":
        if inverse:
            return (tensor + 1) / 2 * denom + lo
        return 2 * (tensor - lo) / denom - 1
    if inverse:
        return (tensor + 1.0) * denom / 2.0 + lo
    return 2.0 * (tensor - lo) / denom - 1.0


def openpi(kind, stats, x, inverse):
    st = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if kind == "mean_std":
        if inverse:
            return x * (st["std"][..., :n] + 1e-6) + st["mean"][..., :n]
        mean, std = st["mean"][..., :n], st["std"][..., :n]
        return (x - mean) / (std + 1e-6)
    if kind != "quantile":
        raise ValueError(f"openpi has no {kind} normalization")
    q01, q99 = st["q01"][..., :n], st["q99"][..., :n]
    if inverse:
        return (x + 1.0) / 2.0 * (q99 - q01 + 1e-6) + q01
    return (x - q01) / (q99 - q01 + 1e-6) * 2.0 - 1.0


def plain(kind, stats, x, inverse):
    st = {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
    x = np.asarray(x, dtype=np.float64)
    if kind == "mean_std":
        return x * st["std"] + st["mean"] if inverse else (x - st["mean"]) / st["std"]
    lo_name, hi_name = RANGE_STATS[kind]
    lo, hi = st[lo_name], st[hi_name]
    if inverse:
        return (x + 1.0) / 2.0 * (hi - lo) + lo
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def main():
    cases_path, out_path = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    out = []
    for c in cases:
        fn = {"lerobot": lerobot, "openpi": openpi, "plain": plain}[c["convention"]]
        out.append(
            {
                "normalized": np.asarray(fn(c["kind"], c["stats"], c["x"], False), np.float64).tolist(),
                "unnormalized": np.asarray(fn(c["kind"], c["stats"], c["y"], True), np.float64).tolist(),
            }
        )
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
