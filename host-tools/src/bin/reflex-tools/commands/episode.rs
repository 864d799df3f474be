//! `reflex-tools episode`: make replay episodes (`reflex-episode-v1`, what `reflex run --camera
//! replay:DIR` plays); the work is [`reflex_tools::episode`].

use anyhow::Result;
use reflex_tools::episode::{from_images, FromImagesArgs};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// An episode from a folder of camera images (PNG or JPEG, one per frame, in file-name
    /// order) and a joint-state file (CSV or .npy, one row per image). Replay it with
    /// `reflex run --camera replay:OUT`. To record one from a camera, use `reflex record`.
    FromImages(FromImagesCli),
}

#[derive(clap::Args)]
pub struct FromImagesCli {
    /// Folder of images, one per frame, taken in file-name order: .png (stored as rgb24) or
    /// .jpg/.jpeg (stored as mjpeg frames, as a UVC camera sends them). One size for all.
    #[arg(long)]
    images: PathBuf,
    /// Joint state, one row per image: a .csv file (numbers separated by commas; a first row
    /// of names is taken as the state names) or a .npy array [frames, dims].
    #[arg(long)]
    state: PathBuf,
    /// Frame rate of the images: frame k is at k / FPS seconds.
    #[arg(long)]
    fps: f64,
    /// The camera's name in the episode (default: the --bundle's first camera, else `front`).
    #[arg(long)]
    camera: Option<String>,
    /// State names, comma-separated (default: the CSV header, else the --bundle's state names).
    #[arg(long, value_delimiter = ',')]
    state_names: Option<Vec<String>>,
    /// A bundle whose camera and state names the episode takes (it will be replayed with it).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Output episode folder: a new or empty folder, or an episode with --force.
    #[arg(long)]
    out: PathBuf,
    /// Replace the episode already at --out (only a reflex episode: never other files).
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::FromImages(a) => {
            let n = from_images(&FromImagesArgs {
                images: a.images,
                state: a.state,
                fps: a.fps,
                camera: a.camera,
                state_names: a.state_names,
                bundle: a.bundle,
                out: a.out.clone(),
                force: a.force,
            })?;
            println!("wrote {} ({n} frames)", a.out.display());
            Ok(())
        }
    }
}
