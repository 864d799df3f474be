#!/usr/bin/env python3
"""A second, independent implementation of the reference policies, in numpy (float64).

torchvision's ResNet-18 and timm's vit_small_patch16_224 forward passes, re-written from their
PyTorch definitions and fed a state dict saved with safetensors under the same names a
`save_file(policy.state_dict())` would use. Comparing it with the graphs written in Rust checks
their topology, parameter names and layouts, and BatchNorm folding without PyTorch on the machine.

usage: numpy_ref.py ARCH.json CHECKPOINT.safetensors [NAME=INPUT.npy ...] OUT.npy

ARCH.json is a serialized `PolicyArch`; OUT.npy receives the `action` output.
"""

import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file


def conv2d(x, w, b=None, stride=1, pad=0):
    """x [C, H, W], w [O, C, k, k] (torch.nn.Conv2d, no groups or dilation)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    c, ho, wo = win.shape[:3]
    cols = win.transpose(1, 2, 0, 3, 4).reshape(ho * wo, c * k * k)
    y = (cols @ w.reshape(w.shape[0], -1).T).T.reshape(w.shape[0], ho, wo)
    return y if b is None else y + b[:, None, None]


def batch_norm(x, p, name):
    """Eval-mode torch.nn.BatchNorm2d, eps 1e-5."""
    mean, var = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    scale = p[f"{name}.weight"] / np.sqrt(var + 1e-5)
    return (x - mean[:, None, None]) * scale[:, None, None] + p[f"{name}.bias"][:, None, None]


def relu(x):
    return np.maximum(x, 0)


def resnet18(img, p):
    """torchvision.models.resnet18 up to avgpool + flatten."""
    x = relu(batch_norm(conv2d(img, p["conv1.weight"], stride=2, pad=3), p, "bn1"))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(3, 4))
    for layer, stride in [(1, 1), (2, 2), (3, 2), (4, 2)]:
        for block in range(2):
            n = f"layer{layer}.{block}"
            s = stride if block == 0 else 1
            out = relu(batch_norm(conv2d(x, p[f"{n}.conv1.weight"], stride=s, pad=1), p, f"{n}.bn1"))
            out = batch_norm(conv2d(out, p[f"{n}.conv2.weight"], pad=1), p, f"{n}.bn2")
            if f"{n}.downsample.0.weight" in p:
                x = batch_norm(conv2d(x, p[f"{n}.downsample.0.weight"], stride=s), p, f"{n}.downsample.1")
            x = relu(out + x)
    return x.mean(axis=(1, 2))


def layer_norm(x, p, name, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


ERF = np.vectorize(math.erf, otypes=[np.float64])


def vit_small(img, p, heads=6):
    """timm vit_small_patch16_224, global_pool='token', head removed."""
    x = conv2d(img, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=16)
    x = x.reshape(x.shape[0], -1).T
    x = np.concatenate([p["cls_token"][0], x]) + p["pos_embed"][0]
    n, d = x.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in p:
        b = f"blocks.{i}"
        qkv = linear(layer_norm(x, p, f"{b}.norm1"), p, f"{b}.attn.qkv")
        q, k, v = qkv.reshape(n, 3, heads, d // heads).transpose(1, 2, 0, 3)
        logits = (q * (d // heads) ** -0.5) @ k.transpose(0, 2, 1)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        o = (attn @ v).transpose(1, 0, 2).reshape(n, d)
        x = x + linear(o, p, f"{b}.attn.proj")
        h = linear(layer_norm(x, p, f"{b}.norm2"), p, f"{b}.mlp.fc1")
        h = 0.5 * h * (1 + ERF(h / math.sqrt(2)))
        x = x + linear(h, p, f"{b}.mlp.fc2")
        i += 1
    return layer_norm(x, p, "norm")[0]


def sub(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        arch = json.load(f)
    state = {k: v.astype(np.float64) for k, v in load_file(argv[2]).items()}
    inputs = {}
    for pair in argv[3:-1]:
        name, _, path = pair.partition("=")
        inputs[name] = np.load(path).astype(np.float64)
    encoder = {"resnet18": resnet18, "vit-s16": vit_small}[arch["encoder"]]
    features = []
    for cam in arch["cameras"]:
        prefix = "encoder." if arch["shared_encoder"] else f"encoders.{cam}."
        features.append(encoder(inputs[f"image.{cam}"][0], sub(state, prefix)))
    if arch["state_dim"] > 0:
        features.append(inputs["state"][0])
    x = np.concatenate(features)
    head = sub(state, "head.")
    layers = len(arch["hidden"]) + 1
    for i in range(layers):
        x = linear(x, head, str(2 * i))
        if i + 1 < layers:
            x = relu(x)
    if arch["head"]["kind"] == "chunk":
        x = x.reshape(arch["head"]["horizon"], arch["action_dim"])
    np.save(argv[-1], x[None].astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
