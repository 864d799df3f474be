//! The DBC codec against Python `cantools`, the reference implementation: a few hundred
//! deterministic pseudo-random physical values per signal, encoded by us and by
//! `encode_message(..., strict=True)`, must give the same bytes (or both be refused), and both
//! decoders must agree on them and on random payloads. Also: encoding and decoding allocate
//! nothing, errors included.
//!
//! Needs `python3` with cantools (scripts/setup.sh installs it); without them the test fails,
//! unless `REFLEX_SKIP_PY=1` (see TESTING.md).

use reflex_runtime::can::dbc::{Dbc, Message, Signal, SignalError, ValueType, MAX_FD_LEN};
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::python;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use reflex_testkit::counting::allocs;

/// Both byte orders, signed and unsigned, scale and offset (fractional and integer), lengths
/// 1, 3, 12, 13, 16, 20, 30 and 64, a 6-byte message, an extended ID, float32 and float64
/// signals, [min|max] ranges that are narrower than the bits; CAN FD messages of 16 and 64 bytes
/// with signals in their upper bytes in both byte orders (an Intel signal across byte 8, 64-bit
/// signals at unaligned starts spanning nine bytes, the last byte of a 64-byte payload).
const DBC: &str = r#"VERSION ""

NS_ :
    CM_
    SIG_VALTYPE_

BS_:

BU_: Robot Motor

BO_ 256 Command: 8 Robot
 SG_ enable : 0|1@1+ (1,0) [0|1] "" Motor
 SG_ mode : 1|3@1- (1,0) [0|0] "" Motor
 SG_ position : 4|12@1+ (0.1,-100) [-100|309.5] "deg" Motor
 SG_ velocity : 23|16@0- (0.01,0) [0|0] "rad/s" Motor
 SG_ current : 36|20@0+ (0.5,10) [0|0] "mA" Motor
 SG_ gain : 56|8@1- (2,-3) [0|0] "" Motor

BO_ 2566844672 Feedback: 8 Motor
 SG_ torque : 0|32@1- (1,0) [0|0] "Nm" Robot
 SG_ counter : 39|16@0+ (1,0) [0|65535] "" Robot
 SG_ temp : 48|16@1- (0.001,0.5) [-30|30] "degC" Robot

BO_ 300 Wide: 8 Robot
 SG_ big : 7|64@0+ (1,0) [0|0] "" Motor

BO_ 301 Double: 8 Robot
 SG_ d64 : 0|64@1- (0.5,2) [0|0] "" Motor

BO_ 302 Odd: 6 Robot
 SG_ u20 : 7|20@0+ (0.25,1.5) [0|0] "" Motor
 SG_ m3 : 19|3@0- (1,0) [0|0] "" Motor
 SG_ s20 : 24|20@1- (1,0) [0|0] "" Motor

BO_ 303 Fd16: 16 Robot
 SG_ lo : 0|8@1+ (1,0) [0|0] "" Motor
 SG_ f32 : 24|32@1- (1,0) [0|0] "" Motor
 SG_ cross : 60|12@1- (0.5,-3) [0|0] "" Motor
 SG_ mot : 83|20@0- (0.1,0) [-1000|1000] "" Motor
 SG_ hi : 119|16@0+ (1,0) [0|0] "" Motor

BO_ 2147484160 Fd64: 64 Robot
 SG_ d64 : 64|64@1- (1,0) [0|0] "" Motor
 SG_ m30 : 175|30@0+ (0.001,0) [0|0] "" Motor
 SG_ a64 : 261|64@1+ (1,0) [0|0] "" Motor
 SG_ m64 : 403|64@0- (1,0) [0|0] "" Motor
 SG_ i13 : 485|13@1- (0.25,10) [0|0] "" Motor
 SG_ last : 511|8@0+ (1,0) [0|200] "" Motor

CM_ SG_ 256 velocity "Joint velocity;
in rad/s";
SIG_VALTYPE_ 2566844672 torque : 1;
SIG_VALTYPE_ 301 d64 : 2;
SIG_VALTYPE_ 303 f32 : 1;
SIG_VALTYPE_ 2147484160 d64 : 2;
"#;

/// splitmix64: deterministic cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A physical value for `s`: mostly valid ones (with fractions to round, exact halves to test
/// ties to even), some past the bits or at the edge of [min|max].
fn value(s: &Signal, rng: &mut Rng) -> f64 {
    let (scale, offset) = (s.scale(), s.offset());
    let bits = u32::from(s.length());
    let (lo, hi) = match s.value_type() {
        ValueType::Float32 | ValueType::Float64 => {
            return match rng.next() % 4 {
                0 => (rng.unit() - 0.5) * 2e6,
                1 => (rng.unit() - 0.5) * 10f64.powi((rng.next() % 60) as i32 - 30),
                2 => f64::from(f32::from_bits(rng.next() as u32 & 0x7F7F_FFFF)),
                _ => 0.0,
            };
        }
        ValueType::Unsigned => (0.0, 2f64.powi(bits as i32) - 1.0),
        ValueType::Signed => (
            -(2f64.powi(bits as i32 - 1)),
            2f64.powi(bits as i32 - 1) - 1.0,
        ),
    };
    let raw = if bits >= 53 {
        // `lo + unit * span` loses the low bits; any u64 will do.
        (rng.next() >> (64 - bits)) as f64
    } else {
        lo + ((rng.next() % ((hi - lo) as u64 + 1)) as f64)
    };
    let kind = rng.next() % 10;
    let v = match kind {
        0..=5 => raw * scale + offset + (rng.unit() - 0.5) * 0.98 * scale,
        6 => (raw + 0.5) * scale + offset,
        7 => raw * scale + offset,
        8 => {
            let past = if rng.next().is_multiple_of(2) {
                hi + 1.0 + (rng.next() % 3) as f64
            } else {
                lo - 1.0 - (rng.next() % 3) as f64
            };
            past * scale + offset
        }
        _ => {
            // Around the DBC range's edges: inside and outside cantools' 1e-6 * scale tolerance.
            let edge = if rng.next().is_multiple_of(2) {
                s.min()
            } else {
                s.max()
            };
            let nudge = [0.0, 1e-7, -1e-7, 1e-5, -1e-5][(rng.next() % 5) as usize];
            edge + nudge * scale.abs()
        }
    };
    if kind <= 7 && s.min() < s.max() {
        v.clamp(s.min(), s.max())
    } else {
        v
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02X}")).collect()
}

/// `name=value` pairs as cantools printed them, in our signal order.
fn parse_values(m: &Message, fields: &[&str]) -> Vec<f64> {
    let mut out = vec![f64::NAN; m.signals().len()];
    assert_eq!(fields.len(), out.len(), "{fields:?}");
    for field in fields {
        let (name, value) = field.split_once('=').expect("name=value");
        let i = m.signal_index(name).expect("a signal of the message");
        out[i] = value.parse().unwrap_or_else(|_| panic!("value {field}"));
    }
    out
}

fn assert_close(m: &Message, ours: &[f64], theirs: &[f64], what: &str) {
    for ((s, a), b) in m.signals().iter().zip(ours).zip(theirs) {
        let same = (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            same,
            "{what}: signal {} decodes to {a} here, {b} in cantools",
            s.name()
        );
    }
}

#[test]
fn codec_matches_cantools() {
    let dbc = Dbc::parse(DBC, "cross.dbc").unwrap();
    let mut rng = Rng(0x5EED_DBC0);
    let mut cases = String::new();
    // (message, our payload or None if we refused) per encode case; message per decode case.
    let mut encoded = Vec::new();
    let mut decoded = Vec::new();
    for k in 0..600 {
        let m = &dbc.messages()[k % dbc.messages().len()];
        let values: Vec<f64> = m.signals().iter().map(|s| value(s, &mut rng)).collect();
        let mut data = [0u8; MAX_FD_LEN];
        let ours = m
            .encode_into_fd(values.iter().copied().enumerate(), &mut data)
            .ok()
            .map(|len| data[..len].to_vec());
        // The classic buffer gives the same result for a classic message, refuses CAN FD.
        let mut classic = [0u8; 8];
        let r = m.encode_into(values.iter().copied().enumerate(), &mut classic);
        if m.is_fd() {
            assert!(matches!(r, Err(SignalError::TooLongForClassic { .. })));
        } else {
            assert_eq!(r.ok().map(|len| classic[..len].to_vec()), ours);
        }
        write!(cases, "E {}", m.name()).unwrap();
        for (s, v) in m.signals().iter().zip(&values) {
            write!(cases, " {}={v:?}", s.name()).unwrap();
        }
        cases.push('\n');
        encoded.push((m, values, ours));
    }
    for k in 0..200 {
        let m = &dbc.messages()[k % dbc.messages().len()];
        let payload: Vec<u8> = (0..m.size()).map(|_| rng.next() as u8).collect();
        writeln!(cases, "D {} {}", m.name(), hex(&payload)).unwrap();
        decoded.push((m, payload));
    }
    let dir = WorkDir::new("dbc_cantools");
    let (dbc_path, cases_path, out_path) = (
        dir.join("cross.dbc"),
        dir.join("cases.txt"),
        dir.join("cantools.txt"),
    );
    std::fs::write(&dbc_path, DBC).unwrap();
    std::fs::write(&cases_path, &cases).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let packages = "cantools==45.1.0";
    if python::reference(
        "dbc_cantools.py",
        [&dbc_path, &cases_path, &out_path],
        packages,
    )
    .is_none()
    {
        return;
    }
    let out = std::fs::read_to_string(&out_path).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), encoded.len() + decoded.len());

    let (mut both_ok, mut both_refused) = (0, 0);
    for ((m, values, ours), line) in encoded.iter().zip(&lines) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let case = format!("{} {values:?}", m.name());
        match (ours, fields[0]) {
            (Some(ours), "OK") => {
                assert_eq!(hex(ours), fields[1], "{case}: payloads differ");
                let theirs = parse_values(m, &fields[2..]);
                let mut mine = vec![0.0; m.signals().len()];
                m.decode(ours, &mut mine).unwrap();
                assert_close(m, &mine, &theirs, &case);
                both_ok += 1;
            }
            (None, "ERR") => both_refused += 1,
            (Some(ours), _) => panic!("{case}: we encode {}, cantools says {line}", hex(ours)),
            (None, _) => {
                let mut data = [0u8; MAX_FD_LEN];
                let err = m
                    .encode_into_fd(values.iter().copied().enumerate(), &mut data)
                    .unwrap_err();
                panic!("{case}: we refuse ({err}), cantools encodes {line}");
            }
        }
    }
    // The cases exercise both outcomes (the generator is deterministic, so these are fixed).
    assert!(
        both_ok >= 300 && both_refused >= 50,
        "{both_ok} encoded, {both_refused} refused"
    );
    // ... for the CAN FD messages too.
    let fd_ok = encoded
        .iter()
        .zip(&lines)
        .filter(|((m, _, ours), _)| m.is_fd() && ours.is_some())
        .count();
    assert!(fd_ok >= 60, "{fd_ok} CAN FD payloads encoded");

    for ((m, payload), line) in decoded.iter().zip(&lines[encoded.len()..]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], "OK", "{line}");
        let theirs = parse_values(m, &fields[1..]);
        let mut mine = vec![0.0; m.signals().len()];
        m.decode(payload, &mut mine).unwrap();
        assert_close(
            m,
            &mine,
            &theirs,
            &format!("decode {} {}", m.name(), hex(payload)),
        );
    }
}

#[test]
fn encode_and_decode_allocate_nothing() {
    let dbc = Dbc::parse(DBC, "cross.dbc").unwrap();
    let mut rng = Rng(7);
    let cases: Vec<(&Message, Vec<f64>)> = (0..300)
        .map(|k| {
            let m = &dbc.messages()[k % dbc.messages().len()];
            (m, m.signals().iter().map(|s| value(s, &mut rng)).collect())
        })
        .collect();
    let mut out = [0.0; 8];
    // The counter sees allocations on this thread (the test could fail).
    let probe = allocs();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(allocs() > probe && v.len() == 16);
    let before = allocs();
    let (mut ok, mut refused) = (0, 0);
    for (m, values) in &cases {
        let mut data = [0u8; MAX_FD_LEN];
        match m.encode_into_fd(values.iter().copied().enumerate(), &mut data) {
            Ok(len) => {
                m.decode(&data[..len], &mut out).unwrap();
                ok += 1;
            }
            Err(e) => {
                std::hint::black_box(&e);
                refused += 1;
            }
        }
        // The classic buffer, CAN FD refusals included.
        let mut classic = [0u8; 8];
        let r = m.encode_into(values.iter().copied().enumerate(), &mut classic);
        std::hint::black_box(&r);
        for s in m.signals() {
            std::hint::black_box(s.extract(&data));
        }
        std::hint::black_box(
            m.decode(&data[..m.size().saturating_sub(1)], &mut out)
                .is_err(),
        );
    }
    let n = allocs() - before;
    assert_eq!(
        n,
        0,
        "{n} heap allocations in {} encodes and decodes",
        cases.len()
    );
    assert!(ok > 100 && refused > 10, "{ok} encoded, {refused} refused");
}

/// The DBC files of the field cases (`tests/data/dbc/`), as the tools of the trade write them:
/// Windows-1252 (`°` in a unit, the case from `../shared/cases/dbc-cp1252/`), `//` comments
/// after statements, extended multiplexing in `SG_MUL_VAL_`, J1939 parameter groups of 9, 20
/// and 100 bytes, long names from `SystemMessageLongSymbol` / `SystemSignalLongSymbol`.
const FIELD_CASES: [&str; 5] = [
    "robot_cp1252.dbc",
    "trailing_comments.dbc",
    "extended_mux.dbc",
    "j1939.dbc",
    "long_names.dbc",
];

fn field_case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dbc")
        .join(name)
}

/// Our reading of a DBC in the layout format of `tests/python/dbc_layout.py`.
fn layout(dbc: &Dbc) -> Vec<String> {
    let mut out = Vec::new();
    for m in dbc.messages() {
        out.push(format!(
            "M {} {} {} {}",
            m.name(),
            m.id(),
            u8::from(m.is_extended()),
            m.size()
        ));
        for s in m.signals() {
            let (switch, ids) = match s.selector() {
                None => ("-".to_string(), "-".to_string()),
                Some((sw, ranges)) => (
                    m.signals()[sw].name().to_string(),
                    ranges
                        .iter()
                        .flat_map(|&(lo, hi)| lo..=hi)
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            };
            out.push(format!(
                "S {} {} {} {} {} {} {} {} {} '{}' {switch} {ids}",
                s.name(),
                s.start_bit(),
                s.length(),
                match s.byte_order() {
                    reflex_runtime::can::dbc::ByteOrder::LittleEndian => "little_endian",
                    reflex_runtime::can::dbc::ByteOrder::BigEndian => "big_endian",
                },
                u8::from(s.value_type() == ValueType::Signed),
                s.scale(),
                s.offset(),
                s.min(),
                s.max(),
                s.unit(),
            ));
        }
    }
    out
}

/// Compares a layout line field by field, numbers as numbers (`1` and `1.0` agree).
fn same_layout_line(ours: &str, theirs: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (
        ours.split_whitespace().collect(),
        theirs.split_whitespace().collect(),
    );
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x == y || matches!((x.parse::<f64>(), y.parse::<f64>()), (Ok(p), Ok(q)) if p == q)
        })
}

/// Every field case reads here as in cantools (strict mode, its default cp1252 for DBC files):
/// the same messages, IDs, lengths, signal layouts, units, long names and multiplexer
/// relations; and random payloads decode to the same signals (a multiplexed signal only where
/// its multiplexers select it) with the same values. Messages that fit one frame and are not
/// multiplexed also encode byte for byte as cantools (through `codec_matches_cantools`'s
/// script); J1939 groups of other lengths are refused by our frame encoder.
#[test]
fn field_cases_read_as_cantools_reads_them() {
    let dir = WorkDir::new("dbc-field-cases");
    let mut rng = Rng(0xF1E1_D0CA);
    for name in FIELD_CASES {
        let path = field_case(name);
        let bytes = std::fs::read(&path).unwrap();
        let dbc = Dbc::from_bytes(&bytes, name).unwrap_or_else(|e| panic!("{e}"));
        let mut cases = String::new();
        let mut payloads = Vec::new();
        for m in dbc.messages() {
            for _ in 0..40 {
                let mut payload: Vec<u8> = (0..m.size()).map(|_| rng.next() as u8).collect();
                // Multiplexer values the file defines (cantools refuses the others): ArmDiag's
                // Page 0 to 2 in byte 0, SubPage 2 or 3 in byte 1.
                if m.is_multiplexed() {
                    payload[0] %= 3;
                    payload[1] = 2 + payload[1] % 2;
                }
                writeln!(cases, "D {} {}", m.name(), hex(&payload)).unwrap();
                payloads.push((m, payload));
            }
        }
        let cases_path = dir.join(format!("{name}.cases"));
        let out_path = dir.join(format!("{name}.cantools"));
        std::fs::write(&cases_path, &cases).unwrap();
        let _ = std::fs::remove_file(&out_path);
        if python::reference(
            "dbc_layout.py",
            [&path, &cases_path, &out_path],
            "cantools==45.1.0",
        )
        .is_none()
        {
            return;
        }
        let out = std::fs::read_to_string(&out_path).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let ours = layout(&dbc);
        assert_eq!(lines.len(), ours.len() + payloads.len(), "{name}: {out}");
        for (a, b) in ours.iter().zip(&lines) {
            assert!(same_layout_line(a, b), "{name}: ours `{a}`, cantools `{b}`");
        }
        for ((m, payload), line) in payloads.iter().zip(&lines[ours.len()..]) {
            let case = format!("{name}: decode {} {}", m.name(), hex(payload));
            let mut mine = vec![0.0; m.signals().len()];
            m.decode(payload, &mut mine).unwrap();
            let theirs: Vec<(&str, f64)> = line
                .split_whitespace()
                .skip(1)
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("k=v");
                    (k, v.parse().expect("number"))
                })
                .collect();
            let active: Vec<&str> = m
                .signals()
                .iter()
                .enumerate()
                .filter(|(i, _)| m.is_active(*i, payload))
                .map(|(_, s)| s.name())
                .collect();
            let names: Vec<&str> = theirs.iter().map(|(k, _)| *k).collect();
            assert_eq!(active, names, "{case}: signals in the payload");
            for (k, v) in theirs {
                let i = m.signal_index(k).unwrap();
                assert!(
                    (mine[i] - v).abs() <= 1e-9 * v.abs().max(1.0),
                    "{case}: {k} = {} here, {v} in cantools",
                    mine[i]
                );
            }
        }
        // Encoding: byte for byte as cantools (`encode_message(..., strict=True)`), or both
        // refuse; J1939 groups that are not one frame are refused by our frame encoder.
        let mut cases = String::new();
        let mut encoded = Vec::new();
        for m in dbc.messages() {
            let mut data = [0u8; MAX_FD_LEN];
            if !m.fits_one_frame() {
                assert!(matches!(
                    m.encode_into_fd([], &mut data),
                    Err(SignalError::NotOneFrame { .. })
                ));
                continue;
            }
            if m.is_multiplexed() {
                continue;
            }
            for _ in 0..40 {
                let values: Vec<f64> = m.signals().iter().map(|s| value(s, &mut rng)).collect();
                let ours = m
                    .encode_into_fd(values.iter().copied().enumerate(), &mut data)
                    .ok()
                    .map(|len| hex(&data[..len]));
                write!(cases, "E {}", m.name()).unwrap();
                for (s, v) in m.signals().iter().zip(&values) {
                    write!(cases, " {}={v:?}", s.name()).unwrap();
                }
                cases.push('\n');
                encoded.push((m.name(), ours));
            }
        }
        let cases_path = dir.join(format!("{name}.encode"));
        let out_path = dir.join(format!("{name}.encoded"));
        std::fs::write(&cases_path, &cases).unwrap();
        let _ = std::fs::remove_file(&out_path);
        if python::reference(
            "dbc_cantools.py",
            [&path, &cases_path, &out_path],
            "cantools==45.1.0",
        )
        .is_none()
        {
            return;
        }
        let out = std::fs::read_to_string(&out_path).unwrap();
        let mut agreed = 0;
        for ((msg, ours), line) in encoded.iter().zip(out.lines()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match (ours, fields[0]) {
                (Some(ours), "OK") => {
                    assert_eq!(ours, fields[1], "{name}: {msg}");
                    agreed += 1;
                }
                (None, "ERR") => {}
                _ => panic!("{name}: {msg}: ours {ours:?}, cantools {line}"),
            }
        }
        assert_eq!(out.lines().count(), encoded.len());
        assert!(
            agreed >= encoded.len() / 3,
            "{name}: {agreed} of {}",
            encoded.len()
        );
    }
}

/// The Windows-1252 case: `°` is the byte B0 in the file and `°C` in the unit, as cantools
/// shows it; the same text saved as UTF-8 reads the same.
#[test]
fn windows_1252_and_utf8_files_read_alike() {
    let bytes = std::fs::read(field_case("robot_cp1252.dbc")).unwrap();
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the case is not UTF-8"
    );
    let dbc = Dbc::from_bytes(&bytes, "robot_cp1252.dbc").unwrap();
    let temp = dbc
        .message_by_name("ArmStatus")
        .unwrap()
        .signal("MotorTemp");
    assert_eq!(temp.unwrap().unit(), "°C");
    let utf8 = reflex_runtime::can::dbc::decode_text(&bytes).into_owned();
    assert_eq!(Dbc::from_bytes(utf8.as_bytes(), "utf8.dbc").unwrap(), dbc);
}
