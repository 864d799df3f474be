//! Image files of the fidelity tools: PNG and JPEG frames read as 8-bit RGB, PNGs written
//! (difference images, heatmaps), and the colour map they use.
//!
//! PNG through image-rs's `png` codec (8-bit and 16-bit, grey, grey + alpha, RGB, RGBA,
//! palette: all expanded to 8-bit RGB, alpha dropped); JPEG through `zune-jpeg`, as the runtime
//! decodes MJPEG (its output can differ from libjpeg's, which PIL uses, by a level or two: prefer
//! PNG frames for exact comparisons).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// An 8-bit RGB picture, packed `R G B` row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    /// `3 * width * height` bytes.
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// A black picture.
    pub fn new(width: usize, height: usize) -> Rgb8 {
        Rgb8 {
            width,
            height,
            data: vec![0; 3 * width * height],
        }
    }

    /// The pixel at `(x, y)`.
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sets the pixel at `(x, y)`.
    pub fn put(&mut self, x: usize, y: usize, px: [u8; 3]) {
        let i = 3 * (y * self.width + x);
        self.data[i..i + 3].copy_from_slice(&px);
    }
}

/// True for the file names the tools read as frames (`.png`, `.jpg`, `.jpeg`, any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The frames in `dir` (see [`is_image`]), sorted by name. Errors if there are none.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{}: no .png or .jpg frames in this folder", dir.display());
    }
    Ok(v)
}

/// Reads a PNG or JPEG file as 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "png" {
        decode_png(&bytes).with_context(|| format!("{}: not a readable PNG", path.display()))
    } else if ext == "jpg" || ext == "jpeg" {
        decode_jpeg(&bytes).with_context(|| format!("{}: not a readable JPEG", path.display()))
    } else {
        bail!("{}: expected a .png or .jpg file", path.display())
    }
}

fn decode_png(bytes: &[u8]) -> Result<Rgb8> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info()?;
    let size = reader
        .output_buffer_size()
        .context("PNG too large for this machine")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let px = &buf[..info.buffer_size()];
    let stride = info.line_size;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("palette PNG was not expanded"),
    };
    let mut out = Rgb8::new(w, h);
    for y in 0..h {
        let row = &px[y * stride..];
        for x in 0..w {
            let p = &row[x * channels..x * channels + channels];
            let rgb = if channels >= 3 {
                [p[0], p[1], p[2]]
            } else {
                [p[0]; 3]
            };
            out.put(x, y, rgb);
        }
    }
    Ok(out)
}

fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(bytes, opts);
    let data = dec.decode().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (w, h) = dec.dimensions().context("JPEG without dimensions")?;
    if data.len() != 3 * w * h {
        bail!("decoded {} bytes for {w}x{h} RGB", data.len());
    }
    Ok(Rgb8 {
        width: w,
        height: h,
        data,
    })
}

/// Writes an 8-bit RGB PNG (parent folders created).
pub fn write_png(path: &Path, img: &Rgb8) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        img.width as u32,
        img.height as u32,
    );
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    w.write_image_data(&img.data)
        .with_context(|| format!("writing {}", path.display()))?;
    w.finish()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The "inferno"-like colour of `t` in `[0, 1]` (black, purple, red, orange, pale yellow):
/// piecewise linear through five stops of matplotlib's inferno map, so that more reads as
/// brighter in colour and in grey.
pub fn heat_colour(t: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [87.0, 16.0, 110.0],
        [188.0, 55.0, 84.0],
        [249.0, 142.0, 9.0],
        [252.0, 255.0, 164.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let f = t * (STOPS.len() - 1) as f64;
    let i = (f.floor() as usize).min(STOPS.len() - 2);
    let u = f - i as f64;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (STOPS[i][c] * (1.0 - u) + STOPS[i + 1][c] * u).round() as u8;
    }
    out
}

/// `map` (`mw x mh` values, row by row) as a heat overlay on `base`: each pixel of `base` takes
/// the map's value at its position (nearest cell), normalized by `max` (0 = the base picture
/// darkened, `max` = full heat colour), blended half and half with the picture's grey.
pub fn overlay_heat(base: &Rgb8, map: &[f64], mw: usize, mh: usize, max: f64) -> Rgb8 {
    let mut out = Rgb8::new(base.width, base.height);
    for y in 0..base.height {
        for x in 0..base.width {
            let (cx, cy) = (x * mw / base.width, y * mh / base.height);
            let t = if max > 0.0 {
                map[cy * mw + cx] / max
            } else {
                0.0
            };
            let heat = heat_colour(t);
            let [r, g, b] = base.get(x, y);
            let grey = (0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)) * 0.6;
            let px = [0, 1, 2].map(|c| (0.45 * grey + 0.55 * f64::from(heat[c])).round() as u8);
            out.put(x, y, px);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("reflex-images-{}", std::process::id()));
        let mut img = Rgb8::new(5, 3);
        for y in 0..3 {
            for x in 0..5 {
                img.put(x, y, [x as u8 * 40, y as u8 * 90, 7]);
            }
        }
        let p = dir.join("a.png");
        write_png(&p, &img).expect("writes");
        assert_eq!(read_rgb(&p).expect("reads"), img);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn heat_colours_brighten() {
        let luma = |c: [u8; 3]| {
            0.299 * f64::from(c[0]) + 0.587 * f64::from(c[1]) + 0.114 * f64::from(c[2])
        };
        let steps: Vec<f64> = (0..=10)
            .map(|i| luma(heat_colour(i as f64 / 10.0)))
            .collect();
        assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
    }
}
