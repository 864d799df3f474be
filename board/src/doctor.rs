//! The board-side checks of `reflex doctor`: one [`Check`] per thing that must be right before
//! the robot moves, each PASS, WARN or FAIL with what was found and, when not PASS, the fix.
//!
//! What is read: CAN interfaces through iproute2's JSON (`ip -details -json link show IFACE`:
//! `operstate`, `linkinfo.info_kind`, and for real controllers `info_data.state`
//! (`ERROR-ACTIVE`...), `bittiming.bitrate`, `data_bittiming.bitrate`, `berr_counter`,
//! `restart_ms`), camera nodes, cpufreq governors (sysfs), the nvpmodel status file, free disk
//! space (`df -Pk`), the unit's state (`systemctl is-active`). The runtime adds the checks that
//! need its own code (bundle, camera formats, e-stop, backend).

use crate::profile::CanInterface;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A check's verdict; the worst one decides `reflex doctor`'s exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked (`can can0`, `camera front`).
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when not PASS.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// `FAIL  can can0: down (fix: ...)`, the report's line.
    pub fn line(&self) -> String {
        let mut s = format!("{}  {}: {}", self.status.label(), self.name, self.detail);
        if let Some(f) = &self.fix {
            s += &format!(" -> fix: {f}");
        }
        s
    }
}

/// The fix for a CAN interface that is not as the profile says.
fn can_fix(want: &CanInterface) -> String {
    let mut t = format!(
        "ip link set {} type can bitrate {}",
        want.name, want.bitrate
    );
    if let Some(d) = want.dbitrate {
        t += &format!(" dbitrate {d} fd on");
    }
    t += &format!(" restart-ms {}", want.restart_ms);
    format!(
        "`sudo ip link set {n} down; sudo {t}; sudo ip link set {n} up` (or `sudo systemctl restart reflex-can-{n}`)",
        n = want.name
    )
}

/// Judges one CAN interface from `ip -details -json link show IFACE`'s output (`None`: the
/// command failed, i.e. no such interface).
pub fn can_check(want: &CanInterface, ip_json: Option<&str>) -> Check {
    let name = format!("can {}", want.name);
    let Some(text) = ip_json else {
        return Check::fail(
            name,
            "no such interface",
            format!(
                "plug in the adapter or load its driver (`ip -br link` lists interfaces; on a Jetson: `sudo modprobe mttcan`), then `sudo systemctl restart reflex-can-{}`",
                want.name
            ),
        );
    };
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot read `ip -json` output: {e}"),
                "update iproute2",
            )
        }
    };
    let link = v.get(0).unwrap_or(&Value::Null);
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let up = flags.contains(&"UP");
    let kind = link["linkinfo"]["info_kind"].as_str().unwrap_or("?");
    if !up {
        let fix = if kind == "vcan" {
            format!("`sudo ip link set {} up`", want.name)
        } else {
            can_fix(want)
        };
        return Check::fail(name, format!("{kind} interface is down"), fix);
    }
    let data = &link["linkinfo"]["info_data"];
    if kind == "vcan" {
        return Check::warn(
            name,
            format!(
                "up, virtual CAN (vcan: no bit timing, expected {} bit/s on a real bus)",
                want.bitrate
            ),
            "fine for tests; on the robot use the real controller",
        );
    }
    if kind != "can" {
        return Check::fail(
            name,
            format!("`{kind}` interface, not CAN"),
            "check the profile's interface name (`ip -br link`)",
        );
    }
    let bitrate = data["bittiming"]["bitrate"].as_u64();
    if bitrate != Some(want.bitrate as u64) {
        return Check::fail(
            name,
            format!(
                "bitrate {} bit/s, expected {}",
                bitrate.map_or("unset".to_string(), |b| b.to_string()),
                want.bitrate
            ),
            can_fix(want),
        );
    }
    let dbitrate = data["data_bittiming"]["bitrate"].as_u64();
    if let Some(d) = want.dbitrate {
        if dbitrate != Some(d as u64) {
            return Check::fail(
                name,
                format!(
                    "CAN FD data bitrate {}, expected {d}",
                    dbitrate.map_or("unset (FD off)".to_string(), |b| b.to_string())
                ),
                can_fix(want),
            );
        }
    }
    let state = data["state"].as_str().unwrap_or("?");
    let tx = data["berr_counter"]["tx"].as_u64();
    let rx = data["berr_counter"]["rx"].as_u64();
    let counters = match (tx, rx) {
        (Some(t), Some(r)) => format!(", error counters tx {t} rx {r}"),
        _ => String::new(),
    };
    let detail = format!("up, {state}, {} bit/s{counters}", want.bitrate);
    match state {
        "ERROR-ACTIVE" => {
            if data["restart_ms"].as_u64().unwrap_or(0) == 0 && want.restart_ms > 0 {
                Check::warn(name, detail + ", restart-ms 0 (no automatic restart after bus-off)", can_fix(want))
            } else {
                Check::pass(name, detail)
            }
        }
        "ERROR-WARNING" | "ERROR-PASSIVE" => Check::warn(
            name,
            detail,
            "bus errors: check termination (120 ohm at both ends), wiring and that every node uses the same bitrate",
        ),
        _ => Check::fail(
            name,
            detail,
            format!(
                "the controller is {state}: check the bus (termination, power to the motors), then `sudo ip link set {n} down; sudo ip link set {n} up`",
                n = want.name
            ),
        ),
    }
}

/// Runs `ip -details -json link show IFACE` and judges it with [`can_check`].
pub fn check_can(want: &CanInterface) -> Check {
    let out = Command::new("ip")
        .args(["-details", "-json", "link", "show", &want.name])
        .output();
    match out {
        Ok(o) if o.status.success() => can_check(want, Some(&String::from_utf8_lossy(&o.stdout))),
        Ok(_) => can_check(want, None),
        Err(e) => Check::fail(
            format!("can {}", want.name),
            format!("cannot run `ip`: {e}"),
            "install iproute2",
        ),
    }
}

/// Every CPU's cpufreq governor against the expected one (`root`: `/` on the board).
pub fn check_governor(root: &Path, want: &str) -> Check {
    let mut found: Vec<String> = Vec::new();
    for i in 0..1024 {
        let p = root.join(format!(
            "sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor"
        ));
        match std::fs::read_to_string(&p) {
            Ok(g) => found.push(g.trim().to_string()),
            Err(_) if i > 0 => break,
            Err(_) => {
                return Check::warn(
                    "cpu governor",
                    "no cpufreq on this machine",
                    "none needed on a machine without frequency scaling",
                )
            }
        }
    }
    let off: Vec<usize> = found
        .iter()
        .enumerate()
        .filter(|(_, g)| g.as_str() != want)
        .map(|(i, _)| i)
        .collect();
    if off.is_empty() {
        Check::pass("cpu governor", format!("{want} on {} CPUs", found.len()))
    } else {
        Check::warn(
            "cpu governor",
            format!("CPUs {off:?} not {want} ({})", found[off[0]]),
            format!("`echo {want} | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor` (or `sudo jetson_clocks` on a Jetson)"),
        )
    }
}

/// The nvpmodel mode (from `/var/lib/nvpmodel/status`, `pmode:0000`) against the expected one.
pub fn check_power_mode(root: &Path, want: u32) -> Check {
    match std::fs::read_to_string(root.join("var/lib/nvpmodel/status")) {
        Ok(s) => {
            let mode = s
                .trim()
                .strip_prefix("pmode:")
                .and_then(|m| m.trim().parse::<u32>().ok());
            if mode == Some(want) {
                Check::pass("power mode", format!("nvpmodel mode {want}"))
            } else {
                Check::warn(
                    "power mode",
                    format!("nvpmodel status `{}`, expected mode {want}", s.trim()),
                    format!("`sudo nvpmodel -m {want}` (or `sudo systemctl restart reflex-power`)"),
                )
            }
        }
        Err(_) => Check::warn(
            "power mode",
            "no /var/lib/nvpmodel/status",
            format!("`sudo nvpmodel -m {want}`"),
        ),
    }
}

/// Free space on the file system holding `path` (`df -Pk`), FAIL under `min_mib`.
pub fn check_disk(path: &Path, min_mib: u64) -> Check {
    let out = Command::new("df").arg("-Pk").arg(path).output();
    let avail_kib = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| {
                l.split_whitespace()
                    .nth(3)
                    .and_then(|v| v.parse::<u64>().ok())
            })
    });
    let name = format!("disk {}", path.display());
    match avail_kib {
        Some(k) if k / 1024 >= min_mib => Check::pass(name, format!("{} MiB free", k / 1024)),
        Some(k) => Check::fail(
            name,
            format!("{} MiB free, {min_mib} MiB needed", k / 1024),
            "free space (old versions: `reflex-tools deploy` keeps two; `journalctl --vacuum-size=200M`)",
        ),
        None => Check::warn(name, "cannot run `df -Pk`", "install coreutils"),
    }
}

/// The runtime unit's state (`systemctl is-active reflex.service`).
pub fn check_service(unit: &str) -> Check {
    let name = format!("service {unit}");
    match Command::new("systemctl").args(["is-active", unit]).output() {
        Ok(o) => {
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            match state.as_str() {
                "active" | "activating" | "reloading" => Check::pass(name, state),
                "inactive" => Check::warn(
                    name,
                    "inactive",
                    format!("`sudo systemctl start {unit}` (or deploy it: `reflex-tools deploy`)"),
                ),
                _ => Check::fail(
                    name,
                    if state.is_empty() {
                        "unknown".into()
                    } else {
                        state
                    },
                    format!(
                        "`journalctl -u {unit} -n 50` says why; `sudo systemctl restart {unit}`"
                    ),
                ),
            }
        }
        Err(_) => Check::warn(
            name,
            "no systemctl on this machine",
            "run reflex under systemd on the robot",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(dbitrate: Option<u32>) -> CanInterface {
        CanInterface {
            name: "can0".into(),
            bitrate: 1_000_000,
            dbitrate,
            restart_ms: 100,
            txqueuelen: 1000,
            kernels: None,
            usb_serial: None,
        }
    }

    /// What iproute2 prints for an mttcan controller (`ip -details -json link show can0`), cut
    /// to the fields read.
    fn mttcan(flags: &str, state: &str, bitrate: u32, dbitrate: Option<u32>) -> String {
        let data = dbitrate.map_or(String::new(), |d| {
            format!(",\"data_bittiming\":{{\"bitrate\":{d},\"sample_point\":\"0.750\"}}")
        });
        format!(
            "[{{\"ifindex\":4,\"ifname\":\"can0\",\"flags\":[{flags}],\"mtu\":16,\"operstate\":\"UP\",\"txqlen\":1000,\
             \"linkinfo\":{{\"info_kind\":\"can\",\"info_data\":{{\"ctrlmode\":[],\"state\":\"{state}\",\
             \"berr_counter\":{{\"tx\":0,\"rx\":3}},\"restart_ms\":100,\
             \"bittiming\":{{\"bitrate\":{bitrate},\"sample_point\":\"0.800\",\"tq\":25}}{data},\"clock\":50000000}}}}}}]"
        )
    }

    #[test]
    fn can_interfaces_are_judged_on_state_and_bit_timing() {
        let up = "\"NOARP\",\"UP\",\"LOWER_UP\"";
        let ok = can_check(
            &want(None),
            Some(&mttcan(up, "ERROR-ACTIVE", 1_000_000, None)),
        );
        assert_eq!(ok.status, Status::Pass, "{}", ok.line());
        assert!(
            ok.detail.contains("error counters tx 0 rx 3"),
            "{}",
            ok.detail
        );

        let slow = can_check(
            &want(None),
            Some(&mttcan(up, "ERROR-ACTIVE", 500_000, None)),
        );
        assert_eq!(slow.status, Status::Fail);
        assert!(
            slow.detail
                .contains("bitrate 500000 bit/s, expected 1000000"),
            "{}",
            slow.line()
        );
        assert!(
            slow.line()
                .contains("type can bitrate 1000000 restart-ms 100"),
            "{}",
            slow.line()
        );

        let down = can_check(
            &want(None),
            Some(&mttcan("\"NOARP\"", "STOPPED", 1_000_000, None)),
        );
        assert_eq!(down.status, Status::Fail);
        assert!(down.detail.contains("down"), "{}", down.line());

        let no_fd = can_check(
            &want(Some(5_000_000)),
            Some(&mttcan(up, "ERROR-ACTIVE", 1_000_000, None)),
        );
        assert_eq!(no_fd.status, Status::Fail);
        assert!(
            no_fd.line().contains("dbitrate 5000000 fd on"),
            "{}",
            no_fd.line()
        );
        let fd = can_check(
            &want(Some(5_000_000)),
            Some(&mttcan(up, "ERROR-ACTIVE", 1_000_000, Some(5_000_000))),
        );
        assert_eq!(fd.status, Status::Pass, "{}", fd.line());

        let passive = can_check(
            &want(None),
            Some(&mttcan(up, "ERROR-PASSIVE", 1_000_000, None)),
        );
        assert_eq!(passive.status, Status::Warn);
        let busoff = can_check(&want(None), Some(&mttcan(up, "BUS-OFF", 1_000_000, None)));
        assert_eq!(busoff.status, Status::Fail);

        let missing = can_check(&want(None), None);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.detail.contains("no such interface"));
        assert!(Status::Fail > Status::Warn && Status::Warn > Status::Pass);
    }

    #[test]
    fn governors_and_power_mode_from_files() {
        let root = std::env::temp_dir().join(format!("reflex-board-doctor-{}", std::process::id()));
        for (i, g) in ["performance", "schedutil"].iter().enumerate() {
            let d = root.join(format!("sys/devices/system/cpu/cpu{i}/cpufreq"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("scaling_governor"), format!("{g}\n")).expect("write");
        }
        let c = check_governor(&root, "performance");
        assert_eq!(c.status, Status::Warn, "{}", c.line());
        assert!(c.detail.contains("[1]"), "{}", c.line());
        std::fs::create_dir_all(root.join("var/lib/nvpmodel")).expect("mkdir");
        std::fs::write(root.join("var/lib/nvpmodel/status"), "pmode:0002\n").expect("write");
        assert_eq!(check_power_mode(&root, 2).status, Status::Pass);
        assert_eq!(check_power_mode(&root, 0).status, Status::Warn);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_ne!(check_disk(Path::new("/"), 1).status, Status::Fail);
    }
}
