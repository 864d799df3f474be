//! reflex-board: what board are we on?
//!
//! Latency figures mean nothing without the machine that produced them: `reflex bench` records the
//! board's identity (CPU, cores, frequency governor; on a Jetson its model, power mode and the
//! JetPack/L4T and TensorRT versions) next to its numbers. Everything is read from standard Linux
//! files, and anything absent is simply reported as unknown: the same code runs on a workstation,
//! a Jetson and a CI machine.
//!
//! Jetson specifics are read from the files NVIDIA's L4T ships (`/proc/device-tree/model`,
//! `/etc/nv_tegra_release`, `/etc/nvpmodel.conf` state); they are untested here because no Jetson
//! is available to this project's CI.
//!
//! [`input`] holds the board's safety inputs (e-stop and arm button on GPIO lines) and the status
//! LED output. [`profile`] holds the board profiles (`board/profiles/*.toml`: CAN bit timing,
//! cameras, e-stop line, power mode) and picks one for the machine; [`systemd`] and [`udev`]
//! generate the files `reflex-tools deploy` installs; [`doctor`] has the board-side checks of
//! `reflex doctor`.

pub mod doctor;
pub mod input;
pub mod profile;
pub mod systemd;
pub mod udev;

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardIdentity {
    pub cpu_model: String,
    pub cores: usize,
    /// cpufreq governor of cpu0 (`performance`, `schedutil`, ...), if exposed.
    pub governor: Option<String>,
    pub kernel: Option<String>,
    /// Device-tree model (Jetson and other ARM boards).
    pub board_model: Option<String>,
    /// First line of /etc/nv_tegra_release (L4T / JetPack release).
    pub l4t_release: Option<String>,
    /// nvpmodel power mode, if the status file exists.
    pub power_mode: Option<String>,
    /// TensorRT library version found on the system, if any.
    pub tensorrt: Option<String>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

/// The CPU model name from /proc/cpuinfo (`model name` on x86, `Model`/`Hardware` on ARM).
pub fn cpu_model_from_cpuinfo(text: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

fn tensorrt_version() -> Option<String> {
    for dir in [
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/lib",
    ] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(v) = name.strip_prefix("libnvinfer.so.") {
                if v.contains('.') {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

impl BoardIdentity {
    /// Reads the identity of the machine this runs on.
    pub fn detect() -> BoardIdentity {
        let cpuinfo = read_trim(Path::new("/proc/cpuinfo")).unwrap_or_default();
        BoardIdentity {
            cpu_model: cpu_model_from_cpuinfo(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            governor: read_trim(Path::new(
                "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            )),
            kernel: read_trim(Path::new("/proc/sys/kernel/osrelease")),
            board_model: read_trim(Path::new("/proc/device-tree/model")),
            l4t_release: read_trim(Path::new("/etc/nv_tegra_release")).and_then(|s| {
                s.lines()
                    .next()
                    .map(|l| l.trim_start_matches("# ").to_string())
            }),
            power_mode: read_trim(Path::new("/var/lib/nvpmodel/status")),
            tensorrt: tensorrt_version(),
        }
    }

    pub fn is_jetson(&self) -> bool {
        self.l4t_release.is_some()
            || self
                .board_model
                .as_deref()
                .is_some_and(|m| m.contains("Jetson") || m.contains("Orin"))
    }

    /// One line for reports.
    pub fn summary(&self) -> String {
        let mut s = format!("{} x{}", self.cpu_model, self.cores);
        if let Some(g) = &self.governor {
            s += &format!(", governor {g}");
        }
        if let Some(m) = &self.board_model {
            s += &format!(", board {m}");
        }
        if let Some(r) = &self.l4t_release {
            s += &format!(", {r}");
        }
        if let Some(p) = &self.power_mode {
            s += &format!(", power mode {p}");
        }
        if let Some(t) = &self.tensorrt {
            s += &format!(", TensorRT {t}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_x86_and_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7551 32-Core Processor\n";
        assert_eq!(
            cpu_model_from_cpuinfo(x86).as_deref(),
            Some("AMD EPYC 7551 32-Core Processor")
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 62.50\n\nModel\t\t: NVIDIA Jetson AGX Orin Developer Kit\n";
        assert_eq!(
            cpu_model_from_cpuinfo(arm).as_deref(),
            Some("NVIDIA Jetson AGX Orin Developer Kit")
        );
        assert_eq!(cpu_model_from_cpuinfo("nothing"), None);
    }

    #[test]
    fn detect_on_this_machine() {
        let b = BoardIdentity::detect();
        assert!(b.cores >= 1);
        assert!(!b.summary().is_empty());
    }
}
