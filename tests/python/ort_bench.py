#!/usr/bin/env python3
"""Times ONNX Runtime (CPUExecutionProvider) on a model: median ms per run.

usage: ort_bench.py MODEL.onnx THREADS RUNS
Inputs are random (fixed seed) with the model's static shapes. Prints one line: `median_ms=X`.
Used by `cargo bench -p reflex-runtime --bench tract_vs_ort` to compare against tract in the same
run, on the same file.
"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    path, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
        for i in sess.get_inputs()
    }
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    print(f"median_ms={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
