//! Fixed-size latency histograms for the loop's stages.
//!
//! Recording must not allocate or lock (it happens every tick), and a run may last hours, so
//! samples go into an HDR histogram (the `hdrhistogram` crate, a port of Gil Tene's
//! HdrHistogram) sized at construction: 1 ns to 2^40 ns (~18 minutes) at 3 significant digits,
//! so a percentile is within 0.1% of the sample it stands for (about 50 us at a 50 ms period).
//! The exact minimum, maximum and sum are kept beside it.

/// Largest value tracked, ns (~18 minutes); larger samples count as this value in the
/// percentiles (the exact maximum is kept apart).
const HIGHEST_NS: u64 = 1 << 40;
/// Significant decimal digits kept per value: 3 -> 0.1% relative resolution.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram, ns: counts per HDR bucket, plus the exact min, max and sum.
///
/// Memory is allocated once in [`Histogram::new`] (about 250 KiB); [`Histogram::record`] never
/// allocates.
#[derive(Debug, Clone)]
pub struct Histogram {
    hist: hdrhistogram::Histogram<u64>,
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
    /// An empty histogram (allocates its buckets, about 250 KiB).
    pub fn new() -> Self {
        Histogram {
            hist: hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one sample, ns. Samples over ~18 minutes count as that in the percentiles.
    pub fn record(&mut self, v: u64) {
        self.hist.saturating_record(v);
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }
    /// The smallest sample, ns, exactly (`None` when empty).
    pub fn min(&self) -> Option<u64> {
        (self.count() > 0).then_some(self.min)
    }
    /// The largest sample, ns, exactly (`None` when empty).
    pub fn max(&self) -> Option<u64> {
        (self.count() > 0).then_some(self.max)
    }
    /// The mean sample, ns, from the exact sum (`None` when empty).
    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.sum as f64 / self.count() as f64)
    }

    /// The value at quantile `q` in [0, 1]: the largest value equivalent (within the 0.1%
    /// resolution) to the sample of rank `max(1, ceil(q n))`, clamped to the exact min/max seen
    /// (so it errs high, never low, by at most the resolution); `q = 1` is the exact maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count() == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        Some(
            self.hist
                .value_at_quantile(q.max(0.0))
                .clamp(self.min, self.max),
        )
    }

    /// Non-empty buckets as `(lower, upper, count)`, `upper` exclusive, in increasing order.
    pub fn bins(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.hist.iter_recorded().map(|v| {
            let x = v.value_iterated_to();
            (
                self.hist.lowest_equivalent(x),
                self.hist.next_non_equivalent(x),
                v.count_at_value(),
            )
        })
    }

    /// Adds `other`'s samples to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        // Both have the same bounds, so every value of `other` fits: `add` cannot fail.
        self.hist
            .add(&other.hist)
            .expect("histograms of the same bounds add");
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
    fn bins_are_ordered_disjoint_and_tight() {
        let mut h = Histogram::new();
        for v in (0..5_000_000u64).step_by(997) {
            h.record(v);
        }
        let bins: Vec<_> = h.bins().collect();
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), h.count());
        for w in bins.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?}");
        }
        for &(lo, hi, _) in &bins {
            assert!(lo < hi);
            // 3 significant digits: a bucket is at most 1/1024 of its values wide.
            assert!(
                ((hi - lo) as f64) <= (lo as f64 / 1000.0).max(1.0),
                "{lo}..{hi}"
            );
        }
    }

    /// A 50 ms period with 0.3 ms of jitter: the percentiles must tell the samples apart (the
    /// earlier 32-bucket-per-octave histogram put them all in one 1 ms bucket and reported the
    /// minimum for every percentile).
    #[test]
    fn percentiles_resolve_jitter_at_a_50_ms_period() {
        let mut h = Histogram::new();
        // 49.850 ms .. 50.149 ms in 1 us steps, 300 samples.
        let samples: Vec<u64> = (0..300).map(|i| 49_850_000 + i * 1_000).collect();
        for &v in &samples {
            h.record(v);
        }
        for (q, rank) in [(0.5, 150), (0.9, 270), (0.99, 297)] {
            let want = samples[rank - 1] as f64;
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                (want..=want * 1.001).contains(&got),
                "q{q}: got {got}, sample {want}"
            );
        }
        assert!(h.quantile(0.99).unwrap() > h.quantile(0.5).unwrap());
    }

    #[test]
    fn merge_adds_counts_and_keeps_exact_extremes() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record(5);
        a.record(1_000_000);
        b.record(3);
        b.record(HIGHEST_NS * 2);
        a.merge(&b);
        assert_eq!(
            (a.count(), a.min(), a.max()),
            (4, Some(3), Some(HIGHEST_NS * 2))
        );
        // Past the tracked range the sample counts as the range's top, but q = 1 is the max.
        assert_eq!(a.quantile(1.0), Some(HIGHEST_NS * 2));
        let p99 = a.quantile(0.99).unwrap();
        assert!((HIGHEST_NS..HIGHEST_NS * 2).contains(&p99), "{p99}");
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
