//! Recorded episodes: replaying cameras and state, and a synthetic episode generator.
//!
//! The embedded default (`reflex demo`) and most tests run the real pipeline on recorded data
//! instead of hardware. An episode is a directory: `episode.json` (camera formats, per-frame
//! timestamps and byte ranges, state samples) plus one raw frame file per camera. Frames are
//! loaded into memory at start so replay costs nothing per tick.

use crate::io::{Camera, CameraError, FaultKind, Frame, FrameMeta, StateError, StateSource};
use reflex_models::manifest::{Manifest, PixelFormat};
use reflex_models::output::{Kind, OutDir, OutputError, Replace};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const EPISODE_FILE: &str = "episode.json";

#[derive(Debug, thiserror::Error)]
pub enum EpisodeError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The episode folder was refused or could not be put in place.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Recognizes an episode folder reflex wrote: an `episode.json` whose `format` is
/// `reflex-episode-...` and nothing but the frame files it lists. Returns why not.
pub fn is_episode_dir(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join(EPISODE_FILE))
        .map_err(|_| format!("no readable {EPISODE_FILE}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("its {EPISODE_FILE} is not JSON"))?;
    if !v
        .get("format")
        .and_then(|f| f.as_str())
        .is_some_and(|f| f.starts_with("reflex-episode-"))
    {
        return Err(format!("its {EPISODE_FILE} is not a reflex episode index"));
    }
    let mut listed = vec![EPISODE_FILE.to_string()];
    for c in v
        .get("cameras")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(f) = c.get("file").and_then(|f| f.as_str()) {
            listed.push(f.to_string());
        }
    }
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !listed.contains(&name) || !e.path().is_file() {
            return Err(format!(
                "it holds `{name}`, which its {EPISODE_FILE} does not list"
            ));
        }
    }
    Ok(())
}

/// The output kind of an episode folder, for [`reflex_models::output`].
pub const EPISODE_KIND: Kind = Kind {
    what: "a reflex episode",
    recognize: is_episode_dir,
};

/// An episode that cannot be read or makes no sense is a misconfiguration: fatal.
impl crate::io::Fault for EpisodeError {
    fn kind(&self) -> FaultKind {
        FaultKind::Fatal
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeCamera {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Raw frame file, relative to the episode directory.
    pub file: String,
    /// `[t_ns, offset, len]` per frame, `t_ns` from the episode start.
    pub frames: Vec<[u64; 3]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeState {
    pub names: Vec<String>,
    /// `(t_ns, values)` per sample.
    pub samples: Vec<(u64, Vec<f32>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeIndex {
    pub format: String,
    pub cameras: Vec<EpisodeCamera>,
    pub state: EpisodeState,
}

#[derive(Debug)]
pub struct Episode {
    pub dir: PathBuf,
    pub index: EpisodeIndex,
    /// Frame bytes per camera, same order as `index.cameras`.
    pub data: Vec<Vec<u8>>,
}

impl Episode {
    pub fn load(dir: &Path) -> Result<Episode, EpisodeError> {
        let ip = dir.join(EPISODE_FILE);
        if !ip.is_file() {
            return Err(EpisodeError::Invalid {
                path: dir.to_path_buf(),
                message: format!(
                    "not an episode folder (no {EPISODE_FILE}): record one with `reflex record`, \
                     make one from images with `reflex-tools episode from-images`, or use a \
                     generated one (`synthetic` where a command accepts it)"
                ),
            });
        }
        let text = std::fs::read_to_string(&ip).map_err(|source| EpisodeError::Io {
            path: ip.clone(),
            source,
        })?;
        let index: EpisodeIndex =
            serde_json::from_str(&text).map_err(|e| EpisodeError::Invalid {
                path: ip.clone(),
                message: e.to_string(),
            })?;
        if index.format != "reflex-episode-v1" {
            return Err(EpisodeError::Invalid {
                path: ip,
                message: format!("unknown episode format `{}`", index.format),
            });
        }
        let mut data = Vec::new();
        for c in &index.cameras {
            let p = dir.join(&c.file);
            let bytes = std::fs::read(&p).map_err(|source| EpisodeError::Io {
                path: p.clone(),
                source,
            })?;
            if c.frames.is_empty() {
                return Err(EpisodeError::Invalid {
                    path: p,
                    message: format!("camera `{}` has no frames", c.name),
                });
            }
            for (i, f) in c.frames.iter().enumerate() {
                if f[1]
                    .checked_add(f[2])
                    .is_none_or(|e| e > bytes.len() as u64)
                {
                    return Err(EpisodeError::Invalid {
                        path: p,
                        message: format!("frame {i} of `{}` lies outside the file", c.name),
                    });
                }
            }
            data.push(bytes);
        }
        for (i, (_, v)) in index.state.samples.iter().enumerate() {
            if v.len() != index.state.names.len() {
                return Err(EpisodeError::Invalid {
                    path: ip,
                    message: format!(
                        "state sample {i} has {} values for {} names",
                        v.len(),
                        index.state.names.len()
                    ),
                });
            }
        }
        Ok(Episode {
            dir: dir.to_path_buf(),
            index,
            data,
        })
    }

    /// Duration from the first to one period past the last frame of camera `i`.
    fn camera_duration(&self, i: usize) -> u64 {
        let f = &self.index.cameras[i].frames;
        let last = f.last().map_or(0, |x| x[0]);
        let step = if f.len() > 1 {
            last / (f.len() as u64 - 1)
        } else {
            33_000_000
        };
        last + step.max(1)
    }

    /// A replay camera for the episode camera named `name`.
    pub fn camera(&self, name: &str, mode: ReplayMode) -> Result<ReplayCamera, EpisodeError> {
        let i = self
            .index
            .cameras
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| EpisodeError::Invalid {
                path: self.dir.join(EPISODE_FILE),
                message: format!(
                    "no camera `{name}` in the episode (has: {})",
                    self.index
                        .cameras
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let c = &self.index.cameras[i];
        Ok(ReplayCamera {
            name: format!("replay:{}/{}", self.dir.display(), c.name),
            meta: c.clone(),
            data: self.data[i].clone(),
            duration_ns: self.camera_duration(i),
            mode,
            start_ns: None,
            last_index: None,
            seq: 0,
        })
    }

    /// Replays the episode's state, reordered to `names` (the bundle's state names).
    pub fn state_source(
        &self,
        names: &[String],
        mode: ReplayMode,
    ) -> Result<ReplayState, EpisodeError> {
        let st = &self.index.state;
        let mut map = Vec::with_capacity(names.len());
        for n in names {
            let j = st
                .names
                .iter()
                .position(|x| x == n)
                .ok_or_else(|| EpisodeError::Invalid {
                    path: self.dir.join(EPISODE_FILE),
                    message: format!(
                        "state `{n}` needed by the bundle is not recorded (has: {:?})",
                        st.names
                    ),
                })?;
            map.push(j);
        }
        if st.samples.is_empty() && !names.is_empty() {
            return Err(EpisodeError::Invalid {
                path: self.dir.join(EPISODE_FILE),
                message: "no state samples".into(),
            });
        }
        let last = st.samples.last().map_or(0, |s| s.0);
        let step = if st.samples.len() > 1 {
            last / (st.samples.len() as u64 - 1)
        } else {
            33_000_000
        };
        Ok(ReplayState {
            samples: st.samples.clone(),
            map,
            duration_ns: last + step.max(1),
            mode,
            start_ns: None,
            last_index: None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Frames appear when their recorded timestamp is reached, looping at the end.
    RealTime,
    /// Every call yields the next frame, stamped with the caller's time (for benchmarks).
    AsFastAsPossible,
}

/// Plays one recorded camera.
pub struct ReplayCamera {
    name: String,
    meta: EpisodeCamera,
    data: Vec<u8>,
    duration_ns: u64,
    mode: ReplayMode,
    start_ns: Option<u64>,
    last_index: Option<u64>,
    seq: u64,
}

impl std::fmt::Debug for ReplayCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCamera")
            .field("name", &self.name)
            .finish()
    }
}

impl ReplayCamera {
    fn frame_at(&self, i: usize, seq: u64, capture_ns: u64) -> Frame<'_> {
        let [_, off, len] = self.meta.frames[i];
        Frame {
            meta: FrameMeta {
                seq,
                capture_ns,
                width: self.meta.width,
                height: self.meta.height,
                format: self.meta.format,
            },
            data: &self.data[off as usize..(off + len) as usize],
        }
    }
}

impl Camera for ReplayCamera {
    fn name(&self) -> &str {
        &self.name
    }
    fn latest(&mut self, now_ns: u64, _deadline_ns: u64) -> Result<Option<Frame<'_>>, CameraError> {
        let n = self.meta.frames.len();
        match self.mode {
            ReplayMode::AsFastAsPossible => {
                let i = (self.seq % n as u64) as usize;
                self.seq += 1;
                Ok(Some(self.frame_at(i, self.seq - 1, now_ns)))
            }
            ReplayMode::RealTime => {
                let start = *self.start_ns.get_or_insert(now_ns);
                let el = now_ns.saturating_sub(start);
                let lap = el / self.duration_ns;
                let t = el % self.duration_ns;
                // Last frame whose timestamp has been reached in this lap.
                let i = self.meta.frames.partition_point(|f| f[0] <= t).max(1) - 1;
                let global = lap * n as u64 + i as u64;
                if self.last_index == Some(global) {
                    return Ok(None);
                }
                self.last_index = Some(global);
                let capture = start + lap * self.duration_ns + self.meta.frames[i][0];
                Ok(Some(self.frame_at(i, global, capture)))
            }
        }
    }
}

/// Plays recorded proprioceptive state.
#[derive(Debug)]
pub struct ReplayState {
    samples: Vec<(u64, Vec<f32>)>,
    map: Vec<usize>,
    duration_ns: u64,
    mode: ReplayMode,
    start_ns: Option<u64>,
    last_index: Option<u64>,
}

impl StateSource for ReplayState {
    fn name(&self) -> &str {
        "replay-state"
    }
    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
        if self.map.is_empty() {
            return Ok(Some(now_ns));
        }
        if out.len() != self.map.len() {
            return Err(StateError {
                source_name: "replay-state".into(),
                kind: FaultKind::Fatal,
                message: format!(
                    "asked for {} values, replaying {}",
                    out.len(),
                    self.map.len()
                ),
            });
        }
        let n = self.samples.len() as u64;
        let start = *self.start_ns.get_or_insert(now_ns);
        let (i, global, ts) = match self.mode {
            ReplayMode::AsFastAsPossible => {
                let g = self.last_index.map_or(0, |l| l + 1);
                ((g % n) as usize, g, now_ns)
            }
            ReplayMode::RealTime => {
                let el = now_ns.saturating_sub(start);
                let lap = el / self.duration_ns;
                let t = el % self.duration_ns;
                let i = self.samples.partition_point(|s| s.0 <= t).max(1) - 1;
                (
                    i,
                    lap * n + i as u64,
                    start + lap * self.duration_ns + self.samples[i].0,
                )
            }
        };
        if self.last_index == Some(global) {
            return Ok(None);
        }
        self.last_index = Some(global);
        let v = &self.samples[i].1;
        for (o, &j) in out.iter_mut().zip(&self.map) {
            *o = v[j];
        }
        Ok(Some(ts))
    }
}

/// Writes a synthetic episode matching a bundle's cameras and state: a textured background with
/// a colored square moving along a smooth path, and joint trajectories that follow it inside the
/// bundle's action limits. Deterministic (same arguments, same bytes).
///
/// `dir` is a new or empty folder, or an episode folder ([`is_episode_dir`]) that is replaced;
/// a folder holding anything else is refused. Written in a staging folder renamed into place
/// (see [`reflex_models::output`]).
pub fn generate_synthetic_episode(
    manifest: &Manifest,
    target: &Path,
    seconds: f64,
    fps: u32,
) -> Result<(), EpisodeError> {
    let out = OutDir::prepare(target, Replace::Ours, &EPISODE_KIND)?;
    let dir = &out.path();
    write_synthetic_episode(manifest, dir, seconds, fps).map_err(|e| match e {
        EpisodeError::Io { path, source } => EpisodeError::Io {
            path: target.join(path.strip_prefix(dir).unwrap_or(&path)),
            source,
        },
        EpisodeError::Invalid { path, message } => EpisodeError::Invalid {
            path: target.join(path.strip_prefix(dir).unwrap_or(&path)),
            message,
        },
        e => e,
    })?;
    out.commit()?;
    Ok(())
}

fn write_synthetic_episode(
    manifest: &Manifest,
    dir: &Path,
    seconds: f64,
    fps: u32,
) -> Result<(), EpisodeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EpisodeError::Io { path, source }
    };
    let n = ((seconds * fps as f64).round() as usize).max(2);
    let period = 1_000_000_000u64 / fps.max(1) as u64;
    let mut cameras = Vec::new();
    for cam in &manifest.cameras {
        let (w, h, fmt) = (cam.capture.width, cam.capture.height, cam.capture.format);
        let file = format!("{}.frames", cam.name);
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for k in 0..n {
            let phase = k as f32 / n as f32 * std::f32::consts::TAU;
            let off = bytes.len() as u64;
            render_frame(&mut bytes, w, h, fmt, phase).map_err(|message| {
                EpisodeError::Invalid {
                    path: dir.join(&file),
                    message: format!("camera `{}`: {message}", cam.name),
                }
            })?;
            frames.push([k as u64 * period, off, bytes.len() as u64 - off]);
        }
        let p = dir.join(&file);
        std::fs::write(&p, &bytes).map_err(io(&p))?;
        cameras.push(EpisodeCamera {
            name: cam.name.clone(),
            width: w,
            height: h,
            format: fmt,
            file,
            frames,
        });
    }
    let names = manifest.state.names.clone();
    let limits = manifest.action.limits.as_ref();
    let mut samples = Vec::new();
    for k in 0..n {
        let phase = k as f32 / n as f32 * std::f32::consts::TAU;
        let v: Vec<f32> = names
            .iter()
            .enumerate()
            .map(|(j, name)| {
                // Inside the action limits of the same-named joint, else in [-0.5, 0.5].
                let (lo, hi) = limits
                    .and_then(|l| {
                        manifest
                            .action
                            .names
                            .iter()
                            .position(|a| a == name)
                            .map(|i| (l.min[i], l.max[i]))
                    })
                    .unwrap_or((-0.5, 0.5));
                let mid = 0.5 * (lo + hi);
                let amp = 0.25 * (hi - lo);
                mid + amp * (phase + j as f32 * 0.7).sin()
            })
            .collect();
        samples.push((k as u64 * period, v));
    }
    let index = EpisodeIndex {
        format: "reflex-episode-v1".into(),
        cameras,
        state: EpisodeState { names, samples },
    };
    let p = dir.join(EPISODE_FILE);
    let text = serde_json::to_string(&index).map_err(|e| EpisodeError::Invalid {
        path: p.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&p, text).map_err(io(&p))
}

fn render_frame(
    out: &mut Vec<u8>,
    w: u32,
    h: u32,
    fmt: PixelFormat,
    phase: f32,
) -> Result<(), String> {
    let (cx, cy) = (
        (0.5 + 0.3 * phase.cos()) * w as f32,
        (0.5 + 0.3 * (2.0 * phase).sin()) * h as f32,
    );
    let half = w.min(h) as f32 * 0.12;
    let rgb = |x: u32, y: u32| -> [u8; 3] {
        let (fx, fy) = (x as f32, y as f32);
        if (fx - cx).abs() < half && (fy - cy).abs() < half {
            [220, 40, 30]
        } else {
            let checker = ((x / 40 + y / 40) % 2) as u8 * 30;
            [
                (fx / w as f32 * 120.0) as u8 + checker,
                (fy / h as f32 * 120.0) as u8 + checker,
                90 + checker,
            ]
        }
    };
    // BT.601 limited range, the inverse of what the preprocessor decodes.
    let yuv = |[r, g, b]: [u8; 3]| {
        let (r, g, b) = (r as f32, g as f32, b as f32);
        let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
        let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
        let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
        (y.round() as u8, u.round() as u8, v.round() as u8)
    };
    match fmt {
        PixelFormat::Rgb24 => {
            for y in 0..h {
                for x in 0..w {
                    out.extend_from_slice(&rgb(x, y));
                }
            }
        }
        PixelFormat::Grey => {
            for y in 0..h {
                for x in 0..w {
                    let [r, g, b] = rgb(x, y);
                    out.push(
                        (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32).round() as u8,
                    );
                }
            }
        }
        PixelFormat::Yuyv => {
            for y in 0..h {
                for x in (0..w).step_by(2) {
                    let (y0, u0, v0) = yuv(rgb(x, y));
                    let (y1, u1, v1) = yuv(rgb(x + 1, y));
                    out.extend_from_slice(&[
                        y0,
                        ((u0 as u16 + u1 as u16) / 2) as u8,
                        y1,
                        ((v0 as u16 + v1 as u16) / 2) as u8,
                    ]);
                }
            }
        }
        PixelFormat::Nv12 => {
            // The Y plane, then each 2x2 block's averaged U, V.
            for y in 0..h {
                for x in 0..w {
                    out.push(yuv(rgb(x, y)).0);
                }
            }
            for y in (0..h).step_by(2) {
                for x in (0..w).step_by(2) {
                    let px = [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)].map(|(x, y)| {
                        let (_, u, v) = yuv(rgb(x.min(w - 1), y.min(h - 1)));
                        (u as u16, v as u16)
                    });
                    let u = px.iter().map(|p| p.0).sum::<u16>() / 4;
                    let v = px.iter().map(|p| p.1).sum::<u16>() / 4;
                    out.extend_from_slice(&[u as u8, v as u8]);
                }
            }
        }
        PixelFormat::Mjpeg => return Err(
            "the synthetic generator writes raw formats only (yuyv, nv12, rgb24, grey), not mjpeg"
                .into(),
        ),
    }
    Ok(())
}
