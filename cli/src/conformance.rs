//! The command-line behaviour every rllr binary promises, as one check each binary's tests run
//! on its own executable (`CARGO_BIN_EXE_*`): `--help` and `--version` print to stdout and exit
//! 0, a wrong flag prints clap's message once on stderr and exits 2, and a secret set in the
//! environment never shows in `--help`. Behind the `conformance` feature (tests only).

#![allow(clippy::missing_panics_doc)]

use std::path::Path;
use std::process::{Command, Output};

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin);
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    // Developers often keep backtraces on; the output must not change with them.
    c.env("RUST_BACKTRACE", "1");
    c.output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Assert the conventions on `bin`. `secrets` are env variables that hold secrets (e.g.
/// `RLLR_SERVER_API_KEY`), each with the subcommand whose `--help` lists it (`&[]` for the top
/// level); each is set to a marker value that must not appear in that help.
pub fn check_binary(bin: &Path, secrets: &[(&[&str], &str)]) {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    for flag in ["--help", "--version"] {
        let out = run(bin, &[flag], &[]);
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} {flag} exit\nstdout: {so}\nstderr: {se}"
        );
        assert!(
            !so.trim().is_empty(),
            "{name} {flag} printed nothing on stdout"
        );
        assert!(se.trim().is_empty(), "{name} {flag} wrote to stderr: {se}");
        assert!(!so.contains("Error"), "{name} {flag}: {so}");
    }
    let version = text(&run(bin, &["--version"], &[]).stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "{name} --version: {version}"
    );

    let out = run(bin, &["--no-such-flag"], &[]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} bad flag exit: {se}");
    assert!(out.stdout.is_empty(), "{name} bad flag wrote stdout");
    assert_eq!(
        se.matches("--no-such-flag").count(),
        1,
        "{name}: clap's message once: {se}"
    );
    assert!(!se.contains("Error: "), "{name}: wrapped error: {se}");
    assert!(!se.contains("stack backtrace"), "{name}: backtrace: {se}");

    const MARKER: &str = "s3cr3t-marker-value";
    for (sub, var) in secrets {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = run(bin, &args, &[(var, MARKER)]);
        let so = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name} {args:?}: {so}");
        let all = so + &text(&out.stderr);
        assert!(!all.contains(MARKER), "{name} {args:?} printed {var}");
    }
}
