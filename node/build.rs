//! Records the commit the binary is built from, for `repnode --version` and
//! `repnode_build_info`.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=REPNODE_BUILD_COMMIT={commit}");
    // Rebuilt when HEAD moves (a checkout, or a commit moving the branch), not at every
    // build.
    let mut watched = vec![
        "../.git/HEAD".to_string(),
        "../.git/packed-refs".to_string(),
    ];
    if let Ok(head) = std::fs::read_to_string("../.git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!("../.git/{branch}"));
    }
    for path in watched {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
