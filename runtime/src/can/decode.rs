//! `reflex can decode`: candump log lines explained by a bundle's codec.
//!
//! Every line is decoded on its own and the log is read to its end, as can-utils' `log2asc`
//! does: data frames are explained by the protocol (joint, value, unit), remote frames are shown
//! as remote requests (`123#R`, never as an empty data frame), and error frames by their classes
//! in can-utils' words (`candump -e`, linux/can/error.h): an error frame on the bus is something
//! to see, not a reason to stop reading.

use crate::can::candump::{
    error_frame_notation, frame_notation, parse_candump_record, CandumpError, LogFrame,
};
use crate::can::codec::{Codec, Explained};
use crate::can::CanFrame;

/// One decoded line: `(seconds.micros) iface FRAME  explanation`, with the frame in candump's
/// notation. Errors are the line's syntax errors only.
pub fn explain_line(codec: &Codec, line: &str) -> Result<String, CandumpError> {
    let (ts, iface, frame) = parse_candump_record(line)?;
    let (notation, what) = match &frame {
        LogFrame::Can(f) => (frame_notation(f), explain_frame(codec, f)),
        LogFrame::Error(e) => (
            error_frame_notation(e),
            format!("error frame: {}", e.describe()),
        ),
    };
    Ok(format!(
        "({}.{:06}) {iface} {notation}  {what}",
        ts / 1_000_000,
        ts % 1_000_000
    ))
}

/// What a data or remote frame is, for people: the protocol's explanation (`command
/// shoulder_pan: shoulder_pan=0.1 rad tick=0`), `remote request (DLC n)`, or `not a <protocol>
/// frame of this bundle`.
pub fn explain_frame(codec: &Codec, f: &CanFrame) -> String {
    if f.is_remote() {
        return format!("remote request (DLC {})", f.dlc());
    }
    match codec.explain(f) {
        Some(e) => explained_text(&e),
        None => format!("not a {} frame of this bundle", codec.protocol()),
    }
}

/// `what: name=value unit ...`, values with at most 6 decimals and no trailing zeros.
pub fn explained_text(e: &Explained) -> String {
    let vals: Vec<String> = e
        .values
        .iter()
        .map(|(n, v, u)| {
            let v = format!("{v:.6}");
            let v = v.trim_end_matches('0').trim_end_matches('.');
            if u.is_empty() {
                format!("{n}={v}")
            } else {
                format!("{n}={v} {u}")
            }
        })
        .collect();
    if vals.is_empty() {
        e.what.clone()
    } else {
        format!("{}: {}", e.what, vals.join(" "))
    }
}
