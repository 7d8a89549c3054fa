//! `rllr-cli`: the command-line conventions every rllr binary follows, written once.
//!
//! - [`env`]: each binary reads its own environment prefix (`RLLR_SERVER_*`, `RLLR_TRAIN_*`,
//!   `RLLR_CLIENT_*`, `RLLR_BENCH_*`) so one variable never means two things in one shell; the old
//!   shared `RLLR_*` names still work for one release, with a deprecation warning.
//! - [`log`]: `--log-format text|json` and the tracing subscriber behind it (ANSI colour only on a
//!   terminal, JSON lines for log collectors).
//! - `alloc` (feature `alloc`): the engine binaries' allocator and the one setting that keeps
//!   freed activation memory for reuse.
//! - `conformance` (feature `conformance`, tests only): the `--help` / `--version` / bad-flag /
//!   no-secret checks each binary's tests run on its executable.

#[cfg(feature = "alloc")]
pub mod alloc;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod env;
pub mod log;

pub use env::{adopt_legacy_env, LegacyEnv};
pub use log::{init_logging, LogFormat};
