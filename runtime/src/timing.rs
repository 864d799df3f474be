//! Fixed-size latency histograms for the loop's stages.
//!
//! Recording must not allocate or lock (it happens every tick), and a run may last hours, so
//! samples go into log-linear buckets (HDR-style: 32 sub-buckets per power of two, ~3% relative
//! resolution) sized at construction; percentiles come from the buckets at the end.

/// Sub-buckets per power of two.
const SUB: usize = 32;
const SUB_BITS: u32 = 5;
/// Powers of two covered: values up to 2^40 ns (~18 minutes).
const OCTAVES: usize = 40;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; SUB * (OCTAVES + 1)].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros(); // >= SUB_BITS
        let octave = (msb - SUB_BITS + 1) as usize;
        let sub = ((v >> (msb - SUB_BITS)) as usize) & (SUB - 1);
        (octave * SUB + sub).min(SUB * (OCTAVES + 1) - 1)
    }

    /// Lower edge of bucket `i`.
    fn value_of(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let octave = i / SUB;
        let sub = (i % SUB) as u64;
        (SUB as u64 + sub) << (octave - 1)
    }

    /// Upper edge of bucket `i` (exclusive).
    fn upper_of(i: usize) -> u64 {
        if i < SUB {
            return i as u64 + 1;
        }
        let octave = i / SUB;
        Self::value_of(i) + (1u64 << (octave - 1))
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` in [0, 1]: midpoint of the bucket holding it, clamped to the
    /// exact min/max seen.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = (Self::value_of(i) + Self::upper_of(i) - 1) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Non-empty buckets as `(lower, upper, count)`.
    pub fn bins(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (Self::value_of(i), Self::upper_of(i), c))
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// The stages of one tick, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    CaptureWait,
    Decode,
    Preprocess,
    Inference,
    PostProcess,
    Send,
    /// Whole tick, excluding inference when it runs on the worker thread.
    Tick,
    /// Start-to-start interval between ticks (jitter = its spread around the period).
    Period,
    /// Capture of an observation to the send of the first command computed from it.
    EndToEnd,
    /// An encoder + denoiser policy's encoder over the inference's `n_obs_steps` observations
    /// (one encoder run per observation step; part of `Inference`).
    Encoder,
    /// One denoiser call of an encoder + denoiser policy: the inference's denoiser time over
    /// its K calls (part of `Inference`).
    DenoiserStep,
    /// The accelerator's own time for one inference, measured on the device (TensorRT: CUDA
    /// events around `enqueueV3`), comparable to trtexec's "GPU Compute Time"; recorded by the
    /// model-only bench for backends that report it ([`crate::infer::policy::Policy::device_time_ms`]).
    GpuCompute,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::CaptureWait,
        Stage::Decode,
        Stage::Preprocess,
        Stage::Inference,
        Stage::Encoder,
        Stage::DenoiserStep,
        Stage::PostProcess,
        Stage::Send,
        Stage::Tick,
        Stage::Period,
        Stage::EndToEnd,
        Stage::GpuCompute,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::CaptureWait => "capture_wait",
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::PostProcess => "post_process",
            Stage::Send => "send",
            Stage::Tick => "tick",
            Stage::Period => "period",
            Stage::EndToEnd => "end_to_end",
            Stage::Encoder => "encoder",
            Stage::DenoiserStep => "denoiser_step",
            Stage::GpuCompute => "gpu_compute",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StageTimings {
    hists: [Histogram; Stage::ALL.len()],
}

impl StageTimings {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn record(&mut self, stage: Stage, ns: u64) {
        self.hists[stage as usize].record(ns);
    }
    pub fn get(&self, stage: Stage) -> &Histogram {
        &self.hists[stage as usize]
    }
    pub fn merge(&mut self, other: &StageTimings) {
        for (a, b) in self.hists.iter_mut().zip(other.hists.iter()) {
            a.merge(b);
        }
    }

    /// A human table: one line per stage with samples, in milliseconds.
    pub fn summary(&self) -> String {
        let ms = |v: Option<u64>| {
            v.map(|v| format!("{:9.3}", v as f64 / 1e6))
                .unwrap_or_else(|| format!("{:>9}", "-"))
        };
        let mut s = format!(
            "{:<13} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "stage (ms)", "n", "min", "median", "p99", "p99.9", "max"
        );
        for st in Stage::ALL {
            let h = self.get(st);
            if h.count() == 0 {
                continue;
            }
            s += &format!(
                "{:<13} {:>7} {} {} {} {} {}\n",
                st.name(),
                h.count(),
                ms(h.min()),
                ms(h.quantile(0.5)),
                ms(h.quantile(0.99)),
                ms(h.quantile(0.999)),
                ms(h.max())
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(997) {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            assert!(
                Histogram::value_of(i) <= v && v < Histogram::upper_of(i),
                "v={v} i={i}"
            );
            let width = Histogram::upper_of(i) - Histogram::value_of(i);
            assert!(
                width as f64 <= (v as f64 / 16.0).max(1.0),
                "v={v} width={width}"
            );
        }
    }

    #[test]
    fn quantiles_within_resolution() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let med = h.quantile(0.5).unwrap() as f64;
        assert!((med / 5_000_000.0 - 1.0).abs() < 0.04, "median {med}");
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.04, "p99 {p99}");
        assert_eq!(h.min(), Some(1000));
        assert_eq!(h.max(), Some(10_000_000));
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        assert_eq!(Histogram::new().quantile(0.5), None);
    }
}
