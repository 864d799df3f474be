//! numpy `.npy` files: the way tensors travel between reflex and the Python side (inputs and
//! expected outputs of golden model cases, ONNX Runtime references, raw inference from the host
//! tools).
//!
//! Only what those exchanges need: little-endian numeric and bool dtypes in C order, header
//! versions 1.0 to 3.0. Files come from outside, so parsing returns an error for anything else
//! and never panics or allocates more than the file's own size on a lying header.
//!
//! Format: numpy's `numpy.lib.format` (NEP 1). The header dictionary (a Python literal) is parsed
//! and the elements decoded by the `ndarray-npy` crate (`npy::header::Header`,
//! `ReadableElement`); it was picked over `npyz` because its header reader checks the shape
//! (`npyz` multiplies the dimensions unchecked, a panic on a lying header in debug builds) and its
//! `ndarray` is the one tract already brings. What stays here, and why:
//! - the bounds of the header (magic, version, `HEADER_LEN` checked against the file's size):
//!   the library allocates `HEADER_LEN` bytes before it knows the file holds them;
//! - Python 2's `L` suffixes (`(2L, 3L)`) and a header without its closing `\n`: numpy reads both
//!   (`format._filter_header`, `ast.literal_eval`), the library's Python-literal parser does not,
//!   so the header text is cleaned before it is handed over;
//! - the element count checked against the data's size before anything is allocated (the library
//!   sizes its buffer from the header);
//! - `<f2` (half) elements, which the library does not read;
//! - the writer: numpy's header layout (`'shape': (2, 3), }`, room for the first axis to grow to
//!   21 digits, 64-byte alignment) so that our files are byte for byte what `numpy.save` writes;
//!   neither `ndarray-npy` nor `npyz` writes that layout.

use half::f16;
use ndarray_npy::npy::header::{Header, ReadHeaderError};
use ndarray_npy::{ReadDataError, ReadableElement};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the data to 64 bytes (`numpy.lib.format.ARRAY_ALIGN`).
const ALIGN: usize = 64;
/// numpy leaves room in the header for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// Longest header excerpt quoted in an error.
const QUOTE_MAX: usize = 200;

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
#[derive(Debug, thiserror::Error)]
pub enum NpyFormatError {
    #[error("not an .npy file (no \\x93NUMPY magic)")]
    BadMagic,
    #[error("unsupported .npy format version {0}.{1} (1.0, 2.0 and 3.0 are)")]
    Version(u8, u8),
    #[error("file ends inside the {0}")]
    Truncated(&'static str),
    /// The header dictionary does not parse or lacks `descr`, `fortran_order` or `shape`;
    /// `header` is its text (the first 200 bytes).
    #[error("malformed header `{header}`: {source}")]
    Header {
        header: String,
        #[source]
        source: ReadHeaderError,
    },
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
    /// The data has the right size but not valid elements (a bool byte other than 0 or 1).
    #[error("the {descr} data does not decode: {source}")]
    Data {
        descr: String,
        #[source]
        source: ReadDataError,
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
    let header_text = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or(NpyFormatError::Truncated("header"))?;
    let header = read_header(header_text)?;
    if header.layout.is_fortran() {
        return Err(NpyFormatError::FortranOrder);
    }
    let descr = match header.type_descriptor.as_string() {
        Some(d) => d.as_str(),
        // A list is a structured dtype.
        None => return Err(NpyFormatError::Dtype(header.type_descriptor.to_string())),
    };
    let item = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "<f2" => 2,
        "|u1" | "|b1" => 1,
        _ => return Err(NpyFormatError::Dtype(descr.to_string())),
    };
    let shape = header.shape;
    let len = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyFormatError::TooLarge(shape.clone()))?;
    let expected = len
        .checked_mul(item)
        .ok_or_else(|| NpyFormatError::TooLarge(shape.clone()))?;
    let data = &bytes[start + header_len..];
    if data.len() != expected {
        return Err(NpyFormatError::DataLength {
            shape,
            descr: descr.to_string(),
            expected,
            found: data.len(),
        });
    }
    // The library checks the descriptor again and that the data ends with the last element.
    fn elements<T: ReadableElement>(
        data: &[u8],
        descr: &py_literal::Value,
        len: usize,
    ) -> Result<Vec<T>, NpyFormatError> {
        T::read_to_end_exact_vec(data, descr, len).map_err(|source| NpyFormatError::Data {
            descr: descr.to_string(),
            source,
        })
    }
    let td = &header.type_descriptor;
    let data = match descr {
        "<f4" => NpyData::F32(elements(data, td, len)?),
        "<i4" => NpyData::I32(elements(data, td, len)?),
        "<f8" => NpyData::F64(elements(data, td, len)?),
        "<i8" => NpyData::I64(elements(data, td, len)?),
        "|u1" => NpyData::U8(elements(data, td, len)?),
        "|b1" => NpyData::Bool(elements(data, td, len)?),
        // <f2: not in the library.
        _ => NpyData::F16(
            data.chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// Parses the header dictionary (`header`: the bytes between `HEADER_LEN` and the data).
fn read_header(header: &[u8]) -> Result<Header, NpyFormatError> {
    // numpy's `_filter_header`: drop the `L` that Python 2 wrote after integers (outside
    // strings). Bytes, not chars: a UTF-8 sequence never contains an ASCII byte.
    let mut text = Vec::with_capacity(header.len() + 1);
    let mut quote = None;
    for &c in header {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'L' && text.last().is_some_and(u8::is_ascii_digit) => continue,
            None => {}
        }
        text.push(c);
    }
    // numpy ends the header with `\n` and reads it without; the library requires it.
    if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    // Handed to the library as a version 3.0 file (UTF-8 header, u32 length), as we accept
    // UTF-8 in every version.
    let len = u32::try_from(text.len()).map_err(|_| NpyFormatError::Truncated("header"))?;
    let mut file = Vec::with_capacity(MAGIC.len() + 6 + text.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&[3, 0]);
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(&text);
    Header::from_reader(&mut file.as_slice()).map_err(|source| NpyFormatError::Header {
        header: String::from_utf8_lossy(&header[..header.len().min(QUOTE_MAX)])
            .trim_end()
            .to_string(),
        source,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eight(b: &[u8]) -> [u8; 8] {
        let mut a = [0; 8];
        a.copy_from_slice(b);
        a
    }

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
        assert!(matches!(
            parse_npy(&fortran),
            Err(NpyFormatError::FortranOrder)
        ));
        let big_endian = with_header(
            1,
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4],
        );
        assert!(matches!(parse_npy(&big_endian), Err(NpyFormatError::Dtype(ref d)) if d == ">f4"));
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
