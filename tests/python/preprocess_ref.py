#!/usr/bin/env python3
"""Independent reference for reflex's camera preprocessing (runtime/src/preprocess.rs).

Reimplements, with numpy in float64 and PIL, what a PyTorch/torchvision training pipeline does to
a camera frame: decode to 8-bit RGB, crop, `Resize` on a float tensor (`F.interpolate`), scale to
[0, 1], normalize with mean/std, CHW. Written from the PyTorch/PIL definitions, not from the Rust
code, so that the Rust tests compare against something other than themselves:

- YUYV: BT.601 limited range, R = 1.164(Y-16) + 1.596(V-128), G = 1.164(Y-16) - 0.392(U-128)
  - 0.813(V-128), B = 1.164(Y-16) + 2.017(U-128), rounded half up and clamped (exact integers);
- MJPEG: decoded by PIL (libjpeg); colour -> grey by PIL's `convert("L")`;
- antialiased bilinear: PyTorch's `_upsample_bilinear2d_aa` weights, and checked here against
  PIL's own resampling of float ("F" mode) images, which uses the same filter;
- plain bilinear: `F.interpolate(mode="bilinear", align_corners=False)`;
- nearest: PyTorch's legacy `nearest` (its float32 index arithmetic).

usage: preprocess_ref.py CASES.json
       preprocess_ref.py --make-jpeg OUT.jpg WIDTH HEIGHT SUBSAMPLING QUALITY SEED

CASES.json: {"cases": [{"name", "frame" (raw bytes file), "width", "height", "format"
("yuyv" | "rgb24" | "grey" | "mjpeg"), "crop" (null or {"x", "y", "width", "height"}),
"resize": {"width", "height", "interpolation" ("bilinear" | "nearest"), "antialias"}, "color"
("rgb" | "bgr" | "grey"), "mean", "std", "out" (.npy path), optionally "make_jpeg":
{"subsampling", "quality", "seed"} to first write the frame as a synthetic JPEG}]}.
Each case's output is written to "out" as a float32 [C, H, W] array.

--make-jpeg writes a synthetic test scene as a JPEG (SUBSAMPLING: 444, 422 or 420).
"""

import io
import json
import sys


def usage(message):
    lines = __doc__[__doc__.index("usage:"):].split("\n\n")[0]
    print(f"preprocess_ref.py: {message}\n{lines}", file=sys.stderr)
    return 2


def decode(np, Image, data, width, height, fmt):
    """Frame bytes -> uint8 [H, W, 3] (colour) or [H, W] (grey)."""
    if fmt == "yuyv":
        a = np.frombuffer(data, np.uint8).reshape(height, width // 2, 4).astype(np.int64)
        y = np.empty((height, width), np.int64)
        y[:, 0::2] = a[:, :, 0]
        y[:, 1::2] = a[:, :, 2]
        u = np.repeat(a[:, :, 1], 2, axis=1) - 128
        v = np.repeat(a[:, :, 3], 2, axis=1) - 128
        c = 1164 * (y - 16)
        # Coefficients in thousandths; + 500 then floor division = round half up.
        r = (c + 1596 * v + 500) // 1000
        g = (c - 392 * u - 813 * v + 500) // 1000
        b = (c + 2017 * u + 500) // 1000
        return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
    if fmt == "rgb24":
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    if fmt == "grey":
        return np.frombuffer(data, np.uint8).reshape(height, width)
    if fmt == "mjpeg":
        im = Image.open(io.BytesIO(data))
        im.load()
        if im.size != (width, height):
            raise ValueError(f"JPEG is {im.size}, case says {width}x{height}")
        return np.asarray(im.convert("RGB"))
    raise ValueError(f"unknown format {fmt}")


def aa_weights(np, in_len, out_len):
    """[out, in] matrix of PyTorch's antialiased bilinear (triangle filter widened by the scale
    when downscaling; align_corners=False), in float64."""
    scale = in_len / out_len
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_len, in_len))
    for i in range(out_len):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_len)
        j = np.arange(xmin, xmax)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        if w.sum() != 0.0:
            w = w / w.sum()
        m[i, xmin:xmax] = w
    return m


def linear_weights(np, in_len, out_len):
    """[out, in] matrix of F.interpolate(mode="bilinear", align_corners=False), one axis."""
    scale = in_len / out_len
    m = np.zeros((out_len, in_len))
    for i in range(out_len):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_len - 1)
        i1 = min(i0 + 1, in_len - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        m[i, i0] += 1.0 - lam
        m[i, i1] += lam
    return m


def nearest_weights(np, in_len, out_len):
    """[out, in] selection matrix of PyTorch's legacy `nearest` (float32 index arithmetic)."""
    m = np.zeros((out_len, in_len))
    scale = np.float32(in_len) / np.float32(out_len)
    for i in range(out_len):
        if out_len == in_len:
            src = i
        elif out_len == 2 * in_len:
            src = i >> 1
        else:
            src = min(int(np.floor(np.float32(i) * scale)), in_len - 1)
        m[i, src] = 1.0
    return m


def resize(np, Image, plane, out_w, out_h, interpolation, antialias):
    """One float64 [H, W] plane -> [out_h, out_w]."""
    h, w = plane.shape
    if interpolation == "nearest":
        wy, wx = nearest_weights(np, h, out_h), nearest_weights(np, w, out_w)
    elif antialias:
        wy, wx = aa_weights(np, h, out_h), aa_weights(np, w, out_w)
    else:
        wy, wx = linear_weights(np, h, out_h), linear_weights(np, w, out_w)
    out = wy @ plane @ wx.T
    if interpolation == "bilinear" and antialias:
        # PIL resamples float images with the same filter (in double precision, stored as
        # float32): a second, independent implementation of the antialiased path.
        pil = np.asarray(
            Image.fromarray(plane.astype(np.float32)).resize(
                (out_w, out_h), Image.Resampling.BILINEAR
            ),
            dtype=np.float64,
        )
        diff = np.abs(pil - out).max()
        if diff > 1e-3:
            raise AssertionError(f"numpy and PIL antialiased bilinear differ by {diff} (of 255)")
    return out


def run_case(np, Image, case):
    if "make_jpeg" in case:
        j = case["make_jpeg"]
        make_jpeg(np, Image, case["frame"], case["width"], case["height"], j["subsampling"],
                  j["quality"], j["seed"])
    with open(case["frame"], "rb") as f:
        data = f.read()
    img = decode(np, Image, data, case["width"], case["height"], case["format"])
    color = case["color"]
    if color == "grey" and img.ndim == 3:
        img = np.asarray(Image.fromarray(img).convert("L"))
    crop = case.get("crop")
    if crop:
        img = img[crop["y"]:crop["y"] + crop["height"], crop["x"]:crop["x"] + crop["width"]]
    if img.ndim == 2:
        planes = [img] * (1 if color == "grey" else 3)
    else:
        planes = [img[:, :, c] for c in range(3)]
        if color == "bgr":
            planes = planes[::-1]
    rs = case["resize"]
    out = np.stack([
        resize(np, Image, p.astype(np.float64), rs["width"], rs["height"], rs["interpolation"],
               rs["antialias"])
        for p in planes
    ])
    mean = np.asarray(case["mean"], np.float64)[:, None, None]
    std = np.asarray(case["std"], np.float64)[:, None, None]
    np.save(case["out"], ((out / 255.0 - mean) / std).astype(np.float32))


def make_jpeg(np, Image, path, width, height, subsampling, quality, seed):
    """A camera-like scene: smooth gradients, a few hard-edged shapes, mild sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(xx / width * 3.1 + 0.5) * np.cos(yy / height * 2.3)
    g = 90 + 140 * (yy / height)
    b = 200 - 150 * (xx / width)
    img = np.stack([r, g, b], axis=-1)
    for _ in range(8):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        x1, y1 = x0 + rng.integers(20, width // 3), y0 + rng.integers(20, height // 3)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    cx, cy, rad = width * 0.6, height * 0.4, min(width, height) * 0.2
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2] = (250, 240, 30)
    img += rng.normal(0.0, 2.0, img.shape)
    im = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    sub = {"444": 0, "422": 1, "420": 2}[str(subsampling)]
    im.save(path, format="JPEG", quality=int(quality), subsampling=sub)


def main(argv):
    try:
        import numpy as np
        from PIL import Image
    except ImportError as e:
        print(f"preprocess_ref.py: {e}; needs numpy and pillow (scripts/setup.sh)", file=sys.stderr)
        return 3
    if len(argv) == 7 and argv[0] == "--make-jpeg":
        out, w, h, sub, q, seed = argv[1:]
        make_jpeg(np, Image, out, int(w), int(h), sub, int(q), int(seed))
        return 0
    if len(argv) != 1:
        return usage("expected CASES.json or --make-jpeg ...")
    with open(argv[0]) as f:
        cases = json.load(f)["cases"]
    for case in cases:
        try:
            run_case(np, Image, case)
        except Exception as e:
            print(f"preprocess_ref.py: case `{case.get('name')}`: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
