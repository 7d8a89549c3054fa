//! The bench binaries' command lines: help and version on stdout with exit 0, a wrong flag exits
//! 2 with clap's message once.

use std::path::Path;

#[test]
fn every_bench_binary_follows_the_conventions() {
    for bin in [
        env!("CARGO_BIN_EXE_rllr-bench"),
        env!("CARGO_BIN_EXE_rllr-serve-bench"),
        env!("CARGO_BIN_EXE_rllr-batch-bench"),
        env!("CARGO_BIN_EXE_rllr-soak"),
    ] {
        rllr_cli::conformance::check_binary(Path::new(bin), &[]);
    }
}
