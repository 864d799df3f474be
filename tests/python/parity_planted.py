#!/usr/bin/env python3
"""Training-dataloader tensors with planted mistakes, for `reflex-tools parity`'s tests.

Written from the torchvision/PIL definitions (the resize weights are preprocess_ref.py's, which
checks them against PIL), not from reflex's code. From one RGB frame (read by PIL) and a camera's
preprocessing spec, writes one float32 tensor per pipeline, OUT/NAME/frame.npy:

- correct: crop, torchvision Resize on a float tensor (antialiased bilinear), /255, mean/std, CHW;
- channel_swap: the frame loaded as BGR (OpenCV's imread), then the same pipeline;
- crop_off_by_one: the crop one pixel to the right;
- missing_normalization: no mean/std (pixels 0-1);
- scale_0_255: mean/std applied to 0-255 pixels (no /255);
- nearest: torchvision's NEAREST (PyTorch's legacy nearest) instead of bilinear;
- uint8_resize: PIL's Image.resize(BILINEAR) on the 8-bit image (rounded), then /255, mean/std;
- hwc: the correct tensor left HWC.

usage: parity_planted.py FRAME.png SPEC.json OUT_DIR
SPEC.json: {"crop": {"x", "y", "width", "height"}, "resize": {"width", "height"}, "mean", "std"}
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if len(argv) != 3:
        print(__doc__[__doc__.index("usage:"):], file=sys.stderr)
        return 2
    import numpy as np
    from PIL import Image
    import preprocess_ref as ref

    frame, spec_path, out = argv
    with open(spec_path) as f:
        spec = json.load(f)
    img = np.asarray(Image.open(frame).convert("RGB"))
    c, rs = spec["crop"], spec["resize"]
    mean = np.asarray(spec["mean"], np.float64)[:, None, None]
    std = np.asarray(spec["std"], np.float64)[:, None, None]

    def crop(dx=0):
        return img[c["y"]:c["y"] + c["height"], c["x"] + dx:c["x"] + dx + c["width"]]

    def resized(im, interpolation="bilinear"):
        return np.stack([
            ref.resize(np, Image, im[:, :, k].astype(np.float64), rs["width"], rs["height"],
                       interpolation, True)
            for k in range(3)
        ])

    def norm(x255):
        return (x255 / 255.0 - mean) / std

    pil8 = np.asarray(Image.fromarray(np.ascontiguousarray(crop())).resize(
        (rs["width"], rs["height"]), Image.Resampling.BILINEAR), np.float64).transpose(2, 0, 1)
    cases = {
        "correct": norm(resized(crop())),
        "channel_swap": norm(resized(crop()[:, :, ::-1])),
        "crop_off_by_one": norm(resized(crop(1))),
        "missing_normalization": resized(crop()) / 255.0,
        "scale_0_255": (resized(crop()) - mean) / std,
        "nearest": norm(resized(crop(), "nearest")),
        "uint8_resize": norm(pil8),
        "hwc": norm(resized(crop())).transpose(1, 2, 0),
    }
    for name, t in cases.items():
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "frame.npy"), np.ascontiguousarray(t).astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
