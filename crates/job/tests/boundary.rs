//! The trust boundary, enforced by the build: the job binary (what a confidential VM
//! measures) links no key store, no broker server, no database and no benchmark, in any
//! of its feature sets. Read from `cargo tree` over the committed lock file.

use std::process::Command;

/// Packages that must never be in the job's normal dependency graph: the owner's tools
/// (key store, seal, export of plaintext to files, benchmarks), the broker (its server,
/// SQLite, its admin API), the server stack, the passphrase KDF, the CLI.
const FORBIDDEN: &[&str] = &[
    "blindfold",
    "blindfold-owner",
    "blindfold-broker",
    "blindfold-testkit",
    "rusqlite",
    "libsqlite3-sys",
    "axum",
    "axum-server",
    "argon2",
];

fn packages(features: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root).args([
        "tree",
        "--offline",
        "--locked",
        "-p",
        "blindfold-job",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    if !features.is_empty() {
        cmd.args(["--features", features]);
    }
    let out = cmd.output().expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_job_links_nothing_of_the_owner_or_the_broker() {
    for features in ["", "cuda", "wgpu"] {
        let pkgs = packages(features);
        // The check sees the graph: the job's own crates are there.
        for wanted in ["blindfold-zone", "blindfold-attest", "blindfold-dataset"] {
            assert!(
                pkgs.iter().any(|p| p == wanted),
                "{wanted} missing ({features})"
            );
        }
        for f in FORBIDDEN {
            assert!(
                !pkgs.iter().any(|p| p == f),
                "the job binary links {f} (features: {features:?})"
            );
        }
    }
}
