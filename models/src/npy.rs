//! numpy `.npy` files: the way tensors travel between reflex and the Python side (inputs and
//! expected outputs of golden model cases, ONNX Runtime references, raw inference from the host
//! tools).
//!
//! Only what those exchanges need: little-endian numeric and bool dtypes in C order, header
//! versions 1.0 to 3.0. Files come from outside, so parsing returns an error for anything else
//! and never panics or allocates more than the file's own size on a lying header.

use half::f16;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the data to 64 bytes (`numpy.lib.format.ARRAY_ALIGN`).
const ALIGN: usize = 64;
/// numpy leaves room in the header for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The elements of an array, by dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl NpyData {
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::F16(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// numpy's `dtype.str`.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::F16(_) => "<f2",
            NpyData::I64(_) => "<i8",
            NpyData::I32(_) => "<i4",
            NpyData::U8(_) => "|u1",
            NpyData::Bool(_) => "|b1",
        }
    }

    /// The values as f32 (rounded for f64 and 64/32-bit integers beyond 2^24; bools as 0/1).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        }
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            NpyData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            NpyData::U8(v) => v.clone(),
            NpyData::Bool(v) => v.iter().map(|&x| u8::from(x)).collect(),
        }
    }
}

/// An n-dimensional array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        NpyArray {
            shape: shape.to_vec(),
            data: NpyData::F32(data),
        }
    }
}

/// What is wrong with the bytes of an `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyFormatError {
    #[error("not an .npy file (no \\x93NUMPY magic)")]
    BadMagic,
    #[error("unsupported .npy format version {0}.{1} (1.0, 2.0 and 3.0 are)")]
    Version(u8, u8),
    #[error("file ends inside the {0}")]
    Truncated(&'static str),
    #[error("malformed header `{header}`: {reason}")]
    Header { header: String, reason: String },
    #[error("array is in Fortran order; save it with numpy.ascontiguousarray first")]
    FortranOrder,
    #[error("unsupported dtype `{0}` (supported: <f4 <f8 <f2 <i8 <i4 |u1 |b1)")]
    Dtype(String),
    #[error("shape {0:?} has more elements than memory can hold")]
    TooLarge(Vec<usize>),
    #[error("{found} data bytes where shape {shape:?} of {descr} needs {expected}")]
    DataLength {
        shape: Vec<usize>,
        descr: String,
        expected: usize,
        found: usize,
    },
}

/// Reading or writing an `.npy` file failed.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: NpyFormatError,
    },
}

/// Reads an `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes).map_err(|source| NpyError::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `array` as an `.npy` file, byte for byte as `numpy.save` would.
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<(), NpyError> {
    let format_err = |source| NpyError::Format {
        path: path.to_path_buf(),
        source,
    };
    let bytes = encode_npy(array).map_err(format_err)?;
    std::fs::write(path, bytes).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses the bytes of an `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, NpyFormatError> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(NpyFormatError::BadMagic);
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_size, header_len) = match (major, minor) {
        (1, 0) => {
            let b = bytes
                .get(8..10)
                .ok_or(NpyFormatError::Truncated("header length"))?;
            (2, usize::from(u16::from_le_bytes([b[0], b[1]])))
        }
        (2, 0) | (3, 0) => {
            let b = bytes
                .get(8..12)
                .ok_or(NpyFormatError::Truncated("header length"))?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (
                4,
                usize::try_from(n).map_err(|_| NpyFormatError::Truncated("header"))?,
            )
        }
        _ => return Err(NpyFormatError::Version(major, minor)),
    };
    let start: usize = 8 + len_size;
    let header = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or(NpyFormatError::Truncated("header"))?;
    let header = std::str::from_utf8(header).map_err(|_| NpyFormatError::Header {
        header: String::from_utf8_lossy(header).into_owned(),
        reason: "not UTF-8".into(),
    })?;
    let (descr, fortran, shape) = parse_header(header)?;
    if fortran {
        return Err(NpyFormatError::FortranOrder);
    }
    let item = match descr.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "<f2" => 2,
        "|u1" | "|b1" => 1,
        _ => return Err(NpyFormatError::Dtype(descr)),
    };
    let expected = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(item))
        .ok_or_else(|| NpyFormatError::TooLarge(shape.clone()))?;
    let data = &bytes[start + header_len..];
    if data.len() != expected {
        return Err(NpyFormatError::DataLength {
            shape,
            descr,
            expected,
            found: data.len(),
        });
    }
    let data = match descr.as_str() {
        "<f4" => NpyData::F32(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "<i4" => NpyData::I32(
            data.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "<f8" => NpyData::F64(
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes(eight(b)))
                .collect(),
        ),
        "<i8" => NpyData::I64(
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(eight(b)))
                .collect(),
        ),
        "<f2" => NpyData::F16(
            data.chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        "|u1" => NpyData::U8(data.to_vec()),
        _ => NpyData::Bool(data.iter().map(|&b| b != 0).collect()),
    };
    Ok(NpyArray { shape, data })
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut a = [0; 8];
    a.copy_from_slice(b);
    a
}

/// The bytes of `array` as an `.npy` file, identical to what `numpy.save` writes.
pub fn encode_npy(array: &NpyArray) -> Result<Vec<u8>, NpyFormatError> {
    let descr = array.data.descr();
    let expected = array
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyFormatError::TooLarge(array.shape.clone()))?;
    if expected != array.data.len() {
        return Err(NpyFormatError::DataLength {
            shape: array.shape.clone(),
            descr: descr.into(),
            expected,
            found: array.data.len(),
        });
    }
    let dims: Vec<String> = array.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    if let Some(first) = dims.first() {
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.len())));
    }
    // As numpy: pad with spaces then `\n` to the alignment (a whole ALIGN when already aligned),
    // version 1.0 unless the header length overflows its u16.
    let padded = |len_size: usize| {
        let unpadded = MAGIC.len() + 2 + len_size + header.len() + 1;
        header.len() + ALIGN - unpadded % ALIGN + 1
    };
    let (version, len_size) = if padded(2) <= usize::from(u16::MAX) {
        (1, 2)
    } else {
        (2, 4)
    };
    let spaces = padded(len_size) - header.len() - 1;
    header.push_str(&" ".repeat(spaces));
    header.push('\n');
    let mut out =
        Vec::with_capacity(MAGIC.len() + 2 + len_size + header.len() + array.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&array.data.to_le_bytes());
    Ok(out)
}

/// Parses numpy's header, a Python dict literal with keys `descr`, `fortran_order` and `shape`.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), NpyFormatError> {
    let err = |reason: &str| NpyFormatError::Header {
        header: header.trim_end().chars().take(200).collect(),
        reason: reason.to_string(),
    };
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    if !p.eat(b'{') {
        return Err(err("expected `{`"));
    }
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| err("expected a quoted key"))?;
        if !p.eat(b':') {
            return Err(err("expected `:` after a key"));
        }
        match key.as_str() {
            "descr" => {
                descr = Some(p.string().ok_or_else(|| {
                    err("descr is not a string (structured dtypes are not supported)")
                })?)
            }
            "fortran_order" => {
                fortran = Some(
                    p.boolean()
                        .ok_or_else(|| err("fortran_order is not True or False"))?,
                )
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| err("shape is not a tuple of integers"))?,
                )
            }
            _ => return Err(err(&format!("unexpected key `{key}`"))),
        }
        if !p.eat(b',') {
            if !p.eat(b'}') {
                return Err(err("expected `,` or `}`"));
            }
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(err("text after the closing `}`"));
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err(err("needs descr, fortran_order and shape")),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A Python string literal in single or double quotes, without escapes.
    fn string(&mut self) -> Option<String> {
        self.skip_ws();
        let quote = *self.s.get(self.i).filter(|&&q| q == b'\'' || q == b'"')?;
        let rest = self.s.get(self.i + 1..)?;
        let len = rest.iter().position(|&c| c == quote)?;
        let text = std::str::from_utf8(&rest[..len]).ok()?;
        self.i += len + 2;
        Some(text.to_string())
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_ws();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s.get(self.i..)?.starts_with(word) {
                self.i += word.len();
                return Some(value);
            }
        }
        None
    }

    /// `()`, `(3,)`, `(2, 3)`, with an optional trailing comma and Python 2's `L` suffixes.
    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = vec![];
        loop {
            if self.eat(b')') {
                return Some(dims);
            }
            self.skip_ws();
            let digits = self
                .s
                .get(self.i..)?
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 {
                return None;
            }
            let text = std::str::from_utf8(&self.s[self.i..self.i + digits]).ok()?;
            dims.push(text.parse().ok()?);
            self.i += digits;
            self.eat(b'L');
            if !self.eat(b',') {
                return self.eat(b')').then_some(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `np.save(f, np.array([[1, 2, 3], [4, 5, 6]], dtype='<f4'))` with numpy 2.4.
    fn golden_f32() -> Vec<u8> {
        let mut v = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        v.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
        v.extend_from_slice(&[b' '; 58]);
        v.push(b'\n');
        let data = "0000803f0000004000004040000080400000a0400000c040";
        v.extend(
            (0..data.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&data[i..i + 2], 16).ok()),
        );
        v
    }

    #[test]
    fn reads_and_writes_numpy_golden_bytes() {
        let golden = golden_f32();
        assert_eq!(golden.len(), 152);
        let a = parse_npy(&golden).expect("golden parses");
        assert_eq!(a, NpyArray::f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]));
        assert_eq!(encode_npy(&a).expect("encodes"), golden);
    }

    #[test]
    fn header_variants() {
        let with_header = |major: u8, h: &str, data: &[u8]| {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&[major, 0]);
            if major == 1 {
                v.extend_from_slice(&(h.len() as u16).to_le_bytes());
            } else {
                v.extend_from_slice(&(h.len() as u32).to_le_bytes());
            }
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(data);
            v
        };
        let scalar = with_header(
            3,
            "{\"descr\": \"<f8\", \"shape\": (), \"fortran_order\": False}\n",
            &2.5f64.to_le_bytes(),
        );
        let a = parse_npy(&scalar).expect("v3 scalar");
        assert_eq!((a.shape.clone(), a.data.to_f32()), (vec![], vec![2.5]));
        let py2 = with_header(
            2,
            "{'descr': '|b1', 'fortran_order': False, 'shape': (2L, 1L), }",
            &[1, 0],
        );
        assert_eq!(
            parse_npy(&py2).expect("py2 longs").data,
            NpyData::Bool(vec![true, false])
        );
        let fortran = with_header(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0; 4],
        );
        assert_eq!(parse_npy(&fortran), Err(NpyFormatError::FortranOrder));
        let big_endian = with_header(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        assert_eq!(
            parse_npy(&big_endian),
            Err(NpyFormatError::Dtype(">f4".into()))
        );
        let short = with_header(
            1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
            &[0; 8],
        );
        assert!(matches!(
            parse_npy(&short),
            Err(NpyFormatError::DataLength {
                expected: 12,
                found: 8,
                ..
            })
        ));
        let huge = with_header(
            1,
            "{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
            &[],
        );
        assert!(matches!(parse_npy(&huge), Err(NpyFormatError::TooLarge(_))));
    }

    #[test]
    fn write_rejects_inconsistent_shape() {
        let a = NpyArray::f32(&[2, 2], vec![0.0; 3]);
        assert!(matches!(
            encode_npy(&a),
            Err(NpyFormatError::DataLength { .. })
        ));
    }

    fn any_array() -> impl Strategy<Value = NpyArray> {
        let shape = prop::collection::vec(0usize..4, 0..4);
        (shape, 0..7u8).prop_flat_map(|(shape, kind)| {
            let n: usize = shape.iter().product();
            let bytes = prop::collection::vec(any::<u8>(), n * 8);
            (Just(shape), Just(kind), bytes).prop_map(|(shape, kind, b)| {
                let data = match kind {
                    0 => NpyData::F32(
                        b.chunks_exact(8)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    1 => NpyData::F64(
                        b.chunks_exact(8)
                            .map(|c| f64::from_le_bytes(eight(c)))
                            .collect(),
                    ),
                    2 => NpyData::F16(
                        b.chunks_exact(8)
                            .map(|c| f16::from_le_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                    3 => NpyData::I64(
                        b.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(eight(c)))
                            .collect(),
                    ),
                    4 => NpyData::I32(
                        b.chunks_exact(8)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                    5 => NpyData::U8(b.chunks_exact(8).map(|c| c[0]).collect()),
                    _ => NpyData::Bool(b.chunks_exact(8).map(|c| c[0] & 1 == 1).collect()),
                };
                NpyArray { shape, data }
            })
        })
    }

    /// Bit-level equality, so NaN payloads compare equal.
    fn same_bits(a: &NpyArray, b: &NpyArray) -> bool {
        a.shape == b.shape
            && a.data.descr() == b.data.descr()
            && a.data.to_le_bytes() == b.data.to_le_bytes()
    }

    proptest! {
        #[test]
        fn round_trips(a in any_array()) {
            let bytes = encode_npy(&a).expect("consistent array encodes");
            let b = parse_npy(&bytes).expect("own output parses");
            prop_assert!(same_bits(&a, &b));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_npy(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse_npy(&with_magic);
        }

        #[test]
        fn random_headers_never_panic(
            major in 1u8..4,
            header in "[{}()':, 0-9a-zL<>|_TrueFals\"\n]{0,120}",
            data in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&[major, 0]);
            if major == 1 {
                v.extend_from_slice(&(header.len() as u16).to_le_bytes());
            } else {
                v.extend_from_slice(&(header.len() as u32).to_le_bytes());
            }
            v.extend_from_slice(header.as_bytes());
            v.extend_from_slice(&data);
            let _ = parse_npy(&v);
        }

        #[test]
        fn mutated_files_never_panic(
            a in any_array(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = encode_npy(&a).expect("consistent array encodes");
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let _ = parse_npy(&bytes);
        }
    }
}
