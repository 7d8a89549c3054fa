//! Environment-prefix migration: before clap parses, copy each deprecated `RLLR_X` into the
//! binary's own `RLLR_<BIN>_X` when only the old one is set, and report what was copied so the
//! binary can warn once its logger is up.
//!
//! The mapping comes from the binary's own `clap::Command` (every argument's `env` name), so a
//! flag added later is covered without a list to keep in sync.

use std::ffi::OsString;

/// One deprecated variable that was honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEnv {
    /// The old name that was set, e.g. `RLLR_LISTEN`.
    pub old: String,
    /// The name it now has, e.g. `RLLR_SERVER_LISTEN`.
    pub new: String,
}

impl LegacyEnv {
    /// Log the deprecation.
    pub fn warn(&self) {
        tracing::warn!(
            old = %self.old,
            new = %self.new,
            "{} is deprecated and will stop working in the next release; set {} instead",
            self.old,
            self.new
        );
    }
}

/// Every `env` name of `cmd` and its subcommands that starts with `prefix`.
fn env_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if let Some(name) = arg.get_env().and_then(|n| n.to_str()) {
            if name.starts_with(prefix) && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    for sub in cmd.get_subcommands() {
        env_names(sub, prefix, out);
    }
}

/// The deprecated names to honour: for each env name `<prefix><REST>` of `cmd`, the old name is
/// `<legacy_prefix><REST>`, applied when the old one is set in `lookup` and the new one is not.
pub fn legacy_pairs(
    cmd: &clap::Command,
    prefix: &str,
    legacy_prefix: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Vec<(LegacyEnv, OsString)> {
    let mut names = Vec::new();
    env_names(cmd, prefix, &mut names);
    names
        .into_iter()
        .filter_map(|new| {
            let old = format!("{legacy_prefix}{}", &new[prefix.len()..]);
            if lookup(&new).is_some() {
                return None;
            }
            lookup(&old).map(|v| (LegacyEnv { old, new }, v))
        })
        .collect()
}

/// Copy deprecated `legacy_prefix` variables into `prefix` ones for this process, before parsing.
/// Call it first thing in `main`, before any thread starts (it sets process environment).
pub fn adopt_legacy_env(cmd: &clap::Command, prefix: &str, legacy_prefix: &str) -> Vec<LegacyEnv> {
    legacy_pairs(cmd, prefix, legacy_prefix, |k| std::env::var_os(k))
        .into_iter()
        .map(|(legacy, value)| {
            std::env::set_var(&legacy.new, value);
            legacy
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cmd() -> clap::Command {
        clap::Command::new("t")
            .arg(
                clap::Arg::new("listen")
                    .long("listen")
                    .env("RLLR_SERVER_LISTEN"),
            )
            .arg(clap::Arg::new("key").long("key").env("RLLR_SERVER_API_KEY"))
            .subcommand(
                clap::Command::new("sub")
                    .arg(clap::Arg::new("out").long("out").env("RLLR_SERVER_OUTPUT")),
            )
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn an_old_name_alone_maps_to_the_new_one() {
        let got = legacy_pairs(
            &cmd(),
            "RLLR_SERVER_",
            "RLLR_",
            lookup(&[("RLLR_OUTPUT", "x")]),
        );
        assert_eq!(
            got,
            vec![(
                LegacyEnv {
                    old: "RLLR_OUTPUT".into(),
                    new: "RLLR_SERVER_OUTPUT".into()
                },
                OsString::from("x")
            )]
        );
    }

    #[test]
    fn the_new_name_wins_over_the_old_one() {
        let got = legacy_pairs(
            &cmd(),
            "RLLR_SERVER_",
            "RLLR_",
            lookup(&[("RLLR_LISTEN", "old"), ("RLLR_SERVER_LISTEN", "new")]),
        );
        assert!(got.is_empty(), "{got:?}");
    }
}
