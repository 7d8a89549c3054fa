//! `rllr-server`'s command line: help and version on stdout with exit 0, a wrong flag exits 2
//! with clap's message once, and the bearer tokens never show in `--help`.

use std::path::Path;

#[test]
fn the_command_line_follows_the_conventions() {
    rllr_cli::conformance::check_binary(
        Path::new(env!("CARGO_BIN_EXE_rllr-server")),
        &[
            (&[], "RLLR_SERVER_API_KEY"),
            (&[], "RLLR_SERVER_ADMIN_KEY"),
            // The deprecated names are copied into the new ones before parsing.
            (&[], "RLLR_API_KEY"),
            (&[], "RLLR_ADMIN_KEY"),
        ],
    );
}
