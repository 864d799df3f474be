//! Recording episodes: frames from cameras and joint state, written as a `reflex-episode-v1`
//! folder, the format [`super::replay`] plays (`reflex record`, then `reflex run --camera
//! replay:DIR`).
//!
//! The format (documented in the README): `episode.json` with `format`, `cameras` (name, width,
//! height, pixel format, the frame file and `[t_ns, offset, len]` per frame) and `state` (names
//! and `[t_ns, values]` samples), plus one raw frame file per camera holding the frames' bytes
//! back to back, exactly as the camera delivered them. Times are nanoseconds from the first
//! recorded frame or sample.

use super::replay::{
    EpisodeCamera, EpisodeError, EpisodeIndex, EpisodeState, EPISODE_FILE, EPISODE_KIND,
};
use crate::io::Frame;
use reflex_models::manifest::PixelFormat;
use reflex_models::output::{OutDir, Replace};
use std::path::Path;

/// The format name written in `episode.json`.
pub const EPISODE_FORMAT: &str = "reflex-episode-v1";

/// One camera's recording so far.
#[derive(Debug)]
struct CameraTrack {
    name: String,
    /// Size and format of the first frame; every later frame must match.
    mode: Option<(u32, u32, PixelFormat)>,
    bytes: Vec<u8>,
    /// `[t_ns, offset, len]`, `t_ns` on the recorder's clock until [`EpisodeRecorder::write`].
    frames: Vec<[u64; 3]>,
}

/// Collects frames and state samples in memory (recording is not the control loop: it
/// allocates as frames arrive), then writes the episode folder atomically.
#[derive(Debug)]
pub struct EpisodeRecorder {
    cameras: Vec<CameraTrack>,
    state_names: Vec<String>,
    samples: Vec<(u64, Vec<f32>)>,
}

impl EpisodeRecorder {
    /// A recorder for the named cameras (episode order) and state names.
    pub fn new(cameras: &[String], state_names: &[String]) -> Self {
        EpisodeRecorder {
            cameras: cameras
                .iter()
                .map(|n| CameraTrack {
                    name: n.clone(),
                    mode: None,
                    bytes: vec![],
                    frames: vec![],
                })
                .collect(),
            state_names: state_names.to_vec(),
            samples: vec![],
        }
    }

    /// Adds camera `cam`'s frame, stamped with its capture time (ns, any monotonic clock shared
    /// with the state samples). Errors: a frame of another size or format than the camera's
    /// first (the episode format has one mode per camera).
    pub fn add_frame(&mut self, cam: usize, frame: &Frame<'_>) -> Result<(), String> {
        let t = &mut self.cameras[cam];
        let m = (frame.meta.width, frame.meta.height, frame.meta.format);
        match t.mode {
            None => t.mode = Some(m),
            Some(first) if first != m => {
                return Err(format!(
                    "camera `{}`: frame of {}x{} {} after frames of {}x{} {}",
                    t.name,
                    m.0,
                    m.1,
                    m.2.as_str(),
                    first.0,
                    first.1,
                    first.2.as_str()
                ))
            }
            Some(_) => {}
        }
        let off = t.bytes.len() as u64;
        t.bytes.extend_from_slice(frame.data);
        t.frames
            .push([frame.meta.capture_ns, off, frame.data.len() as u64]);
        Ok(())
    }

    /// Adds a joint-state sample (state names order) taken at `t_ns`.
    pub fn add_state(&mut self, t_ns: u64, values: &[f32]) {
        self.samples.push((t_ns, values.to_vec()));
    }

    /// Frames recorded per camera.
    pub fn frame_counts(&self) -> Vec<usize> {
        self.cameras.iter().map(|c| c.frames.len()).collect()
    }

    /// State samples recorded.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// The output folder for [`EpisodeRecorder::write`], checked before recording starts: a
    /// new or empty folder, or an episode with `replace` (never a folder holding anything else).
    pub fn prepare_out(target: &Path, replace: Replace) -> Result<OutDir, EpisodeError> {
        Ok(OutDir::prepare(target, replace, &EPISODE_KIND)?)
    }

    /// Writes the episode into `out` (from [`EpisodeRecorder::prepare_out`]), loaded back before
    /// it is renamed into place. Times are shifted so the first frame or sample is at 0.
    /// Errors: a camera with no frame, no state sample, an unwritable target (named).
    pub fn write(self, out: OutDir) -> Result<(), EpisodeError> {
        let target = &out.target().to_path_buf();
        let invalid = |message: String| EpisodeError::Invalid {
            path: target.to_path_buf(),
            message,
        };
        if let Some(c) = self.cameras.iter().find(|c| c.frames.is_empty()) {
            return Err(invalid(format!("camera `{}` delivered no frame", c.name)));
        }
        if self.samples.is_empty() {
            return Err(invalid("the state source delivered no sample".into()));
        }
        let t0 = self
            .cameras
            .iter()
            .flat_map(|c| c.frames.iter().map(|f| f[0]))
            .chain(self.samples.iter().map(|s| s.0))
            .min()
            .unwrap_or(0);
        let dir = out.path();
        let io = |p: &Path| {
            let path = target.join(p.strip_prefix(&dir).unwrap_or(p));
            move |source| EpisodeError::Io { path, source }
        };
        let mut cameras = vec![];
        for c in self.cameras {
            let (width, height, format) = c.mode.unwrap_or((0, 0, PixelFormat::Rgb24));
            let file = format!("{}.frames", c.name);
            let p = dir.join(&file);
            std::fs::write(&p, &c.bytes).map_err(io(&p))?;
            cameras.push(EpisodeCamera {
                name: c.name,
                width,
                height,
                format,
                file,
                frames: c
                    .frames
                    .into_iter()
                    .map(|[t, o, l]| [t - t0, o, l])
                    .collect(),
            });
        }
        let index = EpisodeIndex {
            format: EPISODE_FORMAT.into(),
            cameras,
            state: EpisodeState {
                names: self.state_names,
                samples: self.samples.into_iter().map(|(t, v)| (t - t0, v)).collect(),
            },
        };
        let p = dir.join(EPISODE_FILE);
        let text = serde_json::to_string(&index).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(&p, text).map_err(io(&p))?;
        super::replay::Episode::load(&dir)
            .map_err(|e| invalid(format!("does not load back: {e}")))?;
        out.commit()?;
        Ok(())
    }
}
