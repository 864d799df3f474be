//! `reflex-tools episode from-images`: a `reflex-episode-v1` folder (what `reflex run --camera
//! replay:DIR` plays, `reflex_runtime::camera::replay`) from a folder of camera images and a
//! joint-state file, as datasets are often kept (LeRobot's image writer saves one PNG per frame).
//!
//! Images are taken in file-name order, one per frame, at `--fps`: PNG (8-bit RGB, RGBA, grey;
//! decoded with the `png` crate and stored as `rgb24`) or JPEG (kept as they are, stored as
//! `mjpeg` frames, which the runtime decodes as it decodes a UVC camera's). All images must
//! have one size and one kind. State: a CSV file (one row per frame; a first row of names is
//! used as the state names) or a `.npy` array `[frames, dims]`; one state row per image.
//! Names come from `--state-names`, else the CSV header, else the `--bundle`'s state names.

use anyhow::{bail, ensure, Context, Result};
use reflex_models::manifest::PixelFormat;
use reflex_models::output::{OutDir, Replace};
use reflex_runtime::camera::replay::{
    EpisodeCamera, EpisodeIndex, EpisodeState, EPISODE_FILE, EPISODE_KIND,
};
use std::path::{Path, PathBuf};

/// The episode format written (the one `reflex_runtime::camera::replay` reads).
pub const EPISODE_FORMAT: &str = "reflex-episode-v1";

/// What to convert and where: the `reflex-tools episode from-images` flags.
#[derive(Debug, Clone)]
pub struct FromImagesArgs {
    /// Folder of images, one per frame, in file-name order (`.png`, `.jpg`, `.jpeg`).
    pub images: PathBuf,
    /// Joint state: `.csv` (one row per image, optional header of names) or `.npy` `[N, D]`.
    pub state: PathBuf,
    /// Frames per second of the images (their timestamps are `k / fps`).
    pub fps: f64,
    /// Camera name in the episode (default: the bundle's first camera, else `front`).
    pub camera: Option<String>,
    /// State names (default: the CSV header, else the bundle's state names).
    pub state_names: Option<Vec<String>>,
    /// A bundle to take the camera and state names from.
    pub bundle: Option<PathBuf>,
    /// Output episode folder: new, empty, or an episode (replaced with `force`).
    pub out: PathBuf,
    /// Replace the episode already at `out` (never a folder holding anything else).
    pub force: bool,
}

/// One image file's frame: its pixels as the episode stores them.
struct Image {
    width: u32,
    height: u32,
    format: PixelFormat,
    bytes: Vec<u8>,
}

/// Reads a PNG as packed RGB24 (grey, grey+alpha and RGBA expanded or dropped; 16-bit samples
/// reduced to their high byte, as `png`'s `STRIP_16` does).
fn read_png(path: &Path) -> Result<Image> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("{}: not a PNG image", path.display()))?;
    let size = reader
        .output_buffer_size()
        .with_context(|| format!("{}: image too large", path.display()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("{}: cannot decode the PNG image", path.display()))?;
    buf.truncate(info.buffer_size());
    let px = (info.width * info.height) as usize;
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        other => bail!(
            "{}: PNG color type {other:?} after expansion",
            path.display()
        ),
    };
    ensure!(
        rgb.len() == px * 3,
        "{}: decoded {} bytes for {}x{} RGB",
        path.display(),
        rgb.len(),
        info.width,
        info.height
    );
    Ok(Image {
        width: info.width,
        height: info.height,
        format: PixelFormat::Rgb24,
        bytes: rgb,
    })
}

/// A JPEG kept as it is (an MJPEG frame); its size from its header (`zune-jpeg`).
fn read_jpeg(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut d = zune_jpeg::JpegDecoder::new(bytes.as_slice());
    d.decode_headers()
        .map_err(|e| anyhow::anyhow!("{}: not a baseline JPEG: {e:?}", path.display()))?;
    let (w, h) = d
        .dimensions()
        .with_context(|| format!("{}: JPEG without dimensions", path.display()))?;
    Ok(Image {
        width: w as u32,
        height: h as u32,
        format: PixelFormat::Mjpeg,
        bytes,
    })
}

/// The image files of `dir` in file-name order.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the image folder {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    v.sort();
    ensure!(
        !v.is_empty(),
        "{}: no .png, .jpg or .jpeg images in the folder",
        dir.display()
    );
    Ok(v)
}

/// State rows, and the names a file's header gives (CSV only).
type StateRows = (Vec<Vec<f32>>, Option<Vec<String>>);

/// The state rows of a CSV file, and its header's names if its first row is not numbers.
fn read_state_csv(path: &Path) -> Result<StateRows> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = vec![];
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = cells.iter().map(|c| c.parse::<f32>()).collect();
        match parsed {
            Ok(v) => {
                if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
                    bail!(
                        "{}: line {}, column {}: not a finite number",
                        path.display(),
                        i + 1,
                        bad + 1
                    );
                }
                rows.push(v)
            }
            Err(_) if rows.is_empty() && header.is_none() => {
                header = Some(cells.iter().map(|c| c.to_string()).collect())
            }
            Err(e) => bail!(
                "{}: line {}: {e} (expected numbers separated by commas)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok((rows, header))
}

/// The state rows of a `.npy` array `[N, D]` (any float or integer dtype, as f32).
fn read_state_npy(path: &Path) -> Result<Vec<Vec<f32>>> {
    let a = reflex_models::npy::read_npy(path)?;
    let [n, d] = a.shape[..] else {
        bail!(
            "{}: shape {:?}; expected [frames, state dims]",
            path.display(),
            a.shape
        );
    };
    let v = a.data.to_f32();
    ensure!(
        d > 0 && v.len() == n * d,
        "{}: empty state array",
        path.display()
    );
    Ok(v.chunks_exact(d).map(<[f32]>::to_vec).collect())
}

/// Converts and writes the episode (staged in a sibling folder, renamed into place). Returns
/// the number of frames. Errors name the image, the state file and line, or the flag to set.
pub fn from_images(a: &FromImagesArgs) -> Result<usize> {
    ensure!(
        a.fps > 0.0 && a.fps.is_finite(),
        "--fps {}: must be > 0",
        a.fps
    );
    let out = OutDir::prepare(&a.out, Replace::ours_if(a.force), &EPISODE_KIND)?;
    let bundle = a
        .bundle
        .as_ref()
        .map(reflex_models::Bundle::load)
        .transpose()?;
    let files = image_files(&a.images)?;
    let ext = a.state.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (rows, header) = match ext {
        "csv" => read_state_csv(&a.state)?,
        "npy" => (read_state_npy(&a.state)?, None),
        _ => bail!(
            "--state {}: expected a .csv or .npy file",
            a.state.display()
        ),
    };
    ensure!(
        rows.len() == files.len(),
        "{} holds {} state rows, {} holds {} images: one state row per image",
        a.state.display(),
        rows.len(),
        a.images.display(),
        files.len()
    );
    let names = match (&a.state_names, header, &bundle) {
        (Some(n), _, _) => n.clone(),
        (None, Some(h), _) => h,
        (None, None, Some(b)) => b.manifest.state.names.clone(),
        (None, None, None) => bail!(
            "{}: no state names: give --state-names a,b,... or --bundle (its state names), or a \
             CSV header row",
            a.state.display()
        ),
    };
    if let Some(bad) = rows.iter().position(|r| r.len() != names.len()) {
        bail!(
            "{}: row {} has {} values for {} state names ({})",
            a.state.display(),
            bad + 1,
            rows[bad].len(),
            names.len(),
            names.join(", ")
        );
    }
    let camera = a
        .camera
        .clone()
        .or_else(|| {
            bundle
                .as_ref()
                .and_then(|b| Some(b.manifest.cameras.first()?.name.clone()))
        })
        .unwrap_or_else(|| "front".into());

    let period_ns = 1e9 / a.fps;
    let mut bytes = vec![];
    let mut frames = vec![];
    let mut first: Option<(u32, u32, PixelFormat, &Path)> = None;
    for (k, f) in files.iter().enumerate() {
        let png = f
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        let img = if png { read_png(f)? } else { read_jpeg(f)? };
        match first {
            None => first = Some((img.width, img.height, img.format, f)),
            Some((w, h, fmt, p)) => ensure!(
                (w, h, fmt) == (img.width, img.height, img.format),
                "{}: {}x{} {}, but {} is {w}x{h} {}: every frame needs one size and kind",
                f.display(),
                img.width,
                img.height,
                img.format.as_str(),
                p.display(),
                fmt.as_str()
            ),
        }
        let off = bytes.len() as u64;
        bytes.extend_from_slice(&img.bytes);
        let t = (k as f64 * period_ns).round() as u64;
        frames.push([t, off, img.bytes.len() as u64]);
    }
    let (width, height, format, _) = first.context("no images")?;
    let file = format!("{camera}.frames");
    let dir = out.path();
    let p = dir.join(&file);
    std::fs::write(&p, &bytes)
        .with_context(|| format!("writing {}", a.out.join(&file).display()))?;
    let samples = rows
        .into_iter()
        .enumerate()
        .map(|(k, r)| ((k as f64 * period_ns).round() as u64, r))
        .collect();
    let index = EpisodeIndex {
        format: EPISODE_FORMAT.into(),
        cameras: vec![EpisodeCamera {
            name: camera,
            width,
            height,
            format,
            file,
            frames,
        }],
        state: EpisodeState { names, samples },
    };
    let ip = dir.join(EPISODE_FILE);
    std::fs::write(&ip, serde_json::to_string(&index)?)
        .with_context(|| format!("writing {}", a.out.join(EPISODE_FILE).display()))?;
    // Read back as the runtime will, before it is put in place.
    reflex_runtime::camera::replay::Episode::load(&dir)
        .with_context(|| format!("{}: the episode does not load back", a.out.display()))?;
    out.commit()?;
    Ok(files.len())
}
