//! Records the git commit the binary is built from as `RLLR_GIT_SHA` (for `rllr_build_info` and
//! `GetServerInfo`): the `RLLR_GIT_SHA` build environment wins (container builds have no `.git`),
//! else `git rev-parse HEAD`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RLLR_GIT_SHA");
    let git_dir = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(dir) = &git_dir {
        // A new commit or checkout changes HEAD (or the ref it names).
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    let sha = std::env::var("RLLR_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RLLR_GIT_SHA={sha}");
}
