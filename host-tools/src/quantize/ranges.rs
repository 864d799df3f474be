//! Activation ranges from calibration data: the `amax` of each tensor, by max, percentile or
//! entropy (KL divergence, TensorRT's `IInt8EntropyCalibrator2` as pytorch-quantization
//! reimplements it).
//!
//! A [`Collector`] sees every calibration value of one tensor. It keeps the absolute maximum, and
//! for the histogram methods a histogram of `|x|` with a fixed bin width set by the first non-zero
//! batch (amax / 2048); later batches with a larger range append bins, and when there are more
//! than twice the target count, neighbouring bins are merged pairwise (width doubles). So no
//! calibration tensor is kept in memory and one pass over the frames is enough.

/// How a per-tensor range is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The largest `|x|` seen.
    MinMax,
    /// The given percentile (0..=100) of `|x|`.
    Percentile(f64),
    /// The clipping threshold minimizing KL(reference || int8-quantized) of the `|x|` histogram.
    Entropy,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile(_) => "percentile",
            Method::Entropy => "entropy",
        }
    }

    fn needs_histogram(self) -> bool {
        !matches!(self, Method::MinMax)
    }
}

/// Target number of histogram bins (pytorch-quantization's default).
const BINS: usize = 2048;
/// Quantized levels on one side of zero for int8 (the entropy search's target resolution).
const LEVELS: usize = 128;

#[derive(Debug, Clone)]
pub struct Collector {
    amax: f32,
    /// Histogram of |x|: bin `i` covers `[i * width, (i + 1) * width)`; the last bin also takes
    /// the exact maximum.
    hist: Option<Histogram>,
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    width: f32,
    counts: Vec<u64>,
    /// Zeros seen before the width was known (all-zero batches).
    pending_zeros: u64,
}

impl Histogram {
    fn add(&mut self, values: &[f32]) {
        let batch_max = values
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        if self.width == 0.0 {
            if batch_max == 0.0 {
                self.pending_zeros += values.len() as u64;
                return;
            }
            self.width = batch_max / BINS as f32;
            self.counts = vec![0; BINS];
            self.counts[0] = std::mem::take(&mut self.pending_zeros);
        }
        let mut needed = (batch_max / self.width) as usize + 1;
        while needed > 2 * BINS {
            // Merge pairs: the width doubles, every old bin lands in bin i / 2.
            let merged: Vec<u64> = self.counts.chunks(2).map(|c| c.iter().sum()).collect();
            self.counts = merged;
            self.width *= 2.0;
            needed = (batch_max / self.width) as usize + 1;
        }
        if needed > self.counts.len() {
            self.counts.resize(needed, 0);
        }
        let last = self.counts.len() - 1;
        for v in values.iter().filter(|v| v.is_finite()) {
            let i = ((v.abs() / self.width) as usize).min(last);
            self.counts[i] += 1;
        }
    }
}

impl Collector {
    pub fn new(method: Method) -> Self {
        Collector {
            amax: 0.0,
            hist: method.needs_histogram().then(Histogram::default),
        }
    }

    pub fn add(&mut self, values: &[f32]) {
        for v in values.iter().filter(|v| v.is_finite()) {
            self.amax = self.amax.max(v.abs());
        }
        if let Some(h) = self.hist.as_mut() {
            h.add(values);
        }
    }

    /// The observed largest |x|.
    pub fn max_abs(&self) -> f32 {
        self.amax
    }

    /// The calibrated range by `method` (never above the observed maximum).
    pub fn amax(&self, method: Method) -> f32 {
        let Some(h) = self.hist.as_ref().filter(|h| h.width > 0.0) else {
            return self.amax;
        };
        let edge = match method {
            Method::MinMax => return self.amax,
            Method::Percentile(p) => percentile_bin(&h.counts, p),
            Method::Entropy => entropy_bin(&h.counts),
        };
        (edge as f32 * h.width).min(self.amax)
    }
}

/// The upper edge (in bins) of the bin where the cumulative count reaches `p` percent.
fn percentile_bin(counts: &[u64], p: f64) -> usize {
    let total: u64 = counts.iter().sum();
    let target = (p.clamp(0.0, 100.0) / 100.0) * total as f64;
    let mut cum = 0u64;
    for (i, c) in counts.iter().enumerate() {
        cum += c;
        if cum as f64 >= target {
            return i + 1;
        }
    }
    counts.len()
}

/// TensorRT's entropy calibration on a histogram of |x|: for each candidate threshold `i` (in
/// bins, from 128 up), the reference distribution is the first `i` bins with everything above
/// folded into the last one; the candidate is those `i` bins merged into 128 levels and spread
/// back evenly over the non-empty bins. Returns the `i` of least KL divergence (the largest one
/// on ties), as pytorch-quantization's `_compute_amax_entropy` does, including its
/// `bins[0] = bins[1]` (the zero bin is dominated by ReLU zeros and would swamp the divergence).
/// Both distributions are smoothed as ONNX Runtime's and MXNet's calibrators do: without it,
/// every threshold whose last bin is empty but receives the folded outliers has an infinite
/// divergence, and a few far outliers force the full range.
fn entropy_bin(counts: &[u64]) -> usize {
    let n = counts.len();
    if n <= LEVELS {
        return n;
    }
    let mut bins: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    bins[0] = bins[1];
    // suffix[i] = sum of bins[i..].
    let mut suffix = vec![0.0; n + 1];
    for i in (0..n).rev() {
        suffix[i] = suffix[i + 1] + bins[i];
    }
    let stride = (n / 1024).max(1);
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0.0; n];
    let mut q = vec![0.0; n];
    let mut i = LEVELS;
    while i <= n {
        p[..i].copy_from_slice(&bins[..i]);
        p[i - 1] += suffix[i];
        // Level of bin j: floor(j * 128 / i), as np.digitize over linspace(0, i, 129).
        let mut j = 0;
        while j < i {
            let level = j * LEVELS / i;
            let mut end = j;
            let (mut sum, mut nonzero) = (0.0, 0usize);
            while end < i && end * LEVELS / i == level {
                if bins[end] != 0.0 {
                    sum += bins[end];
                    nonzero += 1;
                }
                end += 1;
            }
            let each = if nonzero > 0 {
                sum / nonzero as f64
            } else {
                0.0
            };
            for k in j..end {
                q[k] = if bins[k] != 0.0 { each } else { 0.0 };
            }
            j = end;
        }
        let kl = match (smooth(&p[..i]), smooth(&q[..i])) {
            (Some(ps), Some(qs)) => ps
                .iter()
                .zip(&qs)
                .filter(|(pk, _)| **pk > 0.0)
                .map(|(pk, qk)| pk * (pk / qk).ln())
                .sum(),
            _ => f64::INFINITY,
        };
        if kl <= best.0 {
            best = (kl, i);
        }
        i += stride;
    }
    best.1
}

/// Smooths counts `h` as ONNX Runtime's `smooth_distribution` does (1e-4 added to each empty
/// bin, taken evenly from the others) and normalizes them to a distribution; `None` if `h` has
/// no mass or too little to move.
fn smooth(h: &[f64]) -> Option<Vec<f64>> {
    const EPS: f64 = 1e-4;
    let zeros = h.iter().filter(|&&v| v == 0.0).count();
    let nonzero = h.len() - zeros;
    if nonzero == 0 {
        return None;
    }
    let take = EPS * zeros as f64 / nonzero as f64;
    let out: Vec<f64> = h
        .iter()
        .map(|&v| if v == 0.0 { EPS } else { v - take })
        .collect();
    let total: f64 = out.iter().sum();
    (out.iter().all(|&v| v > 0.0) && total > 0.0).then(|| out.iter().map(|v| v / total).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_is_the_largest_magnitude() {
        let mut c = Collector::new(Method::MinMax);
        c.add(&[0.5, -3.0, 1.0]);
        c.add(&[2.0, f32::NAN]);
        assert_eq!(c.amax(Method::MinMax), 3.0);
    }

    #[test]
    fn percentile_clips_rare_outliers() {
        let mut c = Collector::new(Method::Percentile(99.0));
        // 990 values in [0, 1), 10 outliers at 100.
        let mut v: Vec<f32> = (0..990).map(|i| i as f32 / 990.0).collect();
        v.extend([100.0; 10]);
        c.add(&v);
        let a = c.amax(Method::Percentile(99.0));
        assert!((0.95..1.1).contains(&a), "{a}");
        assert_eq!(c.amax(Method::Percentile(100.0)), 100.0);
        assert_eq!(c.max_abs(), 100.0);
    }

    #[test]
    fn histogram_grows_and_merges_without_losing_counts() {
        let mut h = Histogram::default();
        h.add(&[0.0, 0.0]);
        h.add(&[1.0, 0.5]);
        h.add(&[10.0]); // 10x the first range: bins are merged to stay <= 2 * BINS
        assert!(h.counts.len() <= 2 * BINS, "{}", h.counts.len());
        assert_eq!(h.counts.iter().sum::<u64>(), 5);
        assert_eq!(h.counts[0], 2);
        let top = h.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        assert!(((top as f32 * h.width)..=((top + 1) as f32 * h.width)).contains(&10.0));
    }

    #[test]
    fn entropy_ignores_a_long_sparse_tail_but_keeps_the_bulk() {
        // A Gaussian-like bulk within 1.0 and a few far outliers up to 20: the entropy
        // threshold clips the tail (well below 20) but keeps the bulk (above ~0.8).
        let mut c = Collector::new(Method::Entropy);
        let mut v = vec![];
        let mut s = 12345u32;
        for _ in 0..200_000 {
            // Sum of uniforms ~ normal, scaled to std ~0.25.
            let mut x = 0f32;
            for _ in 0..4 {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                x += (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            }
            v.push(x * 0.43);
        }
        v.extend([20.0, -15.0, 12.0]);
        c.add(&v);
        let a = c.amax(Method::Entropy);
        assert!((0.6..1.5).contains(&a), "{a}");
        assert_eq!(c.amax(Method::MinMax), 20.0);
    }
}
