"""Attention rollout of an ONNX ViT policy through ONNX Runtime, the reference for
reflex-tools' `rollout` module (host-tools/tests/it/fidelity.rs).

Every Softmax node whose output is [1, heads, T, T] becomes a graph output (onnx's own
helpers), ONNX Runtime runs the graph on the given inputs, and the rollout of Abnar & Zuidema
(ACL 2020) is computed with numpy: per layer the heads' mean A, (A + I) / 2 with rows
renormalized, multiplied from the first layer on; row 0 without its first entry is written.

usage: attention_rollout_ref.py MODEL.onnx OUT.npy NAME=INPUT.npy [NAME=INPUT.npy ...]
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, out_path, *feeds = sys.argv[1:]
    model = onnx.load(model_path)
    softmaxes = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    for name in softmaxes:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    inputs = {}
    for f in feeds:
        name, path = f.split("=", 1)
        inputs[name] = np.load(path).astype(np.float32)
    outs = sess.run(softmaxes, inputs)
    layers = [a[0] for a in outs if a.ndim == 4 and a.shape[0] == 1 and a.shape[2] == a.shape[3]]
    if not layers:
        sys.exit("no attention Softmax of shape [1, heads, T, T] in " + model_path)
    t = layers[0].shape[-1]
    r = np.eye(t)
    for a in layers:
        m = a.astype(np.float64).mean(axis=0) + np.eye(t)
        m /= m.sum(axis=1, keepdims=True)
        r = m @ r
    np.save(out_path, r[0])
    print(
        f"{len(layers)} layers, {layers[0].shape[0]} heads, {t} tokens; "
        f"class token keeps {r[0, 0]:.4f}, largest patch share {r[0, 1:].max():.4f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
