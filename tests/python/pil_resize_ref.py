"""Pillow's resize of an 8-bit image: the reference for `resize.dtype = "uint8-pil"`.

Usage: pil_resize_ref.py FRAME.rgb WIDTH HEIGHT X Y CROP_W CROP_H OUT_W OUT_H COLOR OUT.u8

Reads a raw HWC uint8 RGB frame, crops it, converts it to grey with `convert("L")` when COLOR is
`grey` (else keeps RGB), resizes it with `Image.resize((OUT_W, OUT_H), Image.BILINEAR)` and
writes the result raw to OUT.u8 in CHW order.
"""

import sys

import numpy as np
import PIL
from PIL import Image


def main() -> None:
    frame, w, h, x, y, cw, ch, ow, oh, color, out = sys.argv[1:]
    w, h, x, y, cw, ch, ow, oh = map(int, (w, h, x, y, cw, ch, ow, oh))
    img = np.fromfile(frame, dtype=np.uint8).reshape(h, w, 3)
    im = Image.fromarray(np.ascontiguousarray(img[y : y + ch, x : x + cw]), "RGB")
    if color == "grey":
        im = im.convert("L")
    r = np.asarray(im.resize((ow, oh), Image.BILINEAR))
    chw = r[None] if r.ndim == 2 else r.transpose(2, 0, 1)
    np.ascontiguousarray(chw).tofile(out)
    print(f"Pillow {PIL.__version__}: {color} {cw}x{ch} -> {ow}x{oh}", file=sys.stderr)


if __name__ == "__main__":
    main()
