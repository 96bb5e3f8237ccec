//! Runs the Python package's tests (pytest, `python/tests/test_*.py`) against the
//! extension module this build made, so `cargo test --workspace` runs them with the Rust
//! ones. Needs a Python with PyTorch and pytest: `$BLINDFOLD_PYTHON`, else the first of
//! `python3` and `/usr/bin/python3` that imports both (`scripts/test` installs Debian's
//! `python3-torch` and `python3-pytest`). Without one it fails, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    let candidates: Vec<String> = std::env::var("BLINDFOLD_PYTHON")
        .into_iter()
        .chain(["python3".to_owned(), "/usr/bin/python3".to_owned()])
        .collect();
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", "import torch, numpy, pytest"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return c.clone();
        }
    }
    panic!(
        "no Python with torch, numpy and pytest among {candidates:?}: \
         `apt-get install python3-torch python3-pytest`, or set BLINDFOLD_PYTHON"
    );
}

/// The build's output folder (`target/debug`), from this test's own path
/// (`target/debug/deps/pytest-…`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// The extension module this build made. Cargo leaves it in `target/debug` after a
/// `cargo build`, and only in `target/debug/deps` when it built the library for this
/// test: the newest of those wins, so a stale copy from an older build never does.
fn native_module(build: &Path) -> PathBuf {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let top = build.join("libblindfold_native.so");
    let deps = std::fs::read_dir(build.join("deps"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libblindfold_native") && n.ends_with(".so"))
        });
    for p in std::iter::once(top).chain(deps) {
        if let Ok(modified) = std::fs::metadata(&p).and_then(|m| m.modified()) {
            found.push((modified, p));
        }
    }
    found.sort();
    match found.pop() {
        Some((_, p)) => p,
        None => panic!(
            "no libblindfold_native.so in {} or its deps/: cargo builds it with this test \
             (`cargo test -p blindfold-python`)",
            build.display()
        ),
    }
}

#[test]
fn python_package_tests() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = build_dir();
    let native = native_module(&build);
    // The CLI the tests run as the data owner and broker: cargo builds it for
    // `cargo test --workspace`; `-p blindfold-python` alone does not.
    let bin = build.join("blindfold");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (`cargo test --workspace`), which build it",
        bin.display()
    );
    // The package as `pip install` lays it out: the Python sources and the extension
    // module side by side, in a folder of this test's own.
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("blindfold");
    std::fs::create_dir(&pkg).unwrap();
    for e in std::fs::read_dir(manifest.join("blindfold")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "py") {
            std::fs::copy(&p, pkg.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(&native, pkg.join("_native.abi3.so")).unwrap();
    // Run from the temporary folder: `python -m` puts the working folder first on the
    // import path, and the package's source folder (no extension module) must not win.
    let status = Command::new(python())
        .current_dir(tmp.path())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp"])
        .arg(tmp.path().join("pytest"))
        .arg(manifest.join("tests"))
        .env("PYTHONPATH", tmp.path())
        .env("BLINDFOLD_BIN", &bin)
        .env_remove("BLINDFOLD_HOME")
        .status()
        .unwrap();
    assert!(status.success(), "pytest failed: {status}");
}
