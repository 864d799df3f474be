//! Backend parity (`reflex check --parity`): the same inputs through the selected backend's
//! policy and through tract's, and the largest difference per action dimension in the action's
//! own unit, against a tolerance.
//!
//! tract is the reference because it is always there and is itself checked against ONNX
//! Runtime by the conformance suite. The inputs are [`SAMPLES`] seeded draws ([`SEED`],
//! xoshiro256++): every camera tensor uniform in [-1, 1] (normalized pixels), the state standard
//! normal (normalized units); the same values go to both policies. Outputs are unnormalized with
//! the manifest's action normalization before they are compared, so a difference reads in rad, m
//! or whatever the action's unit is.
//!
//! The tolerance is the manifest's `action.parity_tolerance` (action units, one per dimension)
//! when present, else [`default_tolerance`] of the candidate's model precision (normalized
//! units) times each dimension's normalization gain.

use crate::infer::policy::{Policy, PolicyError};
use rand::{RngExt, SeedableRng};
use reflex_models::manifest::{Manifest, Precision};

/// Input draws compared.
pub const SAMPLES: usize = 4;
/// Seed of the input draws.
pub const SEED: u64 = 0x7061_7269_7479;

/// The default tolerance for a model precision, in normalized output units: fp32 1e-3 (two CPU
/// runtimes on the same fp32 graph differ by float rounding, ~1e-5 on the reference
/// policies); fp16 2e-2 (half precision carries 11 significant bits through every layer);
/// int8 0.25 (two int8 forms, or two runtimes' integer kernels, differ by int8 rounding: up to
/// about half the quantization error itself, which the reference ResNet-18 and ViT-S/16 put
/// below 0.5 in the quantization tests).
pub fn default_tolerance(p: Precision) -> f32 {
    match p {
        Precision::Fp32 => 1e-3,
        Precision::Fp16 => 2e-2,
        Precision::Int8 => 0.25,
    }
}

/// The tolerance per action dimension in action units, and where it came from.
pub fn tolerances(m: &Manifest, precision: Precision) -> (Vec<f32>, String) {
    if let Some(t) = &m.action.parity_tolerance {
        return (t.clone(), "policy.toml action.parity_tolerance".into());
    }
    let n = default_tolerance(precision);
    let t = (0..m.action.names.len())
        .map(|i| n * m.action.normalization.affine(i).gain.abs())
        .collect();
    (
        t,
        format!(
            "default for {}: {n} normalized units times each dimension's gain",
            precision.as_str()
        ),
    )
}

/// One action dimension's result.
#[derive(Debug, Clone, PartialEq)]
pub struct DimParity {
    pub name: String,
    pub unit: String,
    /// Largest |candidate - reference| over every sample and chunk step, action units.
    pub max_abs: f32,
    /// Allowed, action units.
    pub tolerance: f32,
}

impl DimParity {
    pub fn within(&self) -> bool {
        self.max_abs <= self.tolerance
    }
}

/// Runs both policies on the same [`SAMPLES`] seeded inputs and returns each action
/// dimension's largest difference in action units against `tolerance` (one per dimension).
///
/// Errors: a run fails ([`PolicyError`]). Panics if the two policies' outputs differ in length
/// (both run the same manifest, so they cannot).
pub fn compare(
    m: &Manifest,
    candidate: &mut dyn Policy,
    reference: &mut dyn Policy,
    tolerance: &[f32],
) -> Result<Vec<DimParity>, PolicyError> {
    let dim = m.action.names.len();
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(SEED);
    let mut max = vec![0f32; dim];
    for _ in 0..SAMPLES {
        for c in 0..m.cameras.len() {
            let buf = candidate.camera_input(c);
            for v in buf.iter_mut() {
                *v = rng.random_range(-1.0f32..=1.0);
            }
            let copy = buf.to_vec();
            reference.camera_input(c).copy_from_slice(&copy);
        }
        if let Some(buf) = candidate.state_input() {
            for v in buf.iter_mut() {
                *v = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
            }
            let copy = buf.to_vec();
            if let Some(r) = reference.state_input() {
                r.copy_from_slice(&copy);
            }
        }
        candidate.run()?;
        reference.run()?;
        let (a, b) = (candidate.output(), reference.output());
        assert_eq!(
            a.len(),
            b.len(),
            "the two policies' outputs differ in length"
        );
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            let affine = m.action.normalization.affine(k % dim);
            let d = (affine.unnormalize(*x) - affine.unnormalize(*y)).abs();
            // NaN is never within a tolerance.
            max[k % dim] = if d.is_nan() {
                f32::INFINITY
            } else {
                max[k % dim].max(d)
            };
        }
    }
    Ok((0..dim)
        .map(|i| DimParity {
            name: m.action.names[i].clone(),
            unit: m.action.units[i].clone(),
            max_abs: max[i],
            tolerance: tolerance[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_models::reference::{default_capture, demo_arch, reference_manifest};

    /// A policy whose output is its first camera value plus `offset` on dimension 0, for every
    /// value of a `[horizon][dim]` chunk.
    struct Echo {
        cam: Vec<f32>,
        state: Vec<f32>,
        out: Vec<f32>,
        dim: usize,
        offset: f32,
    }

    impl Policy for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn camera_input(&mut self, _: usize) -> &mut [f32] {
            &mut self.cam
        }
        fn state_input(&mut self) -> Option<&mut [f32]> {
            Some(&mut self.state)
        }
        fn run(&mut self) -> Result<(), PolicyError> {
            for (k, v) in self.out.iter_mut().enumerate() {
                *v =
                    self.cam[0] + self.state[0] + if k % self.dim == 0 { self.offset } else { 0.0 };
            }
            Ok(())
        }
        fn output(&self) -> &[f32] {
            &self.out
        }
    }

    fn echo(m: &Manifest, offset: f32) -> Echo {
        let dim = m.action.names.len();
        Echo {
            cam: vec![0.0; 12],
            state: vec![0.0; m.state.names.len()],
            out: vec![0.0; dim * m.action.output.horizon()],
            dim,
            offset,
        }
    }

    #[test]
    fn differences_read_in_action_units_against_the_tolerance() {
        let m = reference_manifest(&demo_arch(), "t", default_capture());
        let (tol, from) = tolerances(&m, Precision::Fp32);
        assert!(from.starts_with("default for fp32: 0.001"), "{from}");
        let gain0 = m.action.normalization.affine(0).gain;
        assert_eq!(tol[0], 1e-3 * gain0.abs());
        // 1e-2 normalized off on dimension 0: gain0 * 1e-2 in its unit, the rest identical.
        let r = compare(&m, &mut echo(&m, 1e-2), &mut echo(&m, 0.0), &tol).expect("runs");
        assert!(
            (r[0].max_abs - 1e-2 * gain0.abs()).abs() <= 1e-6 * gain0.abs(),
            "{r:?}"
        );
        assert!(!r[0].within());
        assert!(
            r[1..].iter().all(|d| d.max_abs == 0.0 && d.within()),
            "{r:?}"
        );
        assert_eq!(r[0].unit, m.action.units[0]);
        // The same inputs reached both: identical policies agree exactly.
        let r = compare(&m, &mut echo(&m, 0.0), &mut echo(&m, 0.0), &tol).expect("runs");
        assert!(r.iter().all(|d| d.max_abs == 0.0), "{r:?}");
        // The manifest's tolerance wins over the default.
        let mut m2 = m.clone();
        m2.action.parity_tolerance = Some(vec![1.0; m.action.names.len()]);
        let (tol, from) = tolerances(&m2, Precision::Int8);
        assert_eq!(
            (tol[0], from.as_str()),
            (1.0, "policy.toml action.parity_tolerance")
        );
        // A NaN output is never within.
        let r = compare(&m, &mut echo(&m, f32::NAN), &mut echo(&m, 0.0), &tol).expect("runs");
        assert!(!r[0].within(), "{r:?}");
    }
}
