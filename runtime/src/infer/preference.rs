//! The measured CPU-backend preference: which CPU backend ran a bundle's model faster on this
//! board, recorded by `reflex bench --model-only --backend all --record` and read by `auto`
//! ([`crate::infer::select::decide`]).
//!
//! The record is a small JSON file next to the bundle's manifest, [`FILE`]
//! (schema `reflex-backend-preference/1`): one entry per board and model, keyed by
//! - the board's identity ([`board_key`]: CPU model, core count and device-tree model, from
//!   `reflex_board::BoardIdentity`), so a bundle copied to another board is measured again;
//! - the sha256 of the model file the CPU backends run (the manifest's, which `Bundle::load` has
//!   checked against the file), so a retrained model is measured again;
//! - the thread count it was measured with.
//!
//! Each entry keeps every backend's median (ms) and the winner (the smallest median). A record
//! whose backend is not available any more is simply passed over by `auto` with its reason.

use reflex_models::manifest::{BackendKind, ModelRole};
use reflex_models::Bundle;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The CPU backends, among which `auto` prefers the one measured faster here.
pub const CPU_BACKENDS: [BackendKind; 2] = [BackendKind::Onnxruntime, BackendKind::Tract];

/// The record's file name, in the bundle directory.
pub const FILE: &str = reflex_models::bundle::BACKEND_PREFERENCE_FILE;
/// The record's schema tag.
pub const SCHEMA: &str = "reflex-backend-preference/1";

/// One measurement: a board, a model, a thread count, each CPU backend's median.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// [`board_key`] of the board measured on.
    pub board: String,
    /// Lower-case hex sha256 of the model file measured.
    pub model_sha256: String,
    pub threads: usize,
    /// Median network time per backend measured (milliseconds), in the order measured.
    pub medians_ms: Vec<(BackendKind, f64)>,
    /// The backend with the smallest median.
    pub winner: BackendKind,
    /// Seconds since the Unix epoch when measured.
    pub measured_unix_s: u64,
}

/// The file: its schema tag and entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub schema: String,
    pub entries: Vec<Entry>,
}

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PreferenceError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a backend preference record ({source}); delete it and run `reflex bench --model-only --backend all --record` again", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: schema `{found}`, expected `{SCHEMA}`; delete it and measure again", path.display())]
    Schema { path: PathBuf, found: String },
    /// No median was given.
    #[error("no backend was measured")]
    Empty,
}

/// This board's key: `CPU model xN cores [device-tree model]`.
pub fn board_key(board: &reflex_board::BoardIdentity) -> String {
    let mut key = format!("{} x{}", board.cpu_model, board.cores);
    if let Some(m) = &board.board_model {
        key.push_str(&format!(" [{m}]"));
    }
    key
}

/// The sha256 of the model file the CPU backends run for `bundle` (tract's policy file, which
/// ONNX Runtime runs too unless the manifest lists one for it), or `None` if neither is listed.
pub fn model_sha256(bundle: &Bundle) -> Option<&str> {
    let m = &bundle.manifest;
    m.model_for(ModelRole::Policy, BackendKind::Tract)
        .or_else(|| m.model_for(ModelRole::Policy, BackendKind::Onnxruntime))
        .map(|f| f.sha256.as_str())
}

/// The record's path for a bundle directory.
pub fn path(bundle_dir: &Path) -> PathBuf {
    bundle_dir.join(FILE)
}

/// Reads the record (`Ok(None)` when there is none).
pub fn read(bundle_dir: &Path) -> Result<Option<Record>, PreferenceError> {
    let path = path(bundle_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PreferenceError::Io { path, source }),
    };
    let record: Record = serde_json::from_str(&text).map_err(|source| PreferenceError::Parse {
        path: path.clone(),
        source,
    })?;
    if record.schema != SCHEMA {
        return Err(PreferenceError::Schema {
            path,
            found: record.schema,
        });
    }
    Ok(Some(record))
}

/// The entry for this board, model and thread count, if any.
pub fn lookup<'r>(
    record: &'r Record,
    board: &str,
    sha256: &str,
    threads: usize,
) -> Option<&'r Entry> {
    record.entries.iter().find(|e| {
        e.board == board && e.model_sha256.eq_ignore_ascii_case(sha256) && e.threads == threads
    })
}

/// The measured winner among the CPU backends for `bundle` on this board with `threads`, and its
/// median; `None` without a record (a record that does not read is logged and ignored: the
/// default order applies).
pub fn measured_winner(bundle: &Bundle, threads: usize) -> Option<(BackendKind, f64)> {
    let sha = model_sha256(bundle)?;
    let record = match read(&bundle.dir) {
        Ok(r) => r?,
        Err(e) => {
            log::warn!("{e}; using the default backend order");
            return None;
        }
    };
    let board = board_key(&reflex_board::BoardIdentity::detect());
    let e = lookup(&record, &board, sha, threads)?;
    let median = e.medians_ms.iter().find(|(b, _)| *b == e.winner)?.1;
    Some((e.winner, median))
}

/// Builds an entry from measured medians (the smallest wins; only CPU backends take part).
pub fn entry(
    board: String,
    model_sha256: String,
    threads: usize,
    medians_ms: Vec<(BackendKind, f64)>,
) -> Result<Entry, PreferenceError> {
    let winner = medians_ms
        .iter()
        .filter(|(b, m)| CPU_BACKENDS.contains(b) && m.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(b, _)| *b)
        .ok_or(PreferenceError::Empty)?;
    Ok(Entry {
        board,
        model_sha256,
        threads,
        medians_ms,
        winner,
        measured_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// Adds `entry` to the bundle's record, replacing one with the same key; writes the file
/// through a temporary file and a rename, so a failed write leaves the old record.
pub fn record(bundle_dir: &Path, entry: Entry) -> Result<PathBuf, PreferenceError> {
    let mut rec = read(bundle_dir)?.unwrap_or(Record {
        schema: SCHEMA.into(),
        entries: vec![],
    });
    rec.entries.retain(|e| {
        !(e.board == entry.board
            && e.model_sha256 == entry.model_sha256
            && e.threads == entry.threads)
    });
    rec.entries.push(entry);
    let path = path(bundle_dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(&rec).map_err(|source| PreferenceError::Parse {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text + "\n")
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| PreferenceError::Io {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_median_wins_and_the_record_round_trips_keyed_by_board_model_threads() {
        let dir = std::env::temp_dir().join(format!("reflex-pref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let _ = std::fs::remove_file(path(&dir));
        assert!(read(&dir).expect("none").is_none());
        let sha = "ab".repeat(32);
        let e = entry(
            "cpu x2".into(),
            sha.clone(),
            2,
            vec![(BackendKind::Tract, 56.6), (BackendKind::Onnxruntime, 23.6)],
        )
        .expect("entry");
        assert_eq!(e.winner, BackendKind::Onnxruntime);
        record(&dir, e.clone()).expect("write");
        // Same key replaces; another thread count adds.
        let e2 = entry(
            "cpu x2".into(),
            sha.clone(),
            2,
            vec![(BackendKind::Tract, 1.0), (BackendKind::Onnxruntime, 2.0)],
        )
        .expect("entry");
        record(&dir, e2.clone()).expect("write");
        let e3 = entry(
            "cpu x2".into(),
            sha.clone(),
            1,
            vec![(BackendKind::Onnxruntime, 3.0)],
        )
        .expect("entry");
        record(&dir, e3).expect("write");
        let r = read(&dir).expect("read").expect("some");
        assert_eq!(r.entries.len(), 2);
        assert_eq!(lookup(&r, "cpu x2", &sha, 2), Some(&e2));
        assert_eq!(
            lookup(&r, "cpu x2", &sha, 1).map(|e| e.winner),
            Some(BackendKind::Onnxruntime)
        );
        assert!(lookup(&r, "other x2", &sha, 2).is_none());
        assert!(lookup(&r, "cpu x2", &"cd".repeat(32), 2).is_none());
        assert!(matches!(
            entry("b".into(), sha, 2, vec![]),
            Err(PreferenceError::Empty)
        ));
        std::fs::write(path(&dir), "{\"schema\":\"other/9\",\"entries\":[]}").expect("write");
        let e = read(&dir).expect_err("schema");
        assert!(e.to_string().contains("schema `other/9`"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
