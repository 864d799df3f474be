//! Logging set-up shared by the `reflex` and `reflex-tools` binaries: their `-q`/`-v` flags to
//! an `env_logger` filter, so both speak alike (timestamps in milliseconds, `RUST_LOG` wins).

/// The `env_logger` filter for the command-line flags: `quiet` (errors only) wins over
/// `verbose` (0 info, 1 debug, 2 or more trace).
pub fn level(quiet: bool, verbose: u8) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    }
}

/// Installs the process's logger at [`level`]`(quiet, verbose)`, unless `RUST_LOG` says
/// otherwise. Call once, first thing in `main`.
pub fn init(quiet: bool, verbose: u8) {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(level(quiet, verbose)),
    )
    .format_timestamp_millis()
    .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_wins_and_each_v_says_more() {
        assert_eq!(level(true, 2), "error");
        assert_eq!(
            [0, 1, 2, 5].map(|v| level(false, v)),
            ["info", "debug", "trace", "trace"]
        );
    }
}
