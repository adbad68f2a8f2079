//! Build-time facts for the `kv_build_info` metric: the commit kvd is built
//! from, as `KV_COMMIT`.
//!
//! `KV_BUILD_COMMIT` in the environment names it (a build from a source
//! tarball); else `git rev-parse --short HEAD` in the source tree; else
//! `unknown`. The script runs again only when HEAD or the branch it names
//! moves, not at every build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `git args` prints in `dir`, trimmed, if it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KV_BUILD_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = std::env::var("KV_BUILD_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        let commit = git(&dir, &["rev-parse", "--short", "HEAD"])?;
        // NOTE: HEAD names the branch; a commit moves the branch's ref (a
        // loose file, or packed-refs). A path that does not exist would
        // make cargo run the script at every build: only existing ones.
        let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watch.extend(git(&dir, &["symbolic-ref", "-q", "HEAD"]));
        for name in watch {
            if let Some(p) = git(&dir, &["rev-parse", "--git-path", &name]) {
                let p = dir.join(p);
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
        }
        Some(commit)
    });
    println!("cargo:rustc-env=KV_COMMIT={}", commit.as_deref().unwrap_or("unknown").trim());
}
