"""Deterministic weights for LeRobot policies, bit for bit the same as Rust's
`reflex_testkit::lerobot_weights` (testkit/src/lerobot_weights.rs).

Element `i` (flat, row-major) of a tensor named `name` with shape `shape` is `value(name, shape, i)`:
FNV-1a 64 of the name, plus the index (wrapping), through SplitMix64's output function; the top 24
bits give `u` in [0, 1). Computed in float64, cast to float32. Batch-norm statistics stay positive,
other vectors small, matrices LeCun-uniform in fan-in = product of all dims but the first.
Integer tensors (`num_batches_tracked`) are 0.
"""

import numpy as np

_MASK = (1 << 64) - 1


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & _MASK
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, elementwise over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def unit(name: str, n: int) -> np.ndarray:
    """u in [0, 1) for elements 0..n of tensor `name`, float64."""
    with np.errstate(over="ignore"):
        x = np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64)
    return (splitmix64(x) >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def values(name: str, shape) -> np.ndarray:
    """Every element of the tensor, float32, with `shape`."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = unit(name, n)
    if name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("running_mean"):
        v = 0.2 * (u - 0.5)
    elif len(shape) <= 1:
        v = 0.8 + 0.4 * u if name.endswith("weight") else 0.1 * (u - 0.5)
    else:
        fan_in = max(int(np.prod(shape[1:], dtype=np.int64)), 1)
        v = (2.0 * u - 1.0) * np.sqrt(3.0 / fan_in)
    return v.astype(np.float32).reshape(shape)


def fill(module, keep=()) -> None:
    """Overwrites every tensor of `module.state_dict()` in place: floats by `values`, integers 0.

    Tensors whose name ends with one of `keep` are left as the module built them (fixed buffers
    such as Diffusion Policy's `SpatialSoftmax.pos_grid`).
    """
    import torch

    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith(tuple(keep)):
                continue
            if t.is_floating_point():
                t.copy_(torch.from_numpy(values(name, t.shape)))
            else:
                t.zero_()


if __name__ == "__main__":
    # The known values checked by the Rust test (testkit/src/lerobot_weights.rs).
    for name, shape, i in [
        ("a", [4], 0),
        ("diffusion.unet.final_conv.1.weight", [2, 64, 1], 5),
        ("x.running_var", [8], 3),
        ("x.running_mean", [8], 7),
        ("model.action_head.bias", [14], 2),
    ]:
        print(name, shape, i, repr(float(values(name, shape).reshape(-1)[i])))
