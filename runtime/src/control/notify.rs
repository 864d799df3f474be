//! Telling the service manager how the loop is doing: systemd's notification protocol
//! (sd_notify(3)), fed from the control loop.
//!
//! [`LoopNotifier`] (in `control_loop`, which calls it) is the hook: [`LoopNotifier::ready`] once after warm-up,
//! [`LoopNotifier::tick`] at the end of every tick that completed, [`LoopNotifier::stopping`] at
//! shutdown. [`SdNotifier`] implements it over the datagram socket systemd names in
//! `NOTIFY_SOCKET`: `READY=1`, `WATCHDOG=1` from the tick (at a quarter of `WATCHDOG_USEC`, so a
//! late tick or two does not trip it), `STATUS=` with the tick counters once a second, and
//! `STOPPING=1`. A tick that stalls (a hung driver, a backend that never returns inline) sends
//! nothing, so after `WatchdogSec=` systemd kills the process and restarts it.
//!
//! The tick's part allocates nothing, takes no lock and uses no `format!`: the socket is connected
//! once at start, `WATCHDOG=1` is a constant, and the `STATUS=` line is written into a fixed buffer
//! with [`write_status`] (decimal digits by hand).
//!
//! Why not the `sd-notify` crate: its `notify` opens a new socket and builds the message in a
//! `String` on every call, which the tick must not do; the protocol itself is one datagram of
//! `KEY=VALUE` lines to a path or an abstract socket name (`@...`), as sd_notify(3) documents.

use crate::control::control_loop::{LoopCounters, LoopNotifier};
use std::os::unix::net::UnixDatagram;

/// Errors setting up the notification socket.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={path}: cannot connect ({source}); is this run by systemd with Type=notify?"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("WATCHDOG_USEC={0}: not a positive number of microseconds")]
    WatchdogUsec(String),
}

/// sd_notify over a connected unix datagram socket.
#[derive(Debug)]
pub struct SdNotifier {
    sock: UnixDatagram,
    /// Interval between `WATCHDOG=1`, ns (0: the watchdog is off).
    ping_ns: u64,
    last_ping_ns: Option<u64>,
    last_status_ns: Option<u64>,
    status: [u8; STATUS_CAP],
    /// Datagrams that could not be sent.
    pub send_errors: u64,
    /// `WATCHDOG=1` datagrams sent.
    pub pings: u64,
}

const STATUS_CAP: usize = 192;
const STATUS_EVERY_NS: u64 = 1_000_000_000;

impl SdNotifier {
    /// From the environment systemd sets for a `Type=notify` service: `None` when
    /// `NOTIFY_SOCKET` is unset (not run by systemd). The watchdog is on when `WATCHDOG_USEC`
    /// is set and `WATCHDOG_PID`, if set, is this process.
    pub fn from_env() -> Result<Option<SdNotifier>, NotifyError> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let pid_ok = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let usec = match std::env::var("WATCHDOG_USEC") {
            Ok(v) if pid_ok => Some(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&u| u > 0)
                    .ok_or(NotifyError::WatchdogUsec(v))?,
            ),
            _ => None,
        };
        SdNotifier::connect(&path.to_string_lossy(), usec.map(|u| u * 1000)).map(Some)
    }

    /// Connects to `path` (a file system path, or `@name` for an abstract socket); `watchdog_ns`
    /// is the service's watchdog timeout (`WatchdogSec=`), `None` when off.
    pub fn connect(path: &str, watchdog_ns: Option<u64>) -> Result<SdNotifier, NotifyError> {
        let err = |source| NotifyError::Connect {
            path: path.into(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
            sock.connect_addr(&addr).map_err(err)?;
        } else {
            sock.connect(path).map_err(err)?;
        }
        // A full socket buffer must never block the tick.
        sock.set_nonblocking(true).map_err(err)?;
        Ok(SdNotifier {
            sock,
            ping_ns: watchdog_ns.map_or(0, |w| w / 4),
            last_ping_ns: None,
            last_status_ns: None,
            status: [0; STATUS_CAP],
            send_errors: 0,
            pings: 0,
        })
    }

    fn send(&mut self, msg: &[u8]) {
        if self.sock.send(msg).is_err() {
            self.send_errors += 1;
        }
    }

    fn send_status(&mut self, counters: &LoopCounters) {
        let n = write_status(&mut self.status, counters);
        if self.sock.send(&self.status[..n]).is_err() {
            self.send_errors += 1;
        }
    }
}

impl LoopNotifier for SdNotifier {
    fn ready(&mut self, counters: &LoopCounters) {
        self.send(b"READY=1");
        self.send_status(counters);
    }

    fn tick(&mut self, now_ns: u64, counters: &LoopCounters) {
        if self.ping_ns > 0
            && self
                .last_ping_ns
                .is_none_or(|t| now_ns.saturating_sub(t) >= self.ping_ns)
        {
            self.last_ping_ns = Some(now_ns);
            self.pings += 1;
            self.send(b"WATCHDOG=1");
        }
        if self
            .last_status_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= STATUS_EVERY_NS)
        {
            self.last_status_ns = Some(now_ns);
            self.send_status(counters);
        }
    }

    fn stopping(&mut self) {
        self.send(b"STOPPING=1");
    }
}

/// Writes `STATUS=ticks N, fresh N, holds N, stops N, missed deadlines N, e-stop ticks N` into
/// `buf` without allocating; returns its length (cut at the buffer's end if it had to be).
pub fn write_status(buf: &mut [u8], c: &LoopCounters) -> usize {
    let mut w = Cursor { buf, at: 0 };
    w.put(b"STATUS=ticks ");
    w.num(c.ticks);
    w.put(b", fresh ");
    w.num(c.fresh);
    w.put(b", holds ");
    w.num(c.holds);
    w.put(b", stops ");
    w.num(c.stops);
    w.put(b", missed deadlines ");
    w.num(c.missed_deadlines);
    w.put(b", e-stop ticks ");
    w.num(c.estop_ticks);
    w.at
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, b: &[u8]) {
        let n = b.len().min(self.buf.len() - self.at);
        self.buf[self.at..self.at + n].copy_from_slice(&b[..n]);
        self.at += n;
    }
    fn num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_is_written_without_format() {
        let c = LoopCounters {
            ticks: 1200,
            fresh: 1187,
            holds: 3,
            stops: 10,
            missed_deadlines: 0,
            estop_ticks: 7,
            ..Default::default()
        };
        let mut buf = [0u8; STATUS_CAP];
        let n = write_status(&mut buf, &c);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf8"),
            "STATUS=ticks 1200, fresh 1187, holds 3, stops 10, missed deadlines 0, e-stop ticks 7"
        );
        let mut small = [0u8; 10];
        assert_eq!(write_status(&mut small, &c), 10);
        let c = LoopCounters {
            ticks: u64::MAX,
            ..Default::default()
        };
        let n = write_status(&mut buf, &c);
        assert!(std::str::from_utf8(&buf[..n])
            .expect("utf8")
            .starts_with("STATUS=ticks 18446744073709551615, fresh 0"));
    }
}
