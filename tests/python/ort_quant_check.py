#!/usr/bin/env python3
"""Runs an fp32 model and its quantized form (fp16 or int8 QDQ) with ONNX Runtime (CPU) on the
same held-out inputs, and compares them with tract's outputs for the quantized form.

ONNX Runtime is the independent reference: a quantized graph that one runtime reads differently
from another (tract computed an ORT-quantized ViT-S QDQ graph 2.7 away from ORT in earlier work)
must be caught per backend, not assumed.

usage: ort_quant_check.py FP32.onnx QUANT.onnx HELD_OUT_DIR TRACT_DIR

HELD_OUT_DIR/<i>/<input name>.npy are the network inputs of held-out sample i (as
`reflex-tools quantize --save-held-out` writes them); TRACT_DIR/<i>.npy is tract's output of the
quantized model for sample i (as `reflex-tools infer` writes it). Both models pass the full ONNX
checker first. Prints one JSON object on stdout (maxima of absolute differences over every
output value, normalized action units):

  ort_quant_vs_tract_quant   the two runtimes on the quantized graph
  ort_quant_vs_ort_fp32      the quantization error as ONNX Runtime sees it
  tract_quant_vs_ort_fp32    the quantization error of tract's result against ORT's fp32
  samples, quant_types       what was compared (element types of the quantized initializers)
"""

import json
import os
import sys


def main(argv):
    if len(argv) != 5:
        print(__doc__.split("usage: ")[1].splitlines()[0], file=sys.stderr)
        return 2
    fp32_path, quant_path, held_dir, tract_dir = argv[1:]
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        print(f"ort_quant_check.py: {e}: install with `pip install onnx onnxruntime numpy`", file=sys.stderr)
        return 3
    try:
        for path in (fp32_path, quant_path):
            onnx.checker.check_model(path, full_check=True)
        quant = onnx.load(quant_path)
        types = sorted({onnx.TensorProto.DataType.Name(t.data_type) for t in quant.graph.initializer})
        options = ort.SessionOptions()
        options.log_severity_level = 3
        sessions = [
            ort.InferenceSession(p, options, providers=["CPUExecutionProvider"])
            for p in (fp32_path, quant_path)
        ]
        samples = sorted((d for d in os.listdir(held_dir) if d.isdigit()), key=int)
        if not samples:
            raise ValueError(f"no sample directories in {held_dir}")
        worst = {"ort_quant_vs_tract_quant": 0.0, "ort_quant_vs_ort_fp32": 0.0, "tract_quant_vs_ort_fp32": 0.0}
        for s in samples:
            feeds = {}
            for i in sessions[0].get_inputs():
                feeds[i.name] = np.load(os.path.join(held_dir, s, f"{i.name}.npy"), allow_pickle=False)
            ref = sessions[0].run(None, feeds)[0].astype(np.float64)
            q = sessions[1].run(None, feeds)[0].astype(np.float64)
            t = np.load(os.path.join(tract_dir, f"{s}.npy"), allow_pickle=False).astype(np.float64)
            if not (ref.shape == q.shape == t.shape):
                raise ValueError(f"sample {s}: shapes fp32 {ref.shape}, quantized {q.shape}, tract {t.shape}")
            for key, a, b in (
                ("ort_quant_vs_tract_quant", q, t),
                ("ort_quant_vs_ort_fp32", q, ref),
                ("tract_quant_vs_ort_fp32", t, ref),
            ):
                worst[key] = max(worst[key], float(np.max(np.abs(a - b))))
        worst["samples"] = len(samples)
        worst["quant_types"] = types
        print(json.dumps(worst))
    except Exception as e:  # one line naming the model, not a traceback, for the Rust test
        print(f"ort_quant_check.py: {quant_path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
