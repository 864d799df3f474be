//! systemd's watchdog is fed by the control loop: a unix datagram socket stands in for systemd's
//! `NOTIFY_SOCKET`, and the loop's [`SdNotifier`] sends `READY=1` after warm-up, `WATCHDOG=1`
//! from completed ticks, `STATUS=` with the counters, `STOPPING=1` at shutdown; a tick that
//! stalls (an inline backend that does not return) sends nothing.

use reflex_runtime::can::sink::NullSink;
use reflex_runtime::clock::ManualClock;
use reflex_runtime::control::notify::SdNotifier;
use reflex_runtime::infer::runner::InlineRunner;
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::fakes::{FixedState, FnBackend};
use reflex_testkit::rig::{inline, request, scripted_loop, PERIOD};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Every datagram that arrives until `quiet` passes without one.
fn drain(sock: &UnixDatagram, quiet: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(quiet)).expect("timeout");
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

fn count(msgs: &[String], prefix: &str) -> usize {
    msgs.iter().filter(|m| m.starts_with(prefix)).count()
}

#[test]
fn the_loop_feeds_the_watchdog_while_healthy_and_says_ready_and_stopping() {
    let dir = WorkDir::new("notify-healthy");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind");
    // WatchdogSec = 8 periods: WATCHDOG=1 every 2 periods (a quarter).
    let n = SdNotifier::connect(path.to_str().expect("utf8"), Some(8 * PERIOD)).expect("connect");
    let runner = inline(|_, out: &mut [f32]| out.fill(0.05));
    let (lp, _, _) = scripted_loop(FixedState(vec![0.0, 0.0]), NullSink::default(), runner);
    let mut lp = lp.with_notifier(Box::new(n));
    let clock = ManualClock::new(0);
    // The kernel queues few datagrams per socket (net.unix.max_dgram_qlen, 10 by default;
    // systemd reads its socket as they come): read after each tick, as systemd would.
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let mut got = drain(&systemd, Duration::from_millis(1));
    for k in 0..100 {
        lp.tick(k * PERIOD).expect("tick");
        got.extend(drain(&systemd, Duration::from_millis(1)));
    }
    lp.shutdown(100 * PERIOD);
    got.extend(drain(&systemd, Duration::from_millis(100)));
    assert_eq!(got[0], "READY=1", "{got:?}");
    assert_eq!(count(&got, "WATCHDOG=1"), 50, "{got:?}");
    // STATUS= at ready and then once a second of loop time (10 ticks).
    assert_eq!(count(&got, "STATUS="), 11, "{got:?}");
    let last_status = got
        .iter()
        .rfind(|m| m.starts_with("STATUS="))
        .expect("status");
    assert!(
        last_status.starts_with("STATUS=ticks 91, fresh "),
        "{last_status}"
    );
    assert_eq!(got.last().map(String::as_str), Some("STOPPING=1"));
}

#[test]
fn a_stalled_tick_stops_feeding_the_watchdog() {
    let dir = WorkDir::new("notify-stall");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind");
    let (release, gate) = std::sync::mpsc::channel::<()>();
    // Five inferences go through; the sixth blocks its tick (an inline backend that hangs).
    for _ in 0..5 {
        release.send(()).expect("gate");
    }
    let sock_path = path.to_str().expect("utf8").to_string();
    let looping = std::thread::Builder::new()
        .name("stall-loop".into())
        .spawn(move || {
            // WatchdogSec = 4 periods: WATCHDOG=1 every tick.
            let n = SdNotifier::connect(&sock_path, Some(4 * PERIOD)).expect("connect");
            let mut backend = FnBackend::new(|_, out: &mut [f32]| out.fill(0.05));
            backend.gate = Some(gate);
            let runner = InlineRunner::new(backend, request());
            let (lp, _, _) = scripted_loop(FixedState(vec![0.0, 0.0]), NullSink::default(), runner);
            let mut lp = lp.with_notifier(Box::new(n));
            for k in 0..40 {
                lp.tick(k * PERIOD).expect("tick");
                // Paced, so that the few datagrams the kernel queues per socket are read.
                std::thread::sleep(Duration::from_millis(5));
            }
            lp.counters.ticks
        })
        .expect("spawn");
    let before = drain(&systemd, Duration::from_millis(500));
    let fed = count(&before, "WATCHDOG=1");
    assert!(
        (5..40).contains(&fed),
        "{fed} pings before the stall: {before:?}"
    );
    // The tick is stuck in the backend: a whole second without a datagram.
    let during = drain(&systemd, Duration::from_millis(1000));
    assert!(during.is_empty(), "fed while stalled: {during:?}");
    assert!(!looping.is_finished(), "the loop was not stalled");
    // Released, the loop completes its ticks and feeds the watchdog again.
    for _ in 0..100 {
        release.send(()).expect("gate");
    }
    let ticks = looping.join().expect("loop thread");
    let after = drain(&systemd, Duration::from_millis(300));
    assert_eq!(ticks, 40);
    let resumed = count(&after, "WATCHDOG=1");
    assert!(
        resumed >= 1 && fed + resumed <= 40,
        "{fed} + {resumed}: {after:?}"
    );
}

#[test]
fn an_abstract_notify_socket_is_reached_too() {
    // systemd's own NOTIFY_SOCKET is a path; containers and some managers use `@name`.
    let name = format!("reflex-test-notify-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name")
    };
    let systemd = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    let mut n = SdNotifier::connect(&format!("@{name}"), None).expect("connect");
    reflex_runtime::control::LoopNotifier::stopping(&mut n);
    assert_eq!(drain(&systemd, Duration::from_millis(100)), ["STOPPING=1"]);
    let e = SdNotifier::connect("/nonexistent/notify", None).expect_err("no socket");
    assert!(e.to_string().contains("/nonexistent/notify"), "{e}");
}
