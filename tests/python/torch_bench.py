#!/usr/bin/env python3
"""Times PyTorch eager (CPU) on an ONNX model converted with onnx2torch: median ms per run.

usage: torch_bench.py MODEL.onnx THREADS RUNS
Inputs are random (fixed seed) with the model's static shapes, run under torch.inference_mode()
with torch.set_num_threads(THREADS). Prints one line: `median_ms=X`. Exits 3 with the reason when
torch or onnx2torch is missing. Used by `cargo bench --workspace --bench tract_vs_ort`.
"""
import statistics
import sys
import time


def main():
    path, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        import numpy as np
        import onnx
        import torch
        from onnx2torch import convert
    except ImportError as e:
        print(f"{e} (pip install torch --index-url https://download.pytorch.org/whl/cpu; pip install onnx2torch)", file=sys.stderr)
        return 3
    torch.set_num_threads(threads)
    model = onnx.load(path)
    net = convert(model).eval()
    rng = np.random.default_rng(0)
    init = {t.name for t in model.graph.initializer}
    feeds = []
    for i in model.graph.input:
        if i.name in init:
            continue
        shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        feeds.append(torch.from_numpy(rng.standard_normal(shape).astype(np.float32)))
    with torch.inference_mode():
        for _ in range(3):
            net(*feeds)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            net(*feeds)
            times.append((time.perf_counter() - t) * 1e3)
    print(f"median_ms={statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
