//! Deterministic weights for LeRobot policies, reproducible bit for bit in Python
//! (`scripts/lerobot/weights.py`): every element of a tensor named `name` with shape `shape` at flat
//! (row-major) index `i` is `value(name, shape, i)`, computed in f64 and cast to f32.
//! Hash: FNV-1a 64 of the name, plus the index, through SplitMix64 (Steele et al. 2014); the top 24 bits
//! give a uniform `u` in [0, 1). Batch-norm statistics stay positive, other vectors small, matrices are
//! LeCun-uniform in fan-in = product of all dims but the first, so deep networks keep O(1) activations.

/// FNV-1a, 64-bit (http://www.isthe.com/chongo/tech/comp/fnv/).
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's output function of `x` (one step from state `x`).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) for element `i` of tensor `name`, 24 bits of resolution.
pub fn unit(name: &str, i: u64) -> f64 {
    (splitmix64(fnv1a64(name).wrapping_add(i)) >> 40) as f64 / (1u64 << 24) as f64
}

/// The value of element `i` of tensor `name` with `shape`.
pub fn value(name: &str, shape: &[usize], i: u64) -> f64 {
    let u = unit(name, i);
    if name.ends_with("running_var") {
        0.5 + u
    } else if name.ends_with("running_mean") {
        0.2 * (u - 0.5)
    } else if shape.len() <= 1 {
        if name.ends_with("weight") {
            0.8 + 0.4 * u
        } else {
            0.1 * (u - 0.5)
        }
    } else {
        let fan_in = shape[1..].iter().product::<usize>().max(1) as f64;
        (2.0 * u - 1.0) * (3.0 / fan_in).sqrt()
    }
}

/// Every element of a tensor, as f32.
pub fn tensor(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| value(name, shape, i) as f32)
        .collect()
}
