"""torchvision's resize of a uint8 image tensor, the reference for `resize.dtype = "uint8"`.

Usage: uint8_resize_ref.py FRAME.rgb WIDTH HEIGHT X Y CROP_W CROP_H OUT_W OUT_H MODE ANTIALIAS OUT.u8

Reads a raw HWC uint8 RGB frame, crops it, resizes the CHW uint8 tensor with
`torchvision.transforms.v2.functional.resize` (MODE `bilinear` or `nearest`) and writes the CHW
uint8 result raw to OUT.u8.

torchvision 0.22 resizes uint8 bilinear natively (PyTorch's Pillow-SIMD-style fixed-point
kernel) only when `torch.backends.cpu.get_cpu_capability()` is `AVX2`; otherwise it resizes in
float, `round_()`s and casts back. `ATEN_CPU_CAPABILITY=default` (set here unless the caller set
it) makes it take the latter path on every machine: the one `resize.dtype = "uint8"` reproduces.
"""

import os
import sys

os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402


def main() -> None:
    frame, w, h, x, y, cw, ch, ow, oh, mode, aa, out = sys.argv[1:]
    w, h, x, y, cw, ch, ow, oh = map(int, (w, h, x, y, cw, ch, ow, oh))
    img = np.fromfile(frame, dtype=np.uint8).reshape(h, w, 3)
    t = torch.from_numpy(img[y : y + ch, x : x + cw].copy()).permute(2, 0, 1).contiguous()
    interp = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}[mode]
    r = F.resize(t, [oh, ow], interpolation=interp, antialias=aa == "1")
    assert r.dtype == torch.uint8
    r.numpy().tofile(out)
    print(
        f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}: "
        f"{mode} antialias={aa} {cw}x{ch} -> {ow}x{oh}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
