//! Opening what the typed command-line specs name, for one bundle.

use anyhow::{Context, Result};
use reflex_board::input::SafetyInput;
use reflex_models::output;
use reflex_models::Bundle;
use reflex_runtime::camera::replay::{Episode, ReplayMode};
use reflex_runtime::camera::v4l2::V4l2Camera;
use reflex_runtime::can::codec::{Codec, Frames};
use reflex_runtime::can::sink::{CandumpSink, NullSink};
use reflex_runtime::can::socketcan::{
    CanInputKind, CanSafetyInput, SocketCanSink, SocketCanStateSource,
};
use reflex_runtime::clock::Clock;
use reflex_runtime::control::estop::EStop;
use reflex_runtime::io::{Camera, CommandSink, StateSource};
use reflex_runtime::spec::{
    assign_cameras, CameraInput, CameraSource, SafetyInputSpec, SinkSpec, StateSourceSpec,
};
use std::path::{Path, PathBuf};

/// Loads a bundle, naming it in the error.
pub fn load_bundle(path: &Path) -> Result<Bundle> {
    Bundle::load(path).with_context(|| format!("loading bundle {}", path.display()))
}

/// Opened cameras in bundle order, and the first replayed episode's directory.
pub type OpenedCameras = (Vec<Box<dyn Camera>>, Option<PathBuf>);

/// The devices of one bundle. The CAN codec (read from the bundle's `[can]` section, perhaps a
/// DBC file) is built at most once, on first use, and shared by the state source and the sink.
pub struct Devices<'b> {
    bundle: &'b Bundle,
    codec: Option<Codec>,
}

impl<'b> Devices<'b> {
    pub fn new(bundle: &'b Bundle) -> Self {
        Devices {
            bundle,
            codec: None,
        }
    }

    /// The bundle's codec (built on the first call).
    pub fn codec(&mut self) -> Result<Codec> {
        if let Some(c) = &self.codec {
            return Ok(c.clone());
        }
        let c = Codec::from_bundle(self.bundle)?;
        self.codec = Some(c.clone());
        Ok(c)
    }

    /// The cameras in bundle order, and the first replayed episode's directory (the default
    /// state source).
    pub fn cameras(&self, sources: &[CameraSource]) -> Result<OpenedCameras> {
        let m = &self.bundle.manifest;
        let names: Vec<String> = m.cameras.iter().map(|c| c.name.clone()).collect();
        let inputs = assign_cameras(&names, sources)?;
        let mut cams: Vec<Box<dyn Camera>> = vec![];
        let mut first_episode = None;
        for (spec, input) in m.cameras.iter().zip(inputs) {
            match input {
                CameraInput::Replay(dir) => {
                    let ep = Episode::load(&dir)?;
                    cams.push(Box::new(ep.camera(&spec.name, ReplayMode::RealTime)?));
                    first_episode.get_or_insert(dir);
                }
                CameraInput::V4l2(dev) => {
                    cams.push(Box::new(V4l2Camera::open(&dev, &spec.capture)?));
                }
            }
        }
        Ok((cams, first_episode))
    }

    /// The joint state source: `spec`, else the episode `default_episode`.
    pub fn state(
        &mut self,
        spec: Option<&StateSourceSpec>,
        default_episode: Option<&Path>,
    ) -> Result<Box<dyn StateSource>> {
        let dir = match spec {
            Some(s @ StateSourceSpec::Can { iface, base_id }) => {
                let codec = self.codec()?;
                let decoder = codec
                    .feedback(&self.bundle.manifest.state.names, *base_id)
                    .with_context(|| format!("--state {s}"))?;
                let mut requests = Frames::new();
                codec.state_request_frames(&mut requests)?;
                let src = SocketCanStateSource::open(iface, decoder, requests)
                    .with_context(|| format!("opening joint feedback on {iface}"))?;
                return Ok(Box::new(src));
            }
            Some(StateSourceSpec::Replay(dir)) => dir.clone(),
            None => default_episode
                .context("no --state given and no replay camera to take state from")?
                .to_path_buf(),
        };
        let ep = Episode::load(&dir)?;
        Ok(Box::new(ep.state_source(
            &self.bundle.manifest.state.names,
            ReplayMode::RealTime,
        )?))
    }

    /// The command sink; `iface` is the interface name written into candump logs.
    /// `replace_log`: a `candump:FILE` that exists and is not empty is replaced (`--force`, or
    /// the demo's own log); otherwise it is refused, since a log recorded from a real bus looks
    /// the same as one reflex wrote.
    pub fn sink(
        &mut self,
        spec: &SinkSpec,
        iface: &str,
        clock: &impl Clock,
        replace_log: bool,
    ) -> Result<Box<dyn CommandSink>> {
        let sink: Box<dyn CommandSink> = match spec {
            SinkSpec::Null => Box::new(NullSink::default()),
            SinkSpec::Candump(file) => Box::new({
                let replace = if replace_log {
                    output::Replace::Any
                } else {
                    output::Replace::No
                };
                output::check_file(file, replace, &CANDUMP_KIND)?;
                CandumpSink::new(file, iface, self.codec()?, clock.epoch_offset_ns())
                    .with_context(|| format!("opening candump log {}", file.display()))?
            }),
            SinkSpec::SocketCan(iface) => Box::new(SocketCanSink::open(iface, self.codec()?)?),
        };
        Ok(sink)
    }
}

/// A candump log: who wrote one cannot be told from its content.
const CANDUMP_KIND: output::Kind = output::Kind {
    what: "a candump log",
    recognize: |_| {
        Err(
            "a candump log's content does not say who wrote it (it may be a recording of a real \
             bus)"
                .into(),
        )
    },
};

/// A safety input (`level`: an e-stop's status, else an arm button's event).
pub fn safety_input(spec: &SafetyInputSpec, level: bool) -> Result<Box<dyn SafetyInput>> {
    let input: Box<dyn SafetyInput> = match spec {
        SafetyInputSpec::Gpio(g) => Box::new(g.open()?),
        SafetyInputSpec::Can {
            iface,
            id,
            timeout_ns,
        } => {
            let kind = if level {
                CanInputKind::Level {
                    timeout_ns: *timeout_ns,
                }
            } else {
                CanInputKind::Event
            };
            Box::new(CanSafetyInput::open(iface, *id, kind)?)
        }
    };
    Ok(input)
}

/// The e-stop latch of `--estop`, `--arm` and `--status-led`, or `None` without `--estop`.
pub fn estop(
    stop: Option<&SafetyInputSpec>,
    arm: Option<&SafetyInputSpec>,
    status_led: Option<&reflex_board::input::GpioSpec>,
) -> Result<Option<EStop>> {
    let Some(stop) = stop else {
        return Ok(None);
    };
    let stop = safety_input(stop, true).context("--estop")?;
    let arm = arm
        .map(|s| safety_input(s, false).context("--arm"))
        .transpose()?;
    let mut e = EStop::new(stop, arm);
    if let Some(g) = status_led {
        let out = reflex_board::input::open_gpio_cdev_output(&g.chip, g.line, g.active_low)
            .context("--status-led")?;
        e = e.with_status_led(Box::new(out));
    }
    log::info!(
        "e-stop: {}{}",
        e.stop_name(),
        match e.arm_name() {
            Some(n) => format!(", re-armed by {n}"),
            None => ", no arm input: a trip needs a restart".into(),
        }
    );
    Ok(Some(e))
}
