//! Finding and loading TensorRT's runtime library at run time (`dlopen`), so that one `reflex`
//! binary runs on boards with and without TensorRT and nothing links against it at build time.
//!
//! Which library: the path in `REFLEX_TENSORRT_LIB` when set; else `libnvinfer.so.10` (the full
//! library JetPack 6 installs in `/usr/lib/aarch64-linux-gnu`) on the loader's search path; else
//! `libnvinfer_lean.so.10`, the lean runtime, which only deserializes engines built
//! version-compatible. Loading resolves `getInferLibVersion` (declared in `NvInferRuntimeBase.h`)
//! and nothing else: `createInferRuntime_INTERNAL` is resolved only when a runtime is created
//! ([`TensorrtLibrary::create_runtime_fn`]), after the CUDA device check (without CUDA, TensorRT's
//! runtime constructor logs "CUDA initialization failure" and returns an unusable object).
#![allow(unsafe_code)]

use std::ffi::{c_void, OsString};
use std::path::PathBuf;

/// The environment variable naming the TensorRT library to load.
pub const LIB_ENV: &str = "REFLEX_TENSORRT_LIB";
/// The full TensorRT 10 runtime (builder included).
pub const FULL: &str = "libnvinfer.so.10";
/// The lean TensorRT 10 runtime (deserializes version-compatible engines only).
pub const LEAN: &str = "libnvinfer_lean.so.10";

/// `void* createInferRuntime_INTERNAL(void* logger, int32_t version)` (`NvInferRuntime.h`):
/// the C entry point behind the inline `nvinfer1::createInferRuntime`; `logger` is an
/// `nvinfer1::ILogger*`, `version` the `NV_TENSORRT_VERSION` the caller was compiled against.
pub type CreateRuntimeFn = unsafe extern "C" fn(*mut c_void, i32) -> *mut c_void;

/// A TensorRT version as `getInferLibVersion` reports it, with the build number when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Build number (`NV_TENSORRT_BUILD`): the library does not report it; trtexec's log does.
    pub build: Option<u32>,
}

impl TrtVersion {
    /// From `getInferLibVersion()`'s integer: `NV_TENSORRT_VERSION_INT(M, m, p)`, which is
    /// `M * 10000 + m * 100 + p` from TensorRT 10 (`NvInferVersion.h`; 101601 = 10.16.1) and
    /// `M * 1000 + m * 100 + p` before (8502 = 8.5.2).
    pub fn from_int(v: i32) -> TrtVersion {
        let v = v.max(0) as u32;
        let (major, rest) = if v >= 10_000 {
            (v / 10_000, v % 10_000)
        } else {
            (v / 1000, v % 1000)
        };
        TrtVersion {
            major,
            minor: rest / 100,
            patch: rest % 100,
            build: None,
        }
    }

    /// `M.m.p`, without the build.
    pub fn short(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::fmt::Display for TrtVersion {
    /// `10.16.1`, or `10.3.0.30` with the build.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.short())?;
        if let Some(b) = self.build {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

/// Why no TensorRT library could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibraryError {
    /// Neither library is on the loader's search path (and `REFLEX_TENSORRT_LIB` is not set).
    #[error(
        "neither {FULL} nor {LEAN} loads ({detail}); install TensorRT (JetPack installs it in \
         /usr/lib/aarch64-linux-gnu) or set {LIB_ENV}=/path/to/libnvinfer.so.10"
    )]
    NotFound { detail: String },
    /// The library named by `REFLEX_TENSORRT_LIB` does not load.
    #[error("{path} (from {LIB_ENV}) does not load: {detail}")]
    Load { path: PathBuf, detail: String },
    /// The library loads but lacks a symbol TensorRT 10 exports.
    #[error("{library} does not export {symbol}: not a TensorRT runtime library ({detail})")]
    Symbol {
        library: String,
        symbol: &'static str,
        detail: String,
    },
}

/// Full library or lean runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryKind {
    Full,
    Lean,
}

/// A loaded TensorRT runtime library and its version.
#[derive(Debug)]
pub struct TensorrtLibrary {
    /// The path or name it was loaded by.
    pub name: String,
    pub kind: LibraryKind,
    pub version: TrtVersion,
    /// `None` for a stand-in ([`TensorrtLibrary::stand_in`]).
    lib: Option<libloading::Library>,
}

impl TensorrtLibrary {
    /// Loads the library `REFLEX_TENSORRT_LIB` names, else the full then the lean library from
    /// the loader's search path, and reads its version.
    pub fn load() -> Result<TensorrtLibrary, LibraryError> {
        if let Some(path) = std::env::var_os(LIB_ENV).filter(|p| !p.is_empty()) {
            return Self::open(path.clone()).map_err(|e| match e {
                LibraryError::NotFound { detail } => LibraryError::Load {
                    path: path.into(),
                    detail,
                },
                other => other,
            });
        }
        match Self::open(FULL.into()) {
            Ok(l) => Ok(l),
            Err(LibraryError::NotFound { detail: full }) => {
                Self::open(LEAN.into()).map_err(|e| match e {
                    LibraryError::NotFound { detail: lean } => LibraryError::NotFound {
                        detail: format!("{full}; {lean}"),
                    },
                    other => other,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Loads one library by path or file name (searched like `dlopen` does) and reads its
    /// version.
    pub fn open(path: OsString) -> Result<TensorrtLibrary, LibraryError> {
        let name = path.to_string_lossy().to_string();
        // SAFETY: loading runs the library's initializers; TensorRT's have no preconditions
        // (NVIDIA documents dlopen of libnvinfer as the supported way to load it lazily).
        let lib =
            unsafe { libloading::Library::new(&path) }.map_err(|e| LibraryError::NotFound {
                // libloading's message is `dlopen failed`; the loader's own reason (which names
                // the file and what is missing) is its source.
                detail: match std::error::Error::source(&e) {
                    Some(why) => format!("{e}: {why}"),
                    None => format!("{name}: {e}"),
                },
            })?;
        // SAFETY: `int32_t getInferLibVersion() noexcept` (NvInferRuntimeBase.h): no arguments,
        // no preconditions, no CUDA; it answers without a GPU.
        let version = unsafe {
            let f = lib
                .get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion\0")
                .map_err(|e| LibraryError::Symbol {
                    library: name.clone(),
                    symbol: "getInferLibVersion",
                    detail: e.to_string(),
                })?;
            f()
        };
        let kind = if name.contains("nvinfer_lean") {
            LibraryKind::Lean
        } else {
            LibraryKind::Full
        };
        Ok(TensorrtLibrary {
            name,
            kind,
            version: TrtVersion::from_int(version),
            lib: Some(lib),
        })
    }

    /// A library that was not loaded, reporting `version`: for tests whose shim is a stand-in
    /// too (`reflex_testkit::fake_tensorrt`). It resolves no symbol.
    pub fn stand_in(name: &str, version: TrtVersion) -> TensorrtLibrary {
        TensorrtLibrary {
            name: name.to_string(),
            kind: LibraryKind::Full,
            version,
            lib: None,
        }
    }

    /// `createInferRuntime_INTERNAL`, resolved now (only once a CUDA device was found).
    pub fn create_runtime_fn(&self) -> Result<CreateRuntimeFn, LibraryError> {
        // SAFETY: the symbol's C signature is `void* (void*, int32_t) noexcept`
        // (NvInferRuntime.h), which `CreateRuntimeFn` spells; the fn pointer is only used while
        // `self` (the loaded library) lives: the session owns its library.
        let Some(lib) = &self.lib else {
            return Err(LibraryError::Symbol {
                library: self.name.clone(),
                symbol: "createInferRuntime_INTERNAL",
                detail: "a stand-in library resolves no symbol".into(),
            });
        };
        unsafe {
            lib.get::<CreateRuntimeFn>(b"createInferRuntime_INTERNAL\0")
                .map(|s| *s)
                .map_err(|e| LibraryError::Symbol {
                    library: self.name.clone(),
                    symbol: "createInferRuntime_INTERNAL",
                    detail: e.to_string(),
                })
        }
    }
}

impl std::fmt::Display for TensorrtLibrary {
    /// `libnvinfer_lean.so.10 (TensorRT 10.16.1, lean runtime)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LibraryKind::Full => "full library",
            LibraryKind::Lean => "lean runtime",
        };
        write!(f, "{} (TensorRT {}, {kind})", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode_both_integer_schemes() {
        assert_eq!(TrtVersion::from_int(101601).to_string(), "10.16.1");
        assert_eq!(TrtVersion::from_int(100300).to_string(), "10.3.0");
        assert_eq!(TrtVersion::from_int(8502).to_string(), "8.5.2");
        let v = TrtVersion {
            build: Some(30),
            ..TrtVersion::from_int(100300)
        };
        assert_eq!(v.to_string(), "10.3.0.30");
        assert_eq!(v.short(), "10.3.0");
    }

    #[test]
    fn a_library_that_is_not_tensorrt_is_refused_by_symbol() {
        // libc loads everywhere and exports no getInferLibVersion.
        let e = TensorrtLibrary::open("libc.so.6".into()).expect_err("not TensorRT");
        assert!(
            matches!(
                &e,
                LibraryError::Symbol {
                    symbol: "getInferLibVersion",
                    ..
                }
            ),
            "{e}"
        );
        let e =
            TensorrtLibrary::open("libnvinfer_absent_for_test.so.10".into()).expect_err("absent");
        assert!(matches!(e, LibraryError::NotFound { .. }), "{e}");
    }
}
