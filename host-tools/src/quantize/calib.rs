//! Calibration and held-out samples: episode frames through the bundle's own preprocessing,
//! state through its normalization, so the quantizer sees exactly the tensors the robot will
//! feed the network.
//!
//! Frames are taken from the episode's first bundle camera, evenly spaced over the episode; the
//! other cameras and the state contribute their newest sample at that frame's timestamp. Of the
//! chosen frames, `held_out` evenly interleaved ones are set aside (so both sets cover the whole
//! episode) and are never used for calibration.

use anyhow::{bail, ensure, Context, Result};
use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode};
use reflex_runtime::preprocess::Preprocessor;
use reflex_runtime::progress::Progress;
use std::path::{Path, PathBuf};

/// Where calibration frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A synthetic episode generated for the bundle's cameras and state.
    Synthetic,
    /// A recorded episode directory (`episode.json` + frame files).
    Episode(PathBuf),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Synthetic => "synthetic episode (reflex_runtime::camera::replay)".into(),
            Source::Episode(p) => format!("episode {}", p.display()),
        }
    }
}

/// The observation of one episode frame, as the policy takes it: preprocessed CHW images in
/// manifest camera order and the normalized state (empty for an image-only policy). The policy
/// maps them onto graph inputs (`reflex_runtime::infer::policy`).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Frame index of the lead camera in the episode.
    pub frame: usize,
    pub images: Vec<Vec<f32>>,
    pub state: Vec<f32>,
}

#[derive(Debug)]
pub struct Samples {
    pub calibration: Vec<Sample>,
    pub held_out: Vec<Sample>,
}

/// Positions (in `0..total`) of the held-out samples: `held` of them, evenly interleaved.
pub fn held_out_positions(total: usize, held: usize) -> Vec<usize> {
    (0..held)
        .map(|j| (2 * j + 1) * total / (2 * held))
        .collect()
}

/// Loads (or, for [`Source::Synthetic`], generates under `scratch`) the episode and returns
/// `calibration` + `held_out` samples.
pub fn load(
    bundle: &Bundle,
    source: &Source,
    calibration: usize,
    held_out: usize,
    scratch: &Path,
) -> Result<Samples> {
    ensure!(held_out > 0, "--held-out must be at least 1");
    let total = calibration + held_out;
    let m = &bundle.manifest;
    let dir = match source {
        Source::Synthetic => {
            let d = scratch.join("synthetic-episode");
            let fps = m.cameras[0].capture.fps.max(1);
            generate_synthetic_episode(m, &d, total as f64 / fps as f64, fps)
                .context("generating the synthetic calibration episode")?;
            d
        }
        Source::Episode(p) => p.clone(),
    };
    let ep = Episode::load(&dir)?;
    let names =
        |v: &mut dyn Iterator<Item = &String>| v.map(String::as_str).collect::<Vec<_>>().join(", ");
    let cams = m
        .cameras
        .iter()
        .map(|c| {
            ep.index
                .cameras
                .iter()
                .position(|e| e.name == c.name)
                .with_context(|| {
                    format!(
                        "{}: no camera `{}` (the bundle's) in the episode (has: {})",
                        dir.display(),
                        c.name,
                        names(&mut ep.index.cameras.iter().map(|e| &e.name))
                    )
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let st = &ep.index.state;
    let state_map = m
        .state
        .names
        .iter()
        .map(|n| {
            st.names.iter().position(|x| x == n).with_context(|| {
                format!(
                    "{}: state `{n}` needed by the bundle is not recorded (has: {})",
                    dir.display(),
                    names(&mut st.names.iter())
                )
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    if !state_map.is_empty() && st.samples.is_empty() {
        bail!("{}: the episode has no state samples", dir.display());
    }
    let lead = &ep.index.cameras[cams[0]];
    let n = lead.frames.len();
    if n < total {
        bail!(
            "{}: camera `{}` has {n} frames; {calibration} calibration + {held_out} held-out \
             frames need {total} (lower --calibration-frames / --held-out)",
            dir.display(),
            lead.name
        );
    }
    let mut pre = m
        .cameras
        .iter()
        .map(Preprocessor::new)
        .collect::<Result<Vec<_>, _>>()?;
    let norm: Vec<_> = (0..m.state.names.len())
        .map(|i| m.state.normalization.affine(i))
        .collect();
    let held: Vec<usize> = held_out_positions(total, held_out);
    let mut out = Samples {
        calibration: vec![],
        held_out: vec![],
    };
    let progress = Progress::new(total as u64, "preparing frames");
    for pos in 0..total {
        let frame = pos * n / total;
        let t = lead.frames[frame][0];
        let mut images = vec![];
        for (c, &ci) in cams.iter().enumerate() {
            let ec = &ep.index.cameras[ci];
            let k = if c == 0 {
                frame
            } else {
                ec.frames.partition_point(|f| f[0] <= t).max(1) - 1
            };
            let [_, off, len] = ec.frames[k];
            let data = &ep.data[ci][off as usize..(off + len) as usize];
            let mut img = vec![0f32; pre[c].output_len()];
            pre[c]
                .run(data, ec.width, ec.height, ec.format, &mut img)
                .with_context(|| format!("{}: camera `{}` frame {k}", dir.display(), ec.name))?;
            images.push(img);
        }
        let state: Vec<f32> = if state_map.is_empty() {
            vec![]
        } else {
            let s = st.samples.partition_point(|s| s.0 <= t).max(1) - 1;
            let v = &st.samples[s].1;
            state_map
                .iter()
                .zip(&norm)
                .map(|(&j, n)| n.normalize(v[j]))
                .collect()
        };
        let sample = Sample {
            frame,
            images,
            state,
        };
        if held.contains(&pos) {
            out.held_out.push(sample);
        } else {
            out.calibration.push(sample);
        }
        progress.inc(1);
    }
    progress.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_positions_are_distinct_and_interleaved() {
        assert_eq!(held_out_positions(12, 4), vec![1, 4, 7, 10]);
        assert_eq!(held_out_positions(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(
            held_out_positions(80, 16),
            (0..16).map(|j| 2 + 5 * j).collect::<Vec<_>>()
        );
    }
}
