//! `reflex-tools explain`: what does the policy look at, and how brittle is it?
//!
//! On one observation (a frame of each camera and the joint state, from a recorded episode):
//! - **occlusion sensitivity** (Zeiler & Fergus, "Visualizing and understanding convolutional
//!   networks", ECCV 2014): a neutral patch (the frame's mean colour) slides over each camera's
//!   frame at capture size; at each position the policy runs and the change of each action
//!   (step 0 of the chunk: what the robot would do now), in the action's own unit, is recorded.
//!   Actions are grouped by unit (e.g. `rad`: the arm joints, `m`: the gripper); a pixel's heat is
//!   the mean, over the patches covering it, of the group's largest change;
//! - **robustness sweep**: brightness (gain), contrast (about the frame's mean), colour
//!   temperature (R up and B down, or the reverse), Gaussian blur and small horizontal and
//!   vertical shifts, each at growing strength on every camera at once, against the largest
//!   action change per group: a policy whose actions move with the lighting will move on the
//!   robot when the light changes.
//!
//! Frames are perturbed in 8-bit RGB at capture size (what the camera would deliver), then run
//! through the bundle's own preprocessing and network (tract), and actions are unnormalized
//! with the bundle's normalization.
//!
//! For a policy with self-attention (a ViT encoder), **attention rollout** ([`crate::rollout`])
//! shows where each camera's class token draws from, on the unperturbed observation.

use crate::images::{overlay_heat, write_png, Rgb8};
use anyhow::{bail, Context, Result};
use reflex_models::manifest::{Affine, Manifest, PixelFormat};
use reflex_models::Bundle;
use reflex_runtime::camera::replay::Episode;
use reflex_runtime::camera::viewpoint::FrameDecoder;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::tract::TractOptions;
use reflex_runtime::infer::tract::TractSession;
use reflex_runtime::io::{Frame, FrameMeta};
use reflex_runtime::preprocess::Preprocessor;
use reflex_runtime::progress::Progress;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Actions of one unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionGroup {
    pub unit: String,
    /// Indices into the action vector.
    pub dims: Vec<usize>,
    pub names: Vec<String>,
}

/// The manifest's actions grouped by unit, in order of first appearance.
pub fn action_groups(m: &Manifest) -> Vec<ActionGroup> {
    let mut groups: Vec<ActionGroup> = Vec::new();
    for (i, (name, unit)) in m.action.names.iter().zip(&m.action.units).enumerate() {
        match groups.iter_mut().find(|g| &g.unit == unit) {
            Some(g) => {
                g.dims.push(i);
                g.names.push(name.clone());
            }
            None => groups.push(ActionGroup {
                unit: unit.clone(),
                dims: vec![i],
                names: vec![name.clone()],
            }),
        }
    }
    groups
}

/// The bundle's policy with its preprocessing and normalization: frames + state in, actions (in
/// action units) out.
pub struct Explainer {
    manifest: Manifest,
    policy: SinglePassPolicy<TractSession>,
    pre: Vec<Preprocessor>,
    state: Vec<Affine>,
    action: Vec<Affine>,
}

impl std::fmt::Debug for Explainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explainer")
            .field("bundle", &self.manifest.name)
            .finish()
    }
}

impl Explainer {
    /// Prepares the bundle's policy on tract and a preprocessor per camera for 8-bit RGB frames
    /// at the capture size.
    pub fn new(bundle: &Bundle) -> Result<Explainer> {
        let m = bundle.manifest.clone();
        let policy = SinglePassPolicy::tract(bundle, TractOptions::default())?;
        let pre = m
            .cameras
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.capture.format = PixelFormat::Rgb24;
                Preprocessor::new(&c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = (0..m.state.names.len())
            .map(|i| m.state.normalization.affine(i))
            .collect();
        let action = (0..m.action.names.len())
            .map(|i| m.action.normalization.affine(i))
            .collect();
        Ok(Explainer {
            manifest: m,
            policy,
            pre,
            state,
            action,
        })
    }

    /// The manifest of the bundle.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The policy's inputs for these frames (one per camera, capture size) and state (raw
    /// units): the preprocessed CHW tensors per camera and the normalized state.
    pub fn inputs(&mut self, frames: &[Rgb8], state: &[f32]) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let mut images = Vec::with_capacity(frames.len());
        for (p, f) in self.pre.iter_mut().zip(frames) {
            let mut t = vec![0f32; p.output_len()];
            p.run(
                &f.data,
                f.width as u32,
                f.height as u32,
                PixelFormat::Rgb24,
                &mut t,
            )?;
            images.push(t);
        }
        let state = state
            .iter()
            .zip(&self.state)
            .map(|(&x, a)| a.normalize(x))
            .collect();
        Ok((images, state))
    }

    /// Step 0 of the policy's output for these frames (one per camera, manifest order, capture
    /// size) and state (raw units), in action units.
    pub fn act(&mut self, frames: &[Rgb8], state: &[f32]) -> Result<Vec<f32>> {
        for (i, (p, f)) in self.pre.iter_mut().zip(frames).enumerate() {
            let input = self.policy.camera_input(i);
            p.run(
                &f.data,
                f.width as u32,
                f.height as u32,
                PixelFormat::Rgb24,
                input,
            )?;
        }
        if let Some(s) = self.policy.state_input() {
            for ((o, &x), a) in s.iter_mut().zip(state).zip(&self.state) {
                *o = a.normalize(x);
            }
        }
        self.policy.run()?;
        let out = self.policy.output();
        Ok(self
            .action
            .iter()
            .enumerate()
            .map(|(i, a)| a.unnormalize(out[i]))
            .collect())
    }
}

/// One observation of a recorded episode: frame `index` of each bundle camera, decoded to RGB
/// as the robot's preprocessing decodes it, and the state sample nearest in time, in the
/// bundle's state order.
pub fn episode_observation(
    m: &Manifest,
    episode: &Episode,
    index: usize,
) -> Result<(Vec<Rgb8>, Vec<f32>)> {
    let mut frames = Vec::new();
    let mut t_ns = 0;
    for cam in &m.cameras {
        let i = episode
            .index
            .cameras
            .iter()
            .position(|c| c.name == cam.name)
            .with_context(|| {
                format!(
                    "episode {} has no camera `{}` (it has: {})",
                    episode.dir.display(),
                    cam.name,
                    episode
                        .index
                        .cameras
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let ec = &episode.index.cameras[i];
        let Some(&[t, off, len]) = ec.frames.get(index) else {
            bail!(
                "--frame {index}: camera `{}` of {} has {} frames",
                cam.name,
                episode.dir.display(),
                ec.frames.len()
            );
        };
        t_ns = t;
        let frame = Frame {
            meta: FrameMeta {
                seq: index as u64,
                capture_ns: t,
                width: ec.width,
                height: ec.height,
                format: ec.format,
            },
            data: &episode.data[i][off as usize..(off + len) as usize],
        };
        let planes = FrameDecoder::new(cam)?.decode(&frame)?;
        let n = planes.width * planes.height;
        let mut rgb = Rgb8::new(planes.width, planes.height);
        for p in 0..n {
            for c in 0..3 {
                rgb.data[3 * p + c] = planes.planes[c * n + p].clamp(0.0, 255.0) as u8;
            }
        }
        frames.push(rgb);
    }
    let samples = &episode.index.state.samples;
    let nearest = samples
        .iter()
        .min_by_key(|(t, _)| t.abs_diff(t_ns))
        .with_context(|| format!("episode {} has no state samples", episode.dir.display()))?;
    let state = m
        .state
        .names
        .iter()
        .map(|n| {
            episode
                .index
                .state
                .names
                .iter()
                .position(|e| e == n)
                .map(|j| nearest.1[j])
                .with_context(|| {
                    format!(
                        "episode {} records no state `{n}` (it has: {})",
                        episode.dir.display(),
                        episode.index.state.names.join(", ")
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((frames, state))
}

/// The occlusion map of one camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Occlusion {
    pub camera: String,
    /// Patch side and step, capture pixels.
    pub patch: usize,
    pub stride: usize,
    /// Patch positions: `cols x rows`, top-left corners at `(i * stride, j * stride)`.
    pub cols: usize,
    pub rows: usize,
    /// The neutral colour of the patch (the frame's mean), 8-bit RGB.
    pub fill: [u8; 3],
    /// Actions of the unoccluded observation, action units.
    pub baseline: Vec<f32>,
    /// Per position (row-major), `|action - baseline|` per action dimension, action units.
    pub change: Vec<Vec<f32>>,
    pub groups: Vec<ActionGroup>,
    /// Per group: per capture pixel (row-major, `width x height` of the frame), the mean over
    /// the patches covering it of the group's largest change.
    #[serde(skip)]
    pub heat: Vec<Vec<f64>>,
    /// Per group: the largest change of any position, and where (patch centre, pixels).
    pub peak: Vec<(f64, [usize; 2])>,
}

/// Occlusion sensitivity of camera `cam` (manifest index): `patch`-pixel squares every `stride`
/// pixels. `progress` is called after each position with (done, total).
pub fn occlusion(
    ex: &mut Explainer,
    frames: &[Rgb8],
    state: &[f32],
    cam: usize,
    patch: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Occlusion> {
    let base = &frames[cam];
    let (w, h) = (base.width, base.height);
    let patch = patch.clamp(1, w.min(h));
    let stride = stride.max(1);
    let (cols, rows) = ((w - patch) / stride + 1, (h - patch) / stride + 1);
    let n = (w * h) as f64;
    let fill = [0, 1, 2].map(|c| {
        (base
            .data
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / n)
            .round() as u8
    });
    let baseline = ex.act(frames, state)?;
    let groups = action_groups(ex.manifest());
    let mut work = frames.to_vec();
    let mut change = Vec::with_capacity(cols * rows);
    for j in 0..rows {
        for i in 0..cols {
            let (x0, y0) = (i * stride, j * stride);
            let img = &mut work[cam];
            for y in y0..y0 + patch {
                for x in x0..x0 + patch {
                    img.put(x, y, fill);
                }
            }
            let a = ex.act(&work, state)?;
            change.push(
                a.iter()
                    .zip(&baseline)
                    .map(|(x, b)| (x - b).abs())
                    .collect::<Vec<f32>>(),
            );
            // Restore the patch.
            for y in y0..y0 + patch {
                for x in x0..x0 + patch {
                    work[cam].put(x, y, base.get(x, y));
                }
            }
            progress(j * cols + i + 1, cols * rows);
        }
    }
    let mut heat = Vec::new();
    let mut peak = Vec::new();
    for g in &groups {
        let mut sum = vec![0f64; w * h];
        let mut count = vec![0u32; w * h];
        let mut best = (0f64, [0usize; 2]);
        for (k, ch) in change.iter().enumerate() {
            let v = g.dims.iter().map(|&d| f64::from(ch[d])).fold(0.0, f64::max);
            let (x0, y0) = ((k % cols) * stride, (k / cols) * stride);
            if v > best.0 {
                best = (v, [x0 + patch / 2, y0 + patch / 2]);
            }
            for y in y0..y0 + patch {
                for x in x0..x0 + patch {
                    sum[y * w + x] += v;
                    count[y * w + x] += 1;
                }
            }
        }
        heat.push(
            sum.iter()
                .zip(&count)
                .map(|(s, &c)| if c > 0 { s / f64::from(c) } else { 0.0 })
                .collect(),
        );
        peak.push(best);
    }
    Ok(Occlusion {
        camera: ex.manifest().cameras[cam].name.clone(),
        patch,
        stride,
        cols,
        rows,
        fill,
        baseline,
        change,
        groups,
        heat,
        peak,
    })
}

/// A perturbation of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Perturbation {
    /// Every channel times `1 + s`.
    Brightness,
    /// `(x - mean) (1 + s) + mean` per channel.
    Contrast,
    /// R times `1 + s`, B times `1 - s` (warmer for s > 0).
    ColourTemperature,
    /// Gaussian blur of standard deviation `s` pixels.
    Blur,
    /// Content moved `s` pixels right (edges repeated).
    ShiftX,
    /// Content moved `s` pixels down (edges repeated).
    ShiftY,
}

impl Perturbation {
    pub const ALL: [Perturbation; 6] = [
        Perturbation::Brightness,
        Perturbation::Contrast,
        Perturbation::ColourTemperature,
        Perturbation::Blur,
        Perturbation::ShiftX,
        Perturbation::ShiftY,
    ];

    /// The name in reports and plots.
    pub fn as_str(self) -> &'static str {
        match self {
            Perturbation::Brightness => "brightness",
            Perturbation::Contrast => "contrast",
            Perturbation::ColourTemperature => "colour temperature",
            Perturbation::Blur => "blur",
            Perturbation::ShiftX => "shift x",
            Perturbation::ShiftY => "shift y",
        }
    }

    /// What the strength is, in words.
    pub fn strength_unit(self) -> &'static str {
        match self {
            Perturbation::Brightness | Perturbation::Contrast => "gain - 1",
            Perturbation::ColourTemperature => "R gain - 1 (= 1 - B gain)",
            Perturbation::Blur => "sigma, px",
            Perturbation::ShiftX | Perturbation::ShiftY => "px",
        }
    }

    /// The strengths swept (0 included).
    pub fn strengths(self) -> Vec<f64> {
        match self {
            Perturbation::Brightness | Perturbation::Contrast => {
                (-5..=5).map(|i| f64::from(i) * 0.1).collect()
            }
            Perturbation::ColourTemperature => (-5..=5).map(|i| f64::from(i) * 0.06).collect(),
            Perturbation::Blur => vec![0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
            Perturbation::ShiftX | Perturbation::ShiftY => {
                (-4..=4).map(|i| f64::from(i) * 2.0).collect()
            }
        }
    }

    /// `img` perturbed at strength `s`.
    pub fn apply(self, img: &Rgb8, s: f64) -> Rgb8 {
        let to8 = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        let mut out = img.clone();
        match self {
            Perturbation::Brightness => {
                for v in &mut out.data {
                    *v = to8(f64::from(*v) * (1.0 + s));
                }
            }
            Perturbation::Contrast => {
                let n = (img.width * img.height) as f64;
                let mean = [0, 1, 2].map(|c| {
                    img.data
                        .iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&v| f64::from(v))
                        .sum::<f64>()
                        / n
                });
                for (i, v) in out.data.iter_mut().enumerate() {
                    let m = mean[i % 3];
                    *v = to8((f64::from(*v) - m) * (1.0 + s) + m);
                }
            }
            Perturbation::ColourTemperature => {
                for (i, v) in out.data.iter_mut().enumerate() {
                    let g = match i % 3 {
                        0 => 1.0 + s,
                        2 => 1.0 - s,
                        _ => 1.0,
                    };
                    *v = to8(f64::from(*v) * g);
                }
            }
            Perturbation::Blur => {
                if s > 0.0 {
                    out = gaussian_blur(img, s);
                }
            }
            Perturbation::ShiftX | Perturbation::ShiftY => {
                let d = s.round() as i64;
                let (dx, dy) = if self == Perturbation::ShiftX {
                    (d, 0)
                } else {
                    (0, d)
                };
                let (w, h) = (img.width as i64, img.height as i64);
                for y in 0..h {
                    for x in 0..w {
                        let (sx, sy) = ((x - dx).clamp(0, w - 1), (y - dy).clamp(0, h - 1));
                        out.put(x as usize, y as usize, img.get(sx as usize, sy as usize));
                    }
                }
            }
        }
        out
    }
}

/// Separable Gaussian blur (kernel truncated at 3 sigma, normalized; edges repeated).
fn gaussian_blur(img: &Rgb8, sigma: f64) -> Rgb8 {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f64 = k.iter().sum();
    let (w, h) = (img.width as i64, img.height as i64);
    let mut tmp = vec![0f64; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for (t, kv) in k.iter().enumerate() {
                    let sx = (x + t as i64 - r).clamp(0, w - 1);
                    s += kv * f64::from(img.data[(3 * (y * w + sx)) as usize + c]);
                }
                tmp[(3 * (y * w + x)) as usize + c] = s / ks;
            }
        }
    }
    let mut out = img.clone();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for (t, kv) in k.iter().enumerate() {
                    let sy = (y + t as i64 - r).clamp(0, h - 1);
                    s += kv * tmp[(3 * (sy * w + x)) as usize + c];
                }
                out.data[(3 * (y * w + x)) as usize + c] = (s / ks).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// One perturbation's sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepSeries {
    pub perturbation: Perturbation,
    pub strength_unit: &'static str,
    pub strengths: Vec<f64>,
    /// Per strength, per action group: the group's largest `|action - baseline|`, in its unit.
    pub change: Vec<Vec<f64>>,
}

/// The robustness sweep: every [`Perturbation`] at each of its strengths, on every camera.
pub fn sweep(
    ex: &mut Explainer,
    frames: &[Rgb8],
    state: &[f32],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<SweepSeries>> {
    let baseline = ex.act(frames, state)?;
    let groups = action_groups(ex.manifest());
    let total: usize = Perturbation::ALL.iter().map(|p| p.strengths().len()).sum();
    let mut done = 0;
    let mut out = Vec::new();
    for p in Perturbation::ALL {
        let strengths = p.strengths();
        let mut change = Vec::new();
        for &s in &strengths {
            let perturbed: Vec<Rgb8> = frames.iter().map(|f| p.apply(f, s)).collect();
            let a = ex.act(&perturbed, state)?;
            change.push(
                groups
                    .iter()
                    .map(|g| {
                        g.dims
                            .iter()
                            .map(|&d| f64::from((a[d] - baseline[d]).abs()))
                            .fold(0.0, f64::max)
                    })
                    .collect(),
            );
            done += 1;
            progress(done, total);
        }
        out.push(SweepSeries {
            perturbation: p,
            strength_unit: p.strength_unit(),
            strengths,
            change,
        });
    }
    Ok(out)
}

/// The sweep as an SVG: one panel per perturbation, one line per action group.
pub fn sweep_svg(series: &[SweepSeries], groups: &[ActionGroup], title: &str) -> Result<String> {
    use plotters::prelude::*;
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 760)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (top, body) = root.split_vertically(50);
        top.draw(&Text::new(
            title.to_string(),
            (20, 14),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let panels = body.split_evenly((2, 3));
        for (panel, s) in panels.iter().zip(series) {
            let x0 = s.strengths.iter().cloned().fold(f64::INFINITY, f64::min);
            let x1 = s
                .strengths
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max);
            let ymax = s
                .change
                .iter()
                .flatten()
                .cloned()
                .fold(0.0, f64::max)
                .max(1e-6)
                * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(s.perturbation.as_str(), ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1.max(x0 + 1e-9), 0.0..ymax)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc(s.strength_unit)
                .y_desc("|action change|")
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (gi, g) in groups.iter().enumerate() {
                let colour = COLOURS[gi % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.strengths.iter().zip(&s.change).map(|(&x, c)| (x, c[gi])),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(format!("{} ({})", g.unit, g.names.join(", ")))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// What [`explain`] needs.
#[derive(Debug, Clone)]
pub struct ExplainArgs {
    pub bundle: PathBuf,
    pub episode: PathBuf,
    pub frame: usize,
    /// Patch side, capture pixels (0 = an eighth of the shorter side).
    pub patch: usize,
    /// Patch step (0 = half the patch).
    pub stride: usize,
    pub out: PathBuf,
}

/// Everything `explain` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// The observation's frame of each camera, as the policy saw it (capture size).
    pub frames: Vec<PathBuf>,
    pub occlusion: Vec<PathBuf>,
    /// Attention rollout pictures, one per camera (ViT policies).
    pub rollout: Vec<PathBuf>,
    pub sweep: PathBuf,
    pub json: Vec<PathBuf>,
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The whole command: occlusion maps of every camera (a PNG per camera and action group, a JSON
/// per camera) and the robustness sweep (`sweep.svg` and `sweep.json`), into `out`.
pub fn explain(a: &ExplainArgs) -> Result<Explained> {
    let bundle = Bundle::load(&a.bundle)?;
    let episode = Episode::load(&a.episode)?;
    let mut ex = Explainer::new(&bundle)?;
    let (frames, state) = episode_observation(ex.manifest(), &episode, a.frame)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut written = Explained {
        frames: Vec::new(),
        occlusion: Vec::new(),
        rollout: Vec::new(),
        sweep: a.out.join("sweep.svg"),
        json: Vec::new(),
    };
    for (cam, f) in frames.iter().enumerate() {
        let patch = if a.patch == 0 {
            (f.width.min(f.height) / 8).max(1)
        } else {
            a.patch
        };
        let stride = if a.stride == 0 {
            (patch / 2).max(1)
        } else {
            a.stride
        };
        let name = ex.manifest().cameras[cam].name.clone();
        let p = patch.clamp(1, f.width.min(f.height));
        let positions = ((f.width - p) / stride + 1) * ((f.height - p) / stride + 1);
        let bar = Progress::new(positions as u64, &format!("occlusion {name}"));
        let occ = occlusion(&mut ex, &frames, &state, cam, patch, stride, |_, _| {
            bar.inc(1)
        })?;
        bar.finish();
        for (g, heat) in occ.groups.iter().zip(&occ.heat) {
            let max = heat.iter().cloned().fold(0.0, f64::max);
            let png = a
                .out
                .join(format!("occlusion-{name}-{}.png", file_safe(&g.unit)));
            write_png(&png, &overlay_heat(f, heat, f.width, f.height, max))?;
            written.occlusion.push(png);
        }
        let frame_png = a.out.join(format!("frame-{name}.png"));
        write_png(&frame_png, f)?;
        written.frames.push(frame_png);
        let json = a.out.join(format!("occlusion-{name}.json"));
        write_json(&json, &occ)?;
        written.json.push(json);
    }
    let (images, normalized) = ex.inputs(&frames, &state)?;
    let rollouts = crate::rollout::attention_rollout(&bundle, &images, &normalized)?;
    for r in &rollouts.cameras {
        let cam = ex
            .manifest()
            .cameras
            .iter()
            .position(|c| c.name == r.camera)
            .context("rollout of an unknown camera")?;
        let spec = &ex.manifest().cameras[cam];
        // Coloured from the smallest patch share (dark) to the largest (bright): the shares of
        // a ViT's patches differ by small amounts around 1 / patches.
        let low = r.patch_weights.iter().cloned().fold(f64::MAX, f64::min);
        let heat: Vec<f64> = crate::rollout::capture_heat(spec, r)
            .iter()
            .map(|v| (v - low).max(0.0))
            .collect();
        let max = heat.iter().cloned().fold(0.0, f64::max);
        let f = &frames[cam];
        let png = a.out.join(format!("rollout-{}.png", r.camera));
        write_png(&png, &overlay_heat(f, &heat, f.width, f.height, max))?;
        written.rollout.push(png);
    }
    if !rollouts.cameras.is_empty() || !rollouts.skipped.is_empty() {
        for s in &rollouts.skipped {
            log::warn!("attention rollout of camera `{}`: {}", s.camera, s.reason);
        }
        let json = a.out.join("rollout.json");
        write_json(&json, &rollouts)?;
        written.json.push(json);
    }
    let steps: usize = Perturbation::ALL.iter().map(|p| p.strengths().len()).sum();
    let bar = Progress::new(steps as u64, "robustness sweep");
    let series = sweep(&mut ex, &frames, &state, |_, _| bar.inc(1))?;
    bar.finish();
    let groups = action_groups(ex.manifest());
    let title = format!(
        "{}: action change against image perturbations (episode frame {})",
        ex.manifest().name,
        a.frame
    );
    std::fs::write(&written.sweep, sweep_svg(&series, &groups, &title)?)
        .with_context(|| format!("cannot write {}", written.sweep.display()))?;
    let json = a.out.join("sweep.json");
    #[derive(Serialize)]
    struct SweepReport<'a> {
        groups: &'a [ActionGroup],
        series: &'a [SweepSeries],
    }
    write_json(
        &json,
        &SweepReport {
            groups: &groups,
            series: &series,
        },
    )?;
    written.json.push(json);
    Ok(written)
}

/// A unit as a file-name part (`rad`, `m`, `deg_s`).
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
