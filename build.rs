//! Build script: record the git commit the binary is built from (for the `provenance` of every JSON
//! document), when building from a git checkout with `git` available; otherwise nothing is set.

use std::path::Path;
use std::process::Command;

/// `git <args>` in the package directory, trimmed, if it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| c.len() == 40) else {
        return;
    };
    println!("cargo:rustc-env=NTK_PIPELINE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs (paths that exist only, so
    // that a missing file does not rerun the script on every build).
    let mut watch = Vec::new();
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(Path::new(&git_dir).join("HEAD"));
    }
    if let (Some(common), Some(head_ref)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        watch.push(Path::new(&common).join(&head_ref));
        watch.push(Path::new(&common).join("packed-refs"));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
