//! Typed command-line specs: where frames, state and commands come from and go, and which lines
//! are safety inputs.
//!
//! Each spec parses with [`FromStr`] (so clap parses it while reading the command line, before
//! any bundle is loaded) and fails with a [`SpecError`] that quotes the value and names every
//! accepted form. Opening the device a spec names is the caller's business: the specs carry no
//! file handles and compile on every platform.
//!
//! | spec                | forms                                                              |
//! |---------------------|--------------------------------------------------------------------|
//! | [`CameraSource`]    | `[NAME=]replay:EPISODE_DIR`, `[NAME=]/dev/videoN`, `[NAME=]/dev/v4l/by-id/...` |
//! | [`StateSourceSpec`] | `replay:EPISODE_DIR`, `can:IFACE[:BASE_ID]`                        |
//! | [`SinkSpec`]        | `IFACE` (`can0`, `vcan0`), `candump:FILE`, `null`                  |
//! | [`SafetyInputSpec`] | `gpio:CHIP:LINE[:active-low][:debounce=MS]`, `can:IFACE:ID[:timeout=MS]` |
//!
//! CAN IDs are hexadecimal, with or without `0x` (as can-utils writes them).

use reflex_board::input::{parse_gpio_spec, GpioSpec, InputError};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The accepted forms of a camera source.
pub const CAMERA_FORMS: &str = "expected replay:EPISODE_DIR or a V4L2 device \
     (/dev/videoN, /dev/v4l/by-id/...), optionally prefixed by the bundle camera's NAME=";
/// The accepted forms of a joint state source.
pub const STATE_FORMS: &str =
    "expected replay:EPISODE_DIR or can:IFACE[:BASE_ID] (BASE_ID in hex, \
     default 200)";
/// The accepted forms of a command sink.
pub const SINK_FORMS: &str = "expected a CAN interface name (can0, vcan0), candump:FILE or null";
/// The accepted forms of an e-stop input.
pub const ESTOP_FORMS: &str =
    "expected gpio:CHIP:LINE[:active-low][:debounce=MS] or can:IFACE:ID[:timeout=MS]";
/// The accepted forms of an arm input.
pub const ARM_FORMS: &str = "expected gpio:CHIP:LINE[:active-low][:debounce=MS] or can:IFACE:ID";
/// The accepted forms of a CAN e-stop (a level: data byte 0 != 0 = pressed).
const CAN_LEVEL_FORMS: &str = "expected can:IFACE:ID[:timeout=MS] (ID in hex; data byte 0 != 0 = \
     pressed), e.g. can:can0:0E0:timeout=200";
/// The accepted forms of a CAN arm input (an event: any frame with the ID).
const CAN_EVENT_FORMS: &str =
    "expected can:IFACE:ID (ID in hex; any frame with that ID = arm), e.g. can:can0:0E1";

/// The joint feedback base ID of the per-joint encoding when `can:IFACE` gives none.
pub const DEFAULT_STATE_BASE_ID: u32 = 0x200;

/// A command-line spec that does not parse. The message quotes the value and names the accepted
/// forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not one of the accepted forms at all.
    #[error("`{spec}`: {forms}")]
    Form { spec: String, forms: &'static str },
    /// A part that must be a hexadecimal CAN ID is not one.
    #[error("`{spec}`: `{id}` is not a hex CAN ID; {forms}")]
    CanId {
        spec: String,
        id: String,
        forms: &'static str,
    },
    /// An option after the required parts is unknown (or not allowed for this input).
    #[error("`{spec}`: unknown option `{option}`; {forms}")]
    Option {
        spec: String,
        option: String,
        forms: &'static str,
    },
    /// `timeout=MS` with something else than a number of milliseconds.
    #[error("`{spec}`: `{value}` is not a number of ms; {forms}")]
    Timeout {
        spec: String,
        value: String,
        forms: &'static str,
    },
    /// A GPIO line that does not parse (the message teaches the GPIO syntax).
    #[error(transparent)]
    Gpio(#[from] InputError),
}

fn form(spec: &str, forms: &'static str) -> SpecError {
    SpecError::Form {
        spec: spec.to_owned(),
        forms,
    }
}

/// A hexadecimal CAN ID, `0x` optional.
fn hex_id(spec: &str, id: &str, forms: &'static str) -> Result<u32, SpecError> {
    u32::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| SpecError::CanId {
        spec: spec.to_owned(),
        id: id.to_owned(),
        forms,
    })
}

/// Where a camera's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraInput {
    /// A recorded episode directory (`replay:DIR`), played in real time, looping.
    Replay(PathBuf),
    /// A V4L2 device node (`/dev/video0`, `/dev/v4l/by-id/...`), opened in the bundle's capture
    /// mode.
    V4l2(PathBuf),
}

/// One `--camera` value: `[NAME=]SOURCE`.
///
/// Without a name the source goes to the next bundle camera that has none, in bundle order. A
/// `NAME=` prefix is recognised only when NAME contains no `:` (so `replay:a=b` is a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSource {
    /// The bundle camera this source is for; `None` = the next one in bundle order.
    pub name: Option<String>,
    pub input: CameraInput,
}

impl FromStr for CameraSource {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (name, src) = match s.split_once('=') {
            Some((name, src)) if !name.contains(':') => (Some(name), src),
            _ => (None, s),
        };
        if name.is_some_and(str::is_empty) {
            return Err(form(s, CAMERA_FORMS));
        }
        let input = if let Some(dir) = src.strip_prefix("replay:").filter(|d| !d.is_empty()) {
            CameraInput::Replay(PathBuf::from(dir))
        } else if src.starts_with("/dev/") {
            CameraInput::V4l2(PathBuf::from(src))
        } else {
            return Err(form(s, CAMERA_FORMS));
        };
        Ok(CameraSource {
            name: name.map(str::to_owned),
            input,
        })
    }
}

impl fmt::Display for CameraInput {
    /// The source as written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraInput::Replay(dir) => write!(f, "replay:{}", dir.display()),
            CameraInput::V4l2(dev) => write!(f, "{}", dev.display()),
        }
    }
}

impl fmt::Display for CameraSource {
    /// The spec as written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.input),
            None => write!(f, "{}", self.input),
        }
    }
}

/// `--camera` values that do not fit the bundle's cameras.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CameraAssignError {
    #[error("--camera {given}: the bundle has no camera `{name}` (its cameras: {cameras})")]
    UnknownName {
        given: String,
        name: String,
        /// The bundle's camera names, comma-separated.
        cameras: String,
    },
    #[error("more --camera sources than bundle cameras ({cameras})")]
    TooMany { cameras: usize },
    #[error("no --camera given for bundle camera `{name}`")]
    Missing { name: String },
}

/// The input of every bundle camera (`names`, bundle order) from `--camera` values: named ones
/// go to their camera (the last one given wins), the others fill the remaining cameras in
/// bundle order. Every camera needs exactly one input.
pub fn assign_cameras(
    names: &[String],
    sources: &[CameraSource],
) -> Result<Vec<CameraInput>, CameraAssignError> {
    let mut slots: Vec<Option<&CameraInput>> = vec![None; names.len()];
    let mut positional = vec![];
    for s in sources {
        match &s.name {
            Some(name) => {
                let i = names.iter().position(|n| n == name).ok_or_else(|| {
                    CameraAssignError::UnknownName {
                        given: s.to_string(),
                        name: name.clone(),
                        cameras: names.join(", "),
                    }
                })?;
                slots[i] = Some(&s.input);
            }
            None => positional.push(&s.input),
        }
    }
    let mut positional = positional.into_iter();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = positional.next();
    }
    if positional.next().is_some() {
        return Err(CameraAssignError::TooMany {
            cameras: names.len(),
        });
    }
    names
        .iter()
        .zip(slots)
        .map(|(name, slot)| {
            slot.cloned()
                .ok_or_else(|| CameraAssignError::Missing { name: name.clone() })
        })
        .collect()
}

/// Where the joint state comes from (`--state`). Not to be confused with the manifest's
/// `StateSpec`, which says what the state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateSourceSpec {
    /// The state recorded in an episode (`replay:DIR`), played in real time.
    Replay(PathBuf),
    /// Joint feedback frames in the bundle's motor protocol (`can:IFACE[:BASE_ID]`); for the
    /// per-joint encoding, joint `i` replies at `base_id + i`.
    Can { iface: String, base_id: u32 },
}

impl FromStr for StateSourceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if let Some(rest) = s.strip_prefix("can:") {
            let (iface, base_id) = match rest.split_once(':') {
                Some((iface, b)) => (iface, hex_id(s, b, STATE_FORMS)?),
                None => (rest, DEFAULT_STATE_BASE_ID),
            };
            if iface.is_empty() {
                return Err(form(s, STATE_FORMS));
            }
            return Ok(StateSourceSpec::Can {
                iface: iface.to_owned(),
                base_id,
            });
        }
        match s.strip_prefix("replay:") {
            Some(dir) if !dir.is_empty() => Ok(StateSourceSpec::Replay(PathBuf::from(dir))),
            _ => Err(form(s, STATE_FORMS)),
        }
    }
}

impl fmt::Display for StateSourceSpec {
    /// The spec as written on the command line (the base ID always in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateSourceSpec::Replay(dir) => write!(f, "replay:{}", dir.display()),
            StateSourceSpec::Can { iface, base_id } if *base_id == DEFAULT_STATE_BASE_ID => {
                write!(f, "can:{iface}")
            }
            StateSourceSpec::Can { iface, base_id } => write!(f, "can:{iface}:{base_id:X}"),
        }
    }
}

/// Where commands go (`--can`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    /// Dropped (benchmarks, dry runs).
    Null,
    /// A can-utils `candump -l` log file (`candump:FILE`).
    Candump(PathBuf),
    /// A SocketCAN interface (`can0`, `vcan0`).
    SocketCan(String),
}

impl FromStr for SinkSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s == "null" {
            return Ok(SinkSpec::Null);
        }
        if let Some(file) = s.strip_prefix("candump:") {
            if file.is_empty() {
                return Err(form(s, SINK_FORMS));
            }
            return Ok(SinkSpec::Candump(PathBuf::from(file)));
        }
        if s.is_empty() || s.contains(':') || s.contains('/') {
            return Err(form(s, SINK_FORMS));
        }
        Ok(SinkSpec::SocketCan(s.to_owned()))
    }
}

impl fmt::Display for SinkSpec {
    /// The spec as written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Null => f.write_str("null"),
            SinkSpec::Candump(file) => write!(f, "candump:{}", file.display()),
            SinkSpec::SocketCan(iface) => f.write_str(iface),
        }
    }
}

/// A safety input: an e-stop (`--estop`, a level) or an arm button (`--arm`, an event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafetyInputSpec {
    /// A line of a GPIO character device.
    Gpio(GpioSpec),
    /// Frames with CAN ID `id` on `iface`. For an e-stop, data byte 0 != 0 = pressed, and with
    /// `timeout_ns` silence for that long also counts as pressed; for an arm input any frame
    /// re-arms (no timeout).
    Can {
        iface: String,
        id: u32,
        timeout_ns: Option<u64>,
    },
}

impl SafetyInputSpec {
    /// Parses an e-stop input: `gpio:CHIP:LINE[:active-low][:debounce=MS]` or
    /// `can:IFACE:ID[:timeout=MS]` (the same as [`FromStr`]).
    pub fn parse_estop(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, true)
    }

    /// Parses an arm input: `gpio:CHIP:LINE[:active-low]` or `can:IFACE:ID` (no timeout: an
    /// arm input is an event, its silence means nothing).
    pub fn parse_arm(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, false)
    }

    fn parse(s: &str, level: bool) -> Result<Self, SpecError> {
        if s.starts_with("gpio:") {
            return Ok(SafetyInputSpec::Gpio(parse_gpio_spec(s)?));
        }
        let Some(rest) = s.strip_prefix("can:") else {
            return Err(form(s, if level { ESTOP_FORMS } else { ARM_FORMS }));
        };
        let forms = if level {
            CAN_LEVEL_FORMS
        } else {
            CAN_EVENT_FORMS
        };
        let mut parts = rest.split(':');
        let iface = parts.next().filter(|i| !i.is_empty());
        let (Some(iface), Some(id)) = (iface, parts.next()) else {
            return Err(form(s, forms));
        };
        let id = hex_id(s, id, forms)?;
        let mut timeout_ns = None;
        for option in parts {
            match option.strip_prefix("timeout=") {
                Some(ms) if level => {
                    let ms: u64 =
                        ms.trim_end_matches("ms")
                            .parse()
                            .map_err(|_| SpecError::Timeout {
                                spec: s.to_owned(),
                                value: ms.to_owned(),
                                forms,
                            })?;
                    timeout_ns = Some(ms * 1_000_000);
                }
                _ => {
                    return Err(SpecError::Option {
                        spec: s.to_owned(),
                        option: option.to_owned(),
                        forms,
                    })
                }
            }
        }
        Ok(SafetyInputSpec::Can {
            iface: iface.to_owned(),
            id,
            timeout_ns,
        })
    }
}

impl FromStr for SafetyInputSpec {
    type Err = SpecError;

    /// Parses an e-stop input ([`SafetyInputSpec::parse_estop`]).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse_estop(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn err<T: FromStr<Err = SpecError> + fmt::Debug>(s: &str) -> String {
        s.parse::<T>().unwrap_err().to_string()
    }

    #[test]
    fn camera_sources() {
        let c: CameraSource = "replay:/tmp/ep".parse().unwrap();
        assert_eq!(c.name, None);
        assert_eq!(c.input, CameraInput::Replay("/tmp/ep".into()));
        let c: CameraSource = "wrist=/dev/v4l/by-id/usb-cam-video-index0".parse().unwrap();
        assert_eq!(c.name.as_deref(), Some("wrist"));
        assert_eq!(
            c.input,
            CameraInput::V4l2("/dev/v4l/by-id/usb-cam-video-index0".into())
        );
        let c: CameraSource = "front=replay:ep".parse().unwrap();
        assert_eq!(c.name.as_deref(), Some("front"));
        assert_eq!(c.input, CameraInput::Replay("ep".into()));
        // An `=` after a `:` is part of the path, not a name.
        let c: CameraSource = "replay:runs/a=b".parse().unwrap();
        assert_eq!(c.name, None);
        assert_eq!(c.input, CameraInput::Replay("runs/a=b".into()));
        let c: CameraSource = "/dev/video0".parse().unwrap();
        assert_eq!(c.input, CameraInput::V4l2(Path::new("/dev/video0").into()));
    }

    #[test]
    fn bad_camera_sources_name_the_forms() {
        for bad in [
            "video0",
            "front=video0",
            "=replay:ep",
            "replay:",
            "",
            "usb:1",
        ] {
            let e = err::<CameraSource>(bad);
            assert!(e.starts_with(&format!("`{bad}`: ")), "{e}");
            assert!(
                e.contains("replay:EPISODE_DIR") && e.contains("/dev/videoN"),
                "{e}"
            );
        }
    }

    #[test]
    fn cameras_are_assigned_by_name_then_in_bundle_order() {
        let names: Vec<String> = ["front", "wrist", "top"].map(String::from).into();
        let srcs =
            |v: &[&str]| -> Vec<CameraSource> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let got = assign_cameras(
            &names,
            &srcs(&["replay:a", "wrist=/dev/video2", "/dev/video0"]),
        )
        .unwrap();
        assert_eq!(
            got,
            [
                CameraInput::Replay("a".into()),
                CameraInput::V4l2("/dev/video2".into()),
                CameraInput::V4l2("/dev/video0".into()),
            ]
        );
        let err = |v: &[&str]| assign_cameras(&names, &srcs(v)).unwrap_err().to_string();
        assert_eq!(
            err(&["knee=replay:a"]),
            "--camera knee=replay:a: the bundle has no camera `knee` (its cameras: front, wrist, top)"
        );
        assert_eq!(
            err(&["replay:a", "replay:b", "replay:c", "replay:d"]),
            "more --camera sources than bundle cameras (3)"
        );
        assert_eq!(
            err(&["replay:a", "top=replay:c"]),
            "no --camera given for bundle camera `wrist`"
        );
    }

    #[test]
    fn state_sources() {
        assert_eq!(
            "replay:ep".parse::<StateSourceSpec>().unwrap(),
            StateSourceSpec::Replay("ep".into())
        );
        assert_eq!(
            "can:vcan0".parse::<StateSourceSpec>().unwrap(),
            StateSourceSpec::Can {
                iface: "vcan0".into(),
                base_id: 0x200
            }
        );
        for s in ["can:can1:0x180", "can:can1:180"] {
            assert_eq!(
                s.parse::<StateSourceSpec>().unwrap(),
                StateSourceSpec::Can {
                    iface: "can1".into(),
                    base_id: 0x180
                }
            );
        }
        // Display gives back a spec that parses to the same thing.
        for s in ["replay:ep", "can:vcan0", "can:can1:180"] {
            let spec: StateSourceSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn bad_state_sources_name_the_forms() {
        for bad in ["vcan0", "can:", "can::200", "replay:", "episode/"] {
            let e = err::<StateSourceSpec>(bad);
            assert_eq!(
                e,
                format!(
                    "`{bad}`: expected replay:EPISODE_DIR or can:IFACE[:BASE_ID] (BASE_ID in \
                     hex, default 200)"
                )
            );
        }
        let e = err::<StateSourceSpec>("can:can0:xyz");
        assert!(
            e.starts_with("`can:can0:xyz`: `xyz` is not a hex CAN ID; expected replay:"),
            "{e}"
        );
    }

    #[test]
    fn sinks() {
        for (s, want) in [
            ("null", SinkSpec::Null),
            (
                "candump:out/can0.log",
                SinkSpec::Candump("out/can0.log".into()),
            ),
            ("vcan0", SinkSpec::SocketCan("vcan0".into())),
            ("can0", SinkSpec::SocketCan("can0".into())),
        ] {
            let spec: SinkSpec = s.parse().unwrap();
            assert_eq!(spec, want);
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn bad_sinks_name_the_forms() {
        for bad in ["", "candump:", "/dev/can0", "socketcan:can0", "file.log:x"] {
            assert_eq!(
                err::<SinkSpec>(bad),
                format!(
                    "`{bad}`: expected a CAN interface name (can0, vcan0), candump:FILE or null"
                )
            );
        }
    }

    #[test]
    fn safety_inputs() {
        assert_eq!(
            SafetyInputSpec::parse_estop("can:vcan0:0E0").unwrap(),
            SafetyInputSpec::Can {
                iface: "vcan0".into(),
                id: 0xE0,
                timeout_ns: None
            }
        );
        assert_eq!(
            "can:can1:0x18FF0001:timeout=200"
                .parse::<SafetyInputSpec>()
                .unwrap(),
            SafetyInputSpec::Can {
                iface: "can1".into(),
                id: 0x18FF_0001,
                timeout_ns: Some(200_000_000)
            }
        );
        assert_eq!(
            SafetyInputSpec::parse_estop("can:can0:E0:timeout=50ms").unwrap(),
            SafetyInputSpec::Can {
                iface: "can0".into(),
                id: 0xE0,
                timeout_ns: Some(50_000_000)
            }
        );
        assert_eq!(
            SafetyInputSpec::parse_arm("can:vcan0:0E1").unwrap(),
            SafetyInputSpec::Can {
                iface: "vcan0".into(),
                id: 0xE1,
                timeout_ns: None
            }
        );
        let SafetyInputSpec::Gpio(g) =
            SafetyInputSpec::parse_arm("gpio:gpiochip1:5:active-low").unwrap()
        else {
            panic!("not a GPIO spec");
        };
        assert_eq!(
            (g.chip.as_path(), g.line, g.active_low),
            (Path::new("/dev/gpiochip1"), 5, true)
        );
    }

    #[test]
    fn bad_safety_inputs_name_the_forms() {
        let estop = |s: &str| SafetyInputSpec::parse_estop(s).unwrap_err().to_string();
        let arm = |s: &str| SafetyInputSpec::parse_arm(s).unwrap_err().to_string();
        assert_eq!(
            estop("button:3"),
            "`button:3`: expected gpio:CHIP:LINE[:active-low][:debounce=MS] or \
             can:IFACE:ID[:timeout=MS]"
        );
        assert_eq!(
            arm("button:3"),
            "`button:3`: expected gpio:CHIP:LINE[:active-low][:debounce=MS] or can:IFACE:ID"
        );
        for bad in ["can:vcan0", "can::0E0", "can:vcan0:0E0:retry=3"] {
            let e = estop(bad);
            assert!(e.starts_with(&format!("`{bad}`: ")), "{e}");
            assert!(e.contains("expected can:IFACE:ID[:timeout=MS]"), "{e}");
        }
        assert!(estop("can:vcan0:zz").contains("`zz` is not a hex CAN ID"));
        assert!(estop("can:vcan0:E0:timeout=soon").contains("`soon` is not a number of ms"));
        // An arm input is an event: a timeout means nothing for it.
        let e = arm("can:vcan0:0E1:timeout=5");
        assert!(
            e.contains("unknown option `timeout=5`") && e.contains("any frame with that ID = arm"),
            "{e}"
        );
        // GPIO errors come from the GPIO parser and teach its syntax.
        let e = estop("gpio:gpiochip0:x");
        assert!(
            e.contains("`x` is not a line number") && e.contains("gpio:CHIP:LINE"),
            "{e}"
        );
        assert!(matches!(
            SafetyInputSpec::parse_estop("gpio:"),
            Err(SpecError::Gpio(_))
        ));
    }
}
