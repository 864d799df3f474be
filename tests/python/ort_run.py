#!/usr/bin/env python3
"""Checks ONNX models with the full ONNX checker and runs them with ONNX Runtime (CPU).

This is the independent reference the Rust tests compare tract against: a graph we write by hand
is only as good as another runtime's agreement with it.

usage: ort_run.py MODEL.onnx [NAME=INPUT.npy ...] OUTDIR [--and MODEL.onnx ... OUTDIR ...]

Every output of a model is written as OUTDIR/<output name>.npy. Several models can be given in one
call, separated by `--and`, to pay Python's and ONNX Runtime's start-up once.
"""

import os
import sys
import time


def usage(message):
    print(f"ort_run.py: {message}\n{__doc__.split('usage: ')[1].splitlines()[0]}", file=sys.stderr)
    return 2


def split_jobs(args):
    jobs, job = [], []
    for arg in args:
        if arg == "--and":
            jobs.append(job)
            job = []
        else:
            job.append(arg)
    jobs.append(job)
    return jobs


def run_job(job, np, onnx, ort):
    model, outdir, pairs = job[0], job[-1], job[1:-1]
    feeds = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{model}: input `{pair}` is not NAME=FILE.npy")
        feeds[name] = np.load(path, allow_pickle=False)
    start = time.perf_counter()
    onnx.checker.check_model(model, full_check=True)
    checked = time.perf_counter()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    wanted = sorted(i.name for i in session.get_inputs())
    if sorted(feeds) != wanted:
        raise ValueError(f"{model}: inputs given {sorted(feeds)}, the graph has {wanted}")
    loaded = time.perf_counter()
    outputs = session.run(None, feeds)
    ran = time.perf_counter()
    os.makedirs(outdir, exist_ok=True)
    for info, value in zip(session.get_outputs(), outputs):
        np.save(os.path.join(outdir, f"{info.name}.npy"), value)
    print(
        f"ort_run: {os.path.relpath(model, os.path.dirname(os.path.dirname(model)))}: check {checked - start:.2f}s, "
        f"session {loaded - checked:.2f}s, run {ran - loaded:.3f}s",
        file=sys.stderr,
    )


def main(argv):
    jobs = split_jobs(argv[1:])
    if any(len(job) < 2 for job in jobs):
        return usage("each job needs a model and an output directory")
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        print(f"ort_run.py: {e}: install with `pip install onnx onnxruntime numpy`", file=sys.stderr)
        return 3
    for job in jobs:
        try:
            run_job(job, np, onnx, ort)
        except Exception as e:  # one line naming the model, not a traceback, for the Rust test
            print(f"ort_run.py: {job[0]}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
