//! Safety inputs: an e-stop line and an arm button, read once per control tick.
//!
//! [`SafetyInput`] is the one seam: a GPIO line ([`GpioInput`], any embedded-hal 1.0 `InputPin`,
//! opened from the Linux GPIO character device by [`open_gpio_cdev`]) and a CAN frame (in the
//! runtime) both implement it, and the runtime's e-stop latch takes either. The latch, not the
//! input, decides what a reading means for the robot; an input only reports "active" (pressed)
//! or "inactive", or an error, which the latch treats as pressed.
//!
//! Stock Debian kernels have neither `gpio-sim` nor `gpio-mockup`, so the GPIO logic is tested
//! through the `InputPin` trait with a scripted pin; [`open_gpio_cdev`] itself is only tested for
//! its error on a chip that does not exist.

use embedded_hal::digital::{InputPin, OutputPin};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// The debounce of a GPIO input when none is given.
pub const DEFAULT_DEBOUNCE_MS: u32 = 20;

/// The consumer label reflex gives the GPIO lines it requests (shown by `gpioinfo`).
const CONSUMER: &str = "reflex";

/// A two-state safety input: an e-stop (active = pressed, the robot must stop) or an arm button
/// (active = pressed).
pub trait SafetyInput {
    /// The input in the user's terms, for logs: `gpio:/dev/gpiochip0:17`, `can:can0:0E0`.
    fn name(&self) -> &str;

    /// Reads the input at `now_ns`, nanoseconds on the control loop's monotonic clock (the same
    /// clock the loop ticks on; only differences between calls matter). `Ok(true)` = active.
    ///
    /// Called once per control tick: must not block, and should not allocate while it succeeds.
    /// An `Err` means the input could not be read; an e-stop latch treats it as pressed.
    fn poll(&mut self, now_ns: u64) -> Result<bool, InputError>;
}

impl<T: SafetyInput + ?Sized> SafetyInput for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn poll(&mut self, now_ns: u64) -> Result<bool, InputError> {
        (**self).poll(now_ns)
    }
}

/// A safety input (or status output) could not be opened, parsed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input}: {message}")]
pub struct InputError {
    /// The input: `gpio:/dev/gpiochip0:17`, `can:can0:0E0`, or the spec that did not parse.
    pub input: String,
    /// What went wrong, and where it helps, what to do about it.
    pub message: String,
}

impl InputError {
    pub fn new(input: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            message: message.into(),
        }
    }
}

/// A debounced digital input on any embedded-hal 1.0 [`InputPin`].
///
/// Debouncing is asymmetric, the safe way round for an e-stop:
/// - becoming **active** takes effect on the first sample that reads active. A contact bounce or
///   a glitch on the wire then stops the robot for nothing, which is a nuisance; ignoring a real
///   press for the length of a debounce window would be a hazard.
/// - becoming **inactive** takes effect only after the line has read inactive on every sample for
///   `debounce` (default [`DEFAULT_DEBOUNCE_MS`]). A bouncing contact being released, or a loose
///   wire, must not re-enable a robot between two bounces; any active sample restarts the
///   window. (Samples are taken at the control rate: a bounce between two samples is not seen,
///   which is harmless because an inactive sample never takes effect alone.)
///
/// The first sample is taken as it reads (there is no earlier level to debounce from). A read
/// error is returned and also restarts the release window, as an active sample would.
pub struct GpioInput<P> {
    pin: P,
    name: String,
    active_low: bool,
    debounce_ns: u64,
    /// The debounced level, `None` before the first sample.
    active: Option<bool>,
    /// While the debounced level is active: when the line started reading inactive.
    inactive_since: Option<u64>,
}

impl<P: InputPin> GpioInput<P>
where
    P::Error: Display,
{
    /// Wraps `pin`. `active_low`: the input is active when the line reads low (a normally-closed
    /// e-stop contact pulling the line up, or a button to ground with a pull-up).
    pub fn new(pin: P, name: impl Into<String>, active_low: bool, debounce_ms: u32) -> Self {
        Self {
            pin,
            name: name.into(),
            active_low,
            debounce_ns: u64::from(debounce_ms) * 1_000_000,
            active: None,
            inactive_since: None,
        }
    }

    /// The wrapped pin.
    pub fn pin(&self) -> &P {
        &self.pin
    }
}

impl<P: InputPin> SafetyInput for GpioInput<P>
where
    P::Error: Display,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, now_ns: u64) -> Result<bool, InputError> {
        let high = match self.pin.is_high() {
            Ok(h) => h,
            Err(e) => {
                // Fail-safe: an unreadable line counts as active, so a release must again be
                // read cleanly for the whole window.
                self.active = Some(true);
                self.inactive_since = None;
                return Err(InputError::new(
                    self.name.as_str(),
                    format!("reading the line: {e}"),
                ));
            }
        };
        let raw_active = high != self.active_low;
        let active = match self.active {
            None => raw_active,
            Some(_) if raw_active => {
                self.inactive_since = None;
                true
            }
            Some(false) => false,
            Some(true) => {
                let since = *self.inactive_since.get_or_insert(now_ns);
                if now_ns.saturating_sub(since) >= self.debounce_ns {
                    self.inactive_since = None;
                    false
                } else {
                    true
                }
            }
        };
        self.active = Some(active);
        Ok(active)
    }
}

/// A GPIO line given on the command line: `gpio:CHIP:LINE[:active-low][:debounce=MSms]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioSpec {
    /// The character device, e.g. `/dev/gpiochip0` (`gpiochip0` alone is taken as under /dev).
    pub chip: PathBuf,
    /// The line offset on that chip (`gpioinfo` lists them).
    pub line: u32,
    pub active_low: bool,
    pub debounce_ms: u32,
}

const GPIO_SYNTAX: &str = "expected gpio:CHIP:LINE[:active-low][:debounce=MS], e.g. \
     gpio:/dev/gpiochip0:17:active-low:debounce=20 (CHIP is the character device, or gpiochip0 \
     for /dev/gpiochip0; LINE is the line offset that `gpioinfo` lists; active-low when the line \
     reads low while pressed; debounce in ms, default 20, delays only the release)";

/// Parses `gpio:CHIP:LINE[:active-low][:debounce=MS]` (options in any order; `MS` may end in
/// `ms`). Errors quote the spec and teach the syntax.
pub fn parse_gpio_spec(spec: &str) -> Result<GpioSpec, InputError> {
    let err = |what: String| InputError::new(format!("`{spec}`"), format!("{what}; {GPIO_SYNTAX}"));
    let rest = spec
        .strip_prefix("gpio:")
        .ok_or_else(|| err("not a GPIO input".into()))?;
    let mut parts = rest.split(':');
    let chip = parts
        .next()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| err("no chip".into()))?;
    let line = parts.next().ok_or_else(|| err("no line".into()))?;
    let line: u32 = line
        .parse()
        .map_err(|_| err(format!("`{line}` is not a line number")))?;
    let chip = if chip.contains('/') {
        PathBuf::from(chip)
    } else {
        Path::new("/dev").join(chip)
    };
    let mut out = GpioSpec {
        chip,
        line,
        active_low: false,
        debounce_ms: DEFAULT_DEBOUNCE_MS,
    };
    for opt in parts {
        if opt == "active-low" {
            out.active_low = true;
        } else if opt == "active-high" {
            out.active_low = false;
        } else if let Some(ms) = opt.strip_prefix("debounce=") {
            out.debounce_ms = ms
                .strip_suffix("ms")
                .unwrap_or(ms)
                .parse()
                .map_err(|_| err(format!("`{ms}` is not a debounce in ms")))?;
        } else {
            return Err(err(format!("unknown option `{opt}`")));
        }
    }
    Ok(out)
}

impl GpioSpec {
    /// The name the input reports: `gpio:/dev/gpiochip0:17`.
    pub fn name(&self) -> String {
        format!("gpio:{}:{}", self.chip.display(), self.line)
    }

    /// Opens the line as a debounced input ([`open_gpio_cdev`]).
    pub fn open(&self) -> Result<GpioInput<CdevPin>, InputError> {
        open_gpio_cdev(&self.chip, self.line, self.active_low, self.debounce_ms)
    }
}

pub use linux_embedded_hal::CdevPin;

/// Requests `line` of the GPIO character device `chip` as an input (consumer `reflex`) and wraps
/// it in a debounced [`GpioInput`] named `gpio:CHIP:LINE`. The line is read as it is wired
/// (`active_low` is applied here, not by the kernel).
///
/// Errors name the chip and line: a missing chip, a line offset the chip does not have, a line
/// another program holds (with its consumer label).
pub fn open_gpio_cdev(
    chip: &Path,
    line: u32,
    active_low: bool,
    debounce_ms: u32,
) -> Result<GpioInput<CdevPin>, InputError> {
    let name = format!("gpio:{}:{line}", chip.display());
    let handle = request_line(chip, line, &name, true)?;
    let pin = CdevPin::new(handle)
        .map_err(|e| InputError::new(name.as_str(), format!("reading line {line}'s info: {e}")))?;
    Ok(GpioInput::new(pin, name, active_low, debounce_ms))
}

fn request_line(
    chip_path: &Path,
    line: u32,
    name: &str,
    input: bool,
) -> Result<linux_embedded_hal::gpio_cdev::LineHandle, InputError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let mut chip = Chip::new(chip_path).map_err(|e| {
        InputError::new(
            name,
            format!(
                "opening GPIO chip `{}`: {e} (`gpiodetect` lists this board's chips; \
                 reading them needs access to /dev/gpiochip*)",
                chip_path.display()
            ),
        )
    })?;
    let lines = chip.num_lines();
    let l = chip.get_line(line).map_err(|e| {
        InputError::new(
            name,
            format!(
                "line {line} of `{}` ({lines} lines): {e}",
                chip_path.display()
            ),
        )
    })?;
    if let Ok(info) = l.info() {
        if info.is_used() {
            return Err(InputError::new(
                name,
                format!(
                    "line {line} of `{}` is busy (held by `{}`)",
                    chip_path.display(),
                    info.consumer().unwrap_or("the kernel")
                ),
            ));
        }
    }
    let (flags, what) = if input {
        (LineRequestFlags::INPUT, "an input")
    } else {
        (LineRequestFlags::OUTPUT, "an output")
    };
    l.request(flags, 0, CONSUMER).map_err(|e| {
        InputError::new(
            name,
            format!(
                "requesting line {line} of `{}` as {what}: {e}",
                chip_path.display()
            ),
        )
    })
}

/// A status output (an LED): on or off. The e-stop latch drives it: steady on while armed,
/// blinking while stopped.
pub trait StatusOutput {
    fn name(&self) -> &str;
    /// Sets the output; called only when the level changes.
    fn set(&mut self, on: bool) -> Result<(), InputError>;
}

impl<T: StatusOutput + ?Sized> StatusOutput for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn set(&mut self, on: bool) -> Result<(), InputError> {
        (**self).set(on)
    }
}

/// A status output on any embedded-hal 1.0 [`OutputPin`].
pub struct GpioOutput<P> {
    pin: P,
    name: String,
    active_low: bool,
}

impl<P: OutputPin> GpioOutput<P>
where
    P::Error: Display,
{
    /// `active_low`: the LED lights when the line is driven low.
    pub fn new(pin: P, name: impl Into<String>, active_low: bool) -> Self {
        Self {
            pin,
            name: name.into(),
            active_low,
        }
    }

    pub fn pin(&self) -> &P {
        &self.pin
    }
}

impl<P: OutputPin> StatusOutput for GpioOutput<P>
where
    P::Error: Display,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn set(&mut self, on: bool) -> Result<(), InputError> {
        let r = if on != self.active_low {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        };
        r.map_err(|e| InputError::new(self.name.as_str(), format!("setting the line: {e}")))
    }
}

/// Requests `line` of `chip` as an output (initially low), for a status LED. Errors as
/// [`open_gpio_cdev`]'s.
pub fn open_gpio_cdev_output(
    chip: &Path,
    line: u32,
    active_low: bool,
) -> Result<GpioOutput<CdevPin>, InputError> {
    let name = format!("gpio:{}:{line}", chip.display());
    let handle = request_line(chip, line, &name, false)?;
    let pin = CdevPin::new(handle)
        .map_err(|e| InputError::new(name.as_str(), format!("reading line {line}'s info: {e}")))?;
    Ok(GpioOutput::new(pin, name, active_low))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use embedded_hal::digital::{ErrorKind, ErrorType};
    use std::collections::VecDeque;

    #[derive(Debug)]
    struct PinError;

    impl Display for PinError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("EIO (scripted)")
        }
    }

    impl embedded_hal::digital::Error for PinError {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    /// Replays a script of line levels (`Some(high)`) and read errors (`None`); the last entry
    /// repeats.
    struct ScriptedPin {
        script: VecDeque<Option<bool>>,
        last: Option<bool>,
    }

    impl ScriptedPin {
        fn new(script: &[Option<bool>]) -> Self {
            Self {
                script: script.iter().copied().collect(),
                last: Some(false),
            }
        }
    }

    impl ErrorType for ScriptedPin {
        type Error = PinError;
    }

    impl InputPin for ScriptedPin {
        fn is_high(&mut self) -> Result<bool, PinError> {
            if let Some(next) = self.script.pop_front() {
                self.last = next;
            }
            self.last.ok_or(PinError)
        }
        fn is_low(&mut self) -> Result<bool, PinError> {
            self.is_high().map(|h| !h)
        }
    }

    const MS: u64 = 1_000_000;
    const H: Option<bool> = Some(true);
    const L: Option<bool> = Some(false);

    /// Polls `input` every 10 ms, one sample per script entry.
    fn run(active_low: bool, script: &[Option<bool>]) -> Vec<Result<bool, InputError>> {
        let mut input = GpioInput::new(ScriptedPin::new(script), "gpio:test:1", active_low, 20);
        (0..script.len() as u64)
            .map(|k| input.poll(k * 10 * MS))
            .collect()
    }

    fn levels(r: &[Result<bool, InputError>]) -> Vec<bool> {
        r.iter().map(|x| *x.as_ref().unwrap()).collect()
    }

    #[test]
    fn press_is_immediate_release_is_debounced() {
        // Samples every 10 ms, debounce 20 ms: inactive at the third inactive sample in a row.
        let r = run(false, &[L, H, L, L, L, L]);
        assert_eq!(levels(&r), [false, true, true, true, false, false]);
    }

    #[test]
    fn bounce_inside_the_window_does_not_release() {
        let r = run(false, &[L, H, L, H, L, L, H, L, L, L, L]);
        assert_eq!(
            levels(&r),
            [false, true, true, true, true, true, true, true, true, false, false]
        );
    }

    #[test]
    fn a_single_active_glitch_is_a_press() {
        let r = run(false, &[L, L, H, L, L, L]);
        assert_eq!(levels(&r), [false, false, true, true, true, false]);
    }

    #[test]
    fn active_low_inverts() {
        let r = run(true, &[H, L, H, H, H]);
        assert_eq!(levels(&r), [false, true, true, true, false]);
        // Pressed (low) at the first sample: active at once.
        let r = run(true, &[L]);
        assert_eq!(levels(&r), [true]);
    }

    #[test]
    fn zero_debounce_releases_at_once() {
        let mut input = GpioInput::new(ScriptedPin::new(&[H, L]), "gpio:test:1", false, 0);
        assert!(input.poll(0).unwrap());
        assert!(!input.poll(MS).unwrap());
    }

    #[test]
    fn read_errors_are_returned_and_restart_the_release_window() {
        let r = run(false, &[L, None, L, L, L]);
        assert_eq!(r[0], Ok(false));
        let e = r[1].as_ref().unwrap_err();
        assert_eq!(e.input, "gpio:test:1");
        assert!(e.to_string().contains("gpio:test:1"), "{e}");
        assert!(e.to_string().contains("EIO"), "{e}");
        // After the error the line must read inactive for the whole window again.
        assert_eq!(levels(&r[2..]), [true, true, false]);
    }

    #[test]
    fn boxed_inputs_work_through_the_trait() {
        let mut b: Box<dyn SafetyInput> = Box::new(GpioInput::new(
            ScriptedPin::new(&[H]),
            "gpio:x:2",
            false,
            20,
        ));
        assert_eq!(b.name(), "gpio:x:2");
        assert_eq!(b.poll(0), Ok(true));
    }

    #[test]
    fn gpio_specs() {
        assert_eq!(
            parse_gpio_spec("gpio:/dev/gpiochip0:17").unwrap(),
            GpioSpec {
                chip: "/dev/gpiochip0".into(),
                line: 17,
                active_low: false,
                debounce_ms: 20,
            }
        );
        let s = parse_gpio_spec("gpio:gpiochip2:5:active-low:debounce=50ms").unwrap();
        assert_eq!(s.chip, Path::new("/dev/gpiochip2"));
        assert_eq!((s.line, s.active_low, s.debounce_ms), (5, true, 50));
        assert_eq!(s.name(), "gpio:/dev/gpiochip2:5");
        assert_eq!(
            parse_gpio_spec("gpio:gpiochip0:3:debounce=0")
                .unwrap()
                .debounce_ms,
            0
        );
        for (bad, want) in [
            ("can:can0:0E0", "not a GPIO input"),
            ("gpio:", "no chip"),
            ("gpio:/dev/gpiochip0", "no line"),
            ("gpio:/dev/gpiochip0:x", "`x` is not a line number"),
            ("gpio:/dev/gpiochip0:-1", "`-1` is not a line number"),
            ("gpio:gpiochip0:1:debounce=fast", "`fast` is not a debounce"),
            ("gpio:gpiochip0:1:pullup", "unknown option `pullup`"),
        ] {
            let e = parse_gpio_spec(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
            assert!(e.contains("expected gpio:CHIP:LINE"), "{bad}: {e}");
        }
    }

    #[test]
    fn opening_a_missing_chip_names_it() {
        let e = open_gpio_cdev(Path::new("/dev/gpiochip99"), 17, false, 20)
            .err()
            .unwrap();
        assert_eq!(e.input, "gpio:/dev/gpiochip99:17");
        let msg = e.to_string();
        assert!(msg.contains("opening GPIO chip `/dev/gpiochip99`"), "{msg}");
        let e = open_gpio_cdev_output(Path::new("/dev/gpiochip99"), 3, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("gpiochip99"), "{e}");
    }

    /// Records the levels set.
    struct ScriptedOut(Vec<bool>);

    impl ErrorType for ScriptedOut {
        type Error = PinError;
    }

    impl OutputPin for ScriptedOut {
        fn set_low(&mut self) -> Result<(), PinError> {
            self.0.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), PinError> {
            self.0.push(true);
            Ok(())
        }
    }

    #[test]
    fn status_output_levels() {
        let mut o = GpioOutput::new(ScriptedOut(vec![]), "gpio:led:4", true);
        o.set(true).unwrap();
        o.set(false).unwrap();
        assert_eq!(o.pin().0, [false, true]);
        assert_eq!(o.name(), "gpio:led:4");
    }
}
