//! `reflex-tools export --reference-frames DIR`: a few training frames per camera stored in the
//! bundle, for the camera viewpoint check on the robot (`reflex check --cameras`, the start of
//! `reflex run`; see `reflex_runtime::camera::viewpoint`).
//!
//! `DIR/CAMERA/` holds frames of camera `CAMERA` from the training data (PNG or JPEG, at the
//! camera's capture size: the raw frames, before crop and resize); for a one-camera bundle the
//! frames may also sit in `DIR` itself. Up to [`MAX_FRAMES`] of them, evenly spaced in name
//! order, are stored as `reference/CAMERA/N.npy`: their ITU-R 601 luma, block-mean downscaled to
//! about [`TARGET_WIDTH`] pixels wide, rounded to uint8. Their mean R, G, B and sharpness at
//! capture size go into the camera's `viewpoint` table with the default thresholds.

use crate::images::{list_images, read_rgb};
use anyhow::{bail, Context, Result};
use reflex_models::manifest::{Manifest, ViewpointSpec, ViewpointThresholds};
use reflex_models::npy::{write_npy, NpyArray, NpyData};
use reflex_runtime::camera::viewpoint::RgbPlanes;
use std::path::Path;

/// Frames stored per camera at most.
pub const MAX_FRAMES: usize = 8;
/// Width the reference frames are downscaled to, about (an integer factor of the capture width).
pub const TARGET_WIDTH: usize = 160;

/// Adds the reference frames found in `dir` to every camera of `m` that has some, writing the
/// `.npy` files under `bundle_dir` (the staging folder of the bundle being written). A camera
/// without frames is left without a check, and said so in the returned notes; no camera with
/// frames at all is an error.
pub fn add_reference_frames(
    m: &mut Manifest,
    dir: &Path,
    bundle_dir: &Path,
) -> Result<Vec<String>> {
    let single = m.cameras.len() == 1;
    let mut notes = Vec::new();
    let mut any = false;
    for cam in &mut m.cameras {
        let sub = dir.join(&cam.name);
        let src = if sub.is_dir() {
            sub
        } else if single {
            dir.to_path_buf()
        } else {
            notes.push(format!(
                "camera `{}`: no folder {} (no viewpoint check for it)",
                cam.name,
                sub.display()
            ));
            continue;
        };
        let all = list_images(&src)
            .with_context(|| format!("--reference-frames for camera `{}`", cam.name))?;
        let step = all.len().div_ceil(MAX_FRAMES).max(1);
        let (w, h) = (cam.capture.width as usize, cam.capture.height as usize);
        let downscale = (w / TARGET_WIDTH).max(1).min(w.min(h) / 32).max(1);
        let mut frames = Vec::new();
        let (mut mean, mut sharp) = ([0f64; 3], 0f64);
        let picked: Vec<_> = all.iter().step_by(step).collect();
        for (k, path) in picked.iter().enumerate() {
            let img = read_rgb(path)?;
            if (img.width, img.height) != (w, h) {
                bail!(
                    "{}: {}x{} pixels, but camera `{}` captures {w}x{h} (give raw training frames \
                     at the capture size, before crop and resize)",
                    path.display(),
                    img.width,
                    img.height,
                    cam.name
                );
            }
            let planes = RgbPlanes::from_rgb8(w, h, &img.data);
            let stats = planes.stats();
            for (m, v) in mean.iter_mut().zip(stats.mean_rgb) {
                *m += v / picked.len() as f64;
            }
            sharp += stats.sharpness / picked.len() as f64;
            let grey = planes.luma().downscale(downscale);
            let rel = format!("reference/{}/{k}.npy", cam.name);
            let out = bundle_dir.join(&rel);
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
            }
            let array = NpyArray {
                shape: vec![grey.height, grey.width],
                data: NpyData::U8(
                    grey.pixels
                        .iter()
                        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
                        .collect(),
                ),
            };
            write_npy(&out, &array)?;
            frames.push(rel);
        }
        notes.push(format!(
            "camera `{}`: {} reference frame(s) of {} in {}, stored at 1/{downscale} size",
            cam.name,
            frames.len(),
            all.len(),
            src.display()
        ));
        cam.viewpoint = Some(ViewpointSpec {
            frames,
            downscale: downscale as u32,
            mean_rgb: mean,
            sharpness: sharp,
            thresholds: ViewpointThresholds::default(),
        });
        any = true;
    }
    if !any {
        bail!(
            "--reference-frames {}: no frames for any camera (expected a folder per camera: {})",
            dir.display(),
            m.cameras
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(notes)
}
