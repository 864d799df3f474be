//! Board profiles: what a board offers the runtime (CAN interfaces and their bit timing, camera
//! nodes, the e-stop line, power mode and clocks), and which profile fits the machine we run on.
//!
//! The built-in profiles are the TOML files in `board/profiles/` (compiled in); a lab's own board
//! is a TOML file of the same schema given by path (`--profile ./my-board.toml`). Detection reads
//! `/proc/device-tree/model` (the Jetson's module name, e.g. `NVIDIA Jetson AGX Orin Developer
//! Kit`) and `/etc/nv_tegra_release` (present on every L4T/JetPack install), then falls back on
//! the CPU architecture: `generic-arm64` or `generic-x86-64`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The built-in profiles, `(file name, TOML text)`, in the order detection tries them.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "jetson-orin-nano.toml",
        include_str!("../profiles/jetson-orin-nano.toml"),
    ),
    (
        "jetson-orin-nx.toml",
        include_str!("../profiles/jetson-orin-nx.toml"),
    ),
    (
        "jetson-agx-orin.toml",
        include_str!("../profiles/jetson-agx-orin.toml"),
    ),
    (
        "generic-arm64.toml",
        include_str!("../profiles/generic-arm64.toml"),
    ),
    (
        "generic-x86-64.toml",
        include_str!("../profiles/generic-x86-64.toml"),
    ),
];

/// Errors reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read board profile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("board profile {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("board profile {origin}: {msg}")]
    Invalid { origin: String, msg: String },
    #[error(
        "no board profile named `{0}`: the built-in ones are {known}; or give the path of a \
         profile TOML file",
        known = builtin_names().join(", ")
    )]
    Unknown(String),
}

/// One board profile (the schema of `board/profiles/*.toml`; unknown keys are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name (`jetson-agx-orin`), what `--profile` takes.
    pub name: String,
    pub description: String,
    /// The CPU architecture as Rust names it (`aarch64`, `x86_64`): which `reflex` binary fits.
    pub arch: String,
    /// CPUs the runtime's process is pinned to (systemd `CPUAffinity=`); empty = no pinning.
    #[serde(default)]
    pub cpu_affinity: Vec<u32>,
    /// How to recognize the board; absent for the generic profiles (chosen by architecture).
    #[serde(default)]
    pub detect: Option<Detect>,
    #[serde(default)]
    pub can: Vec<CanInterface>,
    /// Cameras the board is expected to have, with their stable names.
    #[serde(default)]
    pub cameras: Vec<CameraNode>,
    /// The e-stop line, in `reflex run --estop` form (`gpio:/dev/gpiochip0:17:active-low`).
    #[serde(default)]
    pub estop: Option<String>,
    #[serde(default)]
    pub power: Power,
}

/// What identifies a board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// Any of these substrings in `/proc/device-tree/model` selects the profile.
    pub device_tree_model: Vec<String>,
}

/// A CAN interface and the bit timing `ip link set IFACE type can ...` gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanInterface {
    /// Interface name (`can0`); the udev rule gives the adapter this name when `kernels` or
    /// `usb_serial` identifies it.
    pub name: String,
    /// Nominal (arbitration) bit rate, bit/s.
    pub bitrate: u32,
    /// CAN FD data-phase bit rate, bit/s; `Some` switches the interface to FD mode.
    #[serde(default)]
    pub dbitrate: Option<u32>,
    /// Automatic restart after bus-off, ms (`restart-ms`; 0 = never).
    #[serde(default)]
    pub restart_ms: u32,
    /// Transmit queue length, frames (`txqueuelen`; the kernel's default of 10 drops frames at
    /// a burst of six motor commands plus enables).
    #[serde(default = "default_txqueuelen")]
    pub txqueuelen: u32,
    /// The controller's device path for udev's `KERNELS==` (on-chip: `c310000.mttcan`).
    #[serde(default)]
    pub kernels: Option<String>,
    /// A USB adapter's serial number for udev's `ATTRS{serial}==`.
    #[serde(default)]
    pub usb_serial: Option<String>,
}

fn default_txqueuelen() -> u32 {
    1000
}

/// A camera the board should have, named as the bundle names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraNode {
    /// The bundle's camera name (`front`); the udev rule links `/dev/reflex/NAME` to it.
    pub name: String,
    /// The camera's `/dev/v4l/by-id/...` or `/dev/v4l/by-path/...` link (udev's persistent
    /// names), or a plain `/dev/videoN`.
    pub device: String,
}

/// Power mode and clocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Jetson `nvpmodel -m` mode (its numbering is per module, see the profile's comment).
    #[serde(default)]
    pub nvpmodel_mode: Option<u32>,
    /// Run `jetson_clocks` (clocks pinned at their maximum) before the runtime starts.
    #[serde(default)]
    pub jetson_clocks: bool,
    /// cpufreq governor expected on every CPU (`performance`).
    #[serde(default)]
    pub governor: Option<String>,
}

/// The names of the built-in profiles.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN
        .iter()
        .map(|(f, _)| f.trim_end_matches(".toml"))
        .collect()
}

impl Profile {
    /// Parses and checks a profile's TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|source| ProfileError::Parse {
            origin: origin.into(),
            source,
        })?;
        p.validate(origin)?;
        Ok(p)
    }

    fn validate(&self, origin: &str) -> Result<(), ProfileError> {
        let bad = |msg: String| {
            Err(ProfileError::Invalid {
                origin: origin.into(),
                msg,
            })
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 15
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        for c in &self.can {
            if !name_ok(&c.name) {
                return bad(format!(
                    "CAN interface name `{}`: 1 to 15 letters, digits, `-` or `_` (a Linux interface name)",
                    c.name
                ));
            }
            if c.bitrate == 0 || c.bitrate > 1_000_000 {
                return bad(format!(
                    "can `{}`: bitrate {} out of 1..=1000000 bit/s",
                    c.name, c.bitrate
                ));
            }
            if c.dbitrate.is_some_and(|d| d < c.bitrate || d > 12_000_000) {
                return bad(format!(
                    "can `{}`: dbitrate must be at least the bitrate and at most 12 Mbit/s",
                    c.name
                ));
            }
        }
        for c in &self.cameras {
            if !name_ok(&c.name) || !c.device.starts_with("/dev/") {
                return bad(format!(
                    "camera `{}`: a name of letters, digits, `-`, `_` and a device under /dev/ \
                     (`/dev/v4l/by-id/...`) are needed",
                    c.name
                ));
            }
        }
        if !matches!(self.arch.as_str(), "aarch64" | "x86_64") {
            return bad(format!("arch `{}`: `aarch64` or `x86_64`", self.arch));
        }
        Ok(())
    }

    /// A built-in profile by name (`jetson-agx-orin`), or a profile file by path (anything with
    /// a `/` or ending in `.toml`).
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
                path: path.into(),
                source,
            })?;
            return Profile::parse(&text, name_or_path);
        }
        let (file, text) = BUILTIN
            .iter()
            .find(|(f, _)| f.trim_end_matches(".toml") == name_or_path)
            .ok_or_else(|| ProfileError::Unknown(name_or_path.into()))?;
        Profile::parse(text, &format!("board/profiles/{file}"))
    }

    /// The CAN interface named `name`.
    pub fn can_interface(&self, name: &str) -> Option<&CanInterface> {
        self.can.iter().find(|c| c.name == name)
    }
}

/// How a profile was chosen, for `reflex doctor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub profile: Profile,
    /// Why this one: the device-tree model that matched, or the architecture fallback.
    pub reason: String,
}

/// Picks the built-in profile for a machine from its device-tree model and L4T release (the
/// contents of `/proc/device-tree/model` and `/etc/nv_tegra_release`, if any) and its
/// architecture (`std::env::consts::ARCH`).
pub fn detect_from(
    device_tree_model: Option<&str>,
    tegra_release: Option<&str>,
    arch: &str,
) -> Result<Detection, ProfileError> {
    let model = device_tree_model
        .map(|m| m.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
        .filter(|m| !m.is_empty());
    for (file, text) in BUILTIN {
        let p = Profile::parse(text, &format!("board/profiles/{file}"))?;
        let Some(d) = &p.detect else { continue };
        if let Some(m) = model {
            if let Some(hit) = d.device_tree_model.iter().find(|s| m.contains(s.as_str())) {
                return Ok(Detection {
                    reason: format!("/proc/device-tree/model `{m}` contains `{hit}`"),
                    profile: p,
                });
            }
        }
    }
    let generic = if arch == "aarch64" {
        "generic-arm64"
    } else {
        "generic-x86-64"
    };
    let mut reason = format!("architecture {arch}");
    if let Some(m) = model {
        reason += &format!(", device-tree model `{m}` matches no built-in profile");
    }
    if tegra_release.is_some() {
        reason += " (an L4T release is installed: a Jetson this version does not know; give \
                    --profile)";
    }
    Ok(Detection {
        profile: Profile::load(generic)?,
        reason,
    })
}

/// [`detect_from`] on the files of the machine under `root` (`/` on the board; a directory
/// standing in for it in tests).
pub fn detect(root: &Path) -> Result<Detection, ProfileError> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let model = read("proc/device-tree/model");
    let tegra = read("etc/nv_tegra_release");
    detect_from(model.as_deref(), tegra.as_deref(), std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses() {
        for (file, text) in BUILTIN {
            let p = Profile::parse(text, file).expect(file);
            assert_eq!(format!("{}.toml", p.name), *file);
        }
        assert_eq!(builtin_names().len(), 5);
        let agx = Profile::load("jetson-agx-orin").expect("agx");
        assert_eq!(agx.can.len(), 2);
        assert_eq!(agx.can[0].dbitrate, Some(5_000_000));
    }

    #[test]
    fn jetsons_are_told_apart_by_their_device_tree_model() {
        // The strings L4T's device trees carry (NUL-terminated, as /proc exposes them).
        let cases = [
            ("NVIDIA Jetson AGX Orin Developer Kit\0", "jetson-agx-orin"),
            (
                "NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0",
                "jetson-orin-nx",
            ),
            (
                "NVIDIA Jetson Orin Nano Developer Kit\0",
                "jetson-orin-nano",
            ),
        ];
        for (model, want) in cases {
            let d = detect_from(
                Some(model),
                Some("# R36 (release), REVISION: 4.3"),
                "aarch64",
            )
            .expect("detect");
            assert_eq!(d.profile.name, want, "{model}");
            assert!(d.reason.contains("device-tree"), "{}", d.reason);
        }
        let pi = detect_from(Some("Raspberry Pi 5 Model B Rev 1.0"), None, "aarch64").expect("pi");
        assert_eq!(pi.profile.name, "generic-arm64");
        assert!(pi.reason.contains("Raspberry Pi 5"), "{}", pi.reason);
        let unknown_jetson =
            detect_from(Some("NVIDIA Jetson Thor"), Some("# R38"), "aarch64").expect("thor");
        assert_eq!(unknown_jetson.profile.name, "generic-arm64");
        assert!(unknown_jetson.reason.contains("--profile"));
        let pc = detect_from(None, None, "x86_64").expect("pc");
        assert_eq!(pc.profile.name, "generic-x86-64");
    }

    #[test]
    fn detect_reads_the_files_under_a_root() {
        let root = std::env::temp_dir().join(format!("reflex-board-detect-{}", std::process::id()));
        std::fs::create_dir_all(root.join("proc/device-tree")).expect("mkdir");
        std::fs::write(
            root.join("proc/device-tree/model"),
            "NVIDIA Jetson AGX Orin Developer Kit\0",
        )
        .expect("write");
        let d = detect(&root).expect("detect");
        assert_eq!(d.profile.name, "jetson-agx-orin");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn bad_profiles_are_refused_with_the_field() {
        let e = Profile::load("jetson-orin-mega").expect_err("unknown");
        assert!(e.to_string().contains("jetson-agx-orin"), "{e}");
        let text = "name = \"x\"\ndescription = \"x\"\narch = \"aarch64\"\n[[can]]\nname = \"can0\"\nbitrate = 2000000\n";
        let e = Profile::parse(text, "x.toml").expect_err("bitrate");
        assert!(e.to_string().contains("bitrate 2000000"), "{e}");
        let e = Profile::parse(
            "name = \"x\"\ndescription = \"\"\narch = \"aarch64\"\ncolour = 1\n",
            "y.toml",
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Profile::load("/nonexistent/board.toml").expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/board.toml"), "{e}");
    }
}
