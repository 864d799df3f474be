"""torchvision's resize of an image tensor: the reference for `resize.dtype`.

Usage: uint8_resize_ref.py FRAME.rgb WIDTH HEIGHT X Y CROP_W CROP_H OUT_W OUT_H MODE ANTIALIAS OUT [KIND]

Reads a raw HWC uint8 RGB frame, crops it, resizes the CHW tensor with
`torchvision.transforms.v2.functional.resize` (MODE `bilinear` or `nearest`) and writes the CHW
result raw to OUT. KIND says which tensor and which PyTorch kernel:

- `uint8` (default): the uint8 tensor on the float path (`ATEN_CPU_CAPABILITY=default`, see
  below); writes uint8.
- `float`: the same frame as a float32 tensor (values 0..255, not rounded), same kernels;
  writes float32 (little-endian).
- `avx2`: the uint8 tensor with `ATEN_CPU_CAPABILITY=avx2`: PyTorch's native uint8 kernel
  (fixed point, int16 weights); writes uint8. Fails unless the CPU capability really is AVX2.

torchvision 0.22 resizes uint8 bilinear natively only when `torch.backends.cpu.get_cpu_capability()`
is `AVX2`; otherwise it resizes in float, `round_()`s and casts back. `ATEN_CPU_CAPABILITY=default`
selects PyTorch's portable kernels (no fused multiply-add; the `AVX2`/`AVX512` builds of the float
kernels fuse them). One thread count is fixed (2) because PyTorch picks its non-antialiased
bilinear kernel by it: with one thread, 3-channel images take the channels-last kernel, whose
weight products round differently.
"""

import os
import sys

KIND = sys.argv[13] if len(sys.argv) > 13 else "uint8"
os.environ["ATEN_CPU_CAPABILITY"] = "avx2" if KIND == "avx2" else "default"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402


def main() -> None:
    frame, w, h, x, y, cw, ch, ow, oh, mode, aa, out = sys.argv[1:13]
    w, h, x, y, cw, ch, ow, oh = map(int, (w, h, x, y, cw, ch, ow, oh))
    torch.set_num_threads(2)
    capability = torch.backends.cpu.get_cpu_capability()
    want = "AVX2" if KIND == "avx2" else "NO AVX"
    assert capability == want, f"torch CPU capability {capability}, wanted {want}"
    img = np.fromfile(frame, dtype=np.uint8).reshape(h, w, 3)
    t = torch.from_numpy(img[y : y + ch, x : x + cw].copy()).permute(2, 0, 1).contiguous()
    if KIND == "float":
        t = t.to(torch.float32)
    interp = {"bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}[mode]
    r = F.resize(t, [oh, ow], interpolation=interp, antialias=aa == "1")
    assert r.dtype == t.dtype
    r.numpy().astype("<f4" if KIND == "float" else np.uint8).tofile(out)
    print(
        f"torch {torch.__version__}, cpu capability {capability}: {KIND} {mode} "
        f"antialias={aa} {cw}x{ch} -> {ow}x{oh}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
