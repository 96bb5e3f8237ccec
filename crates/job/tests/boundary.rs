//! The trust boundary, enforced by the build: the job binary (what a confidential VM
//! measures) links no key store, no broker server, no database and no benchmark, in any
//! of its feature sets; nor does the PyTorch bridge, which links no Burn either. Read
//! from `cargo tree` over the committed lock file.

use std::collections::BTreeMap;
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

/// Features that must be off in the job: `bench` brings what `blindfold bench gpu`
/// times (a copy kernel, repeated opens of the same ciphertext).
const FORBIDDEN_FEATURES: &[(&str, &str)] =
    &[("blindfold-zone", "bench"), ("blindfold-gpu", "bench")];

/// Every package in `package`'s normal and build graph with `features`, and the features
/// cargo turns on in it.
fn packages(package: &str, features: &str) -> BTreeMap<String, Vec<String>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root).args([
        "tree",
        "--locked",
        "-p",
        package,
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p} {f}",
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
    let mut map = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        // `name vX [(path)] [(proc-macro)] [f1,f2] [(*)]`: after the name and the
        // version, parenthesised marks, then the features if any; `(*)` marks a repeat.
        let mut rest = line
            .trim_end()
            .trim_end_matches("(*)")
            .split_once(' ')
            .and_then(|(_, r)| r.trim_start().split_once(' '))
            .map_or("", |(_, r)| r.trim());
        while rest.starts_with('(') {
            rest = rest.split_once(')').map_or("", |(_, r)| r.trim());
        }
        let feats: Vec<String> = rest
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        map.entry(name.to_owned()).or_insert(feats);
    }
    map
}

#[test]
fn the_job_links_nothing_of_the_owner_or_the_broker() {
    for features in ["", "cuda", "wgpu", "torch", "cuda,wgpu,torch"] {
        let pkgs = packages("blindfold-job", features);
        // The check sees the graph: the job's own crates are there.
        for wanted in ["blindfold-zone", "blindfold-attest", "blindfold-dataset"] {
            assert!(pkgs.contains_key(wanted), "{wanted} missing ({features})");
        }
        // LibTorch's bindings only in a build that asks for them (`--device torch-cpu`).
        assert_eq!(
            pkgs.contains_key("torch-sys"),
            features.contains("torch"),
            "torch-sys ({features:?})"
        );
        if pkgs
            .get("torch-sys")
            .is_some_and(|f| f.iter().any(|x| x == "download-libtorch"))
        {
            // burn-tch turns on tch's default features, its downloader among them, and a
            // dependent cannot turn them off. It fetches an unpinned LibTorch only when
            // LIBTORCH is unset: the workspace's cargo configuration always sets it (to
            // the .libtorch/ that scripts/libtorch fills, pinned by hash).
            let config = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cargo/config.toml"),
            )
            .expect(".cargo/config.toml");
            assert!(
                config.contains("LIBTORCH = { value = \".libtorch\", relative = true }"),
                "{config}"
            );
        }
        for f in FORBIDDEN {
            assert!(
                !pkgs.contains_key(*f),
                "the job binary links {f} (features: {features:?})"
            );
        }
        for (pkg, feature) in FORBIDDEN_FEATURES {
            let on = pkgs
                .get(*pkg)
                .is_some_and(|f| f.iter().any(|x| x == feature));
            assert!(
                !on,
                "the job binary has {pkg}'s {feature:?} feature (features: {features:?})"
            );
        }
    }
}

#[test]
fn the_feature_check_sees_the_owners_benchmarks() {
    // The same reading of the owner's CLI finds what the job must not have: the check
    // above is not passing because it reads nothing.
    let pkgs = packages("blindfold", "blindfold/cuda");
    for (pkg, feature) in FORBIDDEN_FEATURES {
        let feats = pkgs.get(*pkg).unwrap_or_else(|| panic!("{pkg} missing"));
        assert!(
            feats.iter().any(|x| x == feature),
            "{pkg} has no {feature:?} in the CLI: {feats:?}"
        );
    }
    assert!(pkgs.contains_key("blindfold-owner"));
}

#[test]
fn the_pytorch_bridge_links_nothing_of_the_owner_the_broker_or_burn() {
    // The bridge runs in the zone beside the user's PyTorch: the same rule as the job,
    // and no Burn either (PyTorch trains; the bridge only decrypts and seals).
    let pkgs = packages("blindfold-python", "");
    for wanted in ["blindfold-attest", "blindfold-dataset", "pyo3"] {
        assert!(pkgs.contains_key(wanted), "{wanted} missing");
    }
    for f in FORBIDDEN
        .iter()
        .chain(&["blindfold-zone", "blindfold-gpu", "burn", "cubecl"])
    {
        assert!(!pkgs.contains_key(*f), "the PyTorch bridge links {f}");
    }
}

#[test]
fn the_serving_job_links_nothing_of_the_owner_or_the_broker() {
    // The serving image holds the zone (CPU inference), the broker client, the sealed
    // model reader and an HTTPS server: not the broker's server or database, the
    // owner's tools, the passphrase KDF, the CLI, the GPU kernels, LibTorch, or any benchmark.
    let pkgs = packages("blindfold-serve", "");
    for wanted in ["blindfold-zone", "blindfold-attest", "axum", "rcgen"] {
        assert!(pkgs.contains_key(wanted), "{wanted} missing");
    }
    let server_stack = ["axum", "axum-server"];
    for f in FORBIDDEN
        .iter()
        .filter(|f| !server_stack.contains(f))
        .chain(&["blindfold-verify", "blindfold-gpu", "tch", "torch-sys"])
    {
        assert!(!pkgs.contains_key(*f), "the serving job links {f}");
    }
    for (pkg, feature) in FORBIDDEN_FEATURES {
        let on = pkgs
            .get(*pkg)
            .is_some_and(|f| f.iter().any(|x| x == feature));
        assert!(!on, "the serving job has {pkg}'s {feature:?} feature");
    }
}

/// `scripts/libtorch`, which fetches the LibTorch a `torch` build links: `--verify` takes
/// only the pinned libraries (one changed library fails it, and `scripts/build-job`
/// refuses to build against it), and a folder the script did not make is never replaced.
#[test]
fn scripts_libtorch_verifies_hashes_and_replaces_only_its_own_folder() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/libtorch");
    let run = |args: &[&std::ffi::OsStr], libtorch: Option<&std::path::Path>| {
        let mut c = Command::new("bash");
        c.arg(&script).args(args).env_remove("LIBTORCH");
        if let Some(l) = libtorch {
            c.env("LIBTORCH", l);
        }
        c.output().unwrap()
    };
    let tmp = tempfile::tempdir().unwrap();
    // Someone's own folder, not made by the script: left as it is.
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(theirs.join("lib")).unwrap();
    std::fs::write(theirs.join("keep"), b"mine").unwrap();
    let o = run(&[], Some(&theirs));
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_eq!(std::fs::read(theirs.join("keep")).unwrap(), b"mine");
    assert_eq!(
        run(&["--verify".as_ref(), theirs.as_os_str()], None)
            .status
            .code(),
        Some(1)
    );
    // The checkout's .libtorch (scripts/test fetches it before the tests run) verifies;
    // the same files with one library changed do not.
    let real = root.join(".libtorch");
    if !real.join("lib/libtorch_cpu.so").exists() {
        panic!("no .libtorch: run bash scripts/libtorch (scripts/test does)");
    }
    let o = run(&["--verify".as_ref(), real.as_os_str()], None);
    assert!(o.status.success(), "{o:?}");
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(copy.join("lib")).unwrap();
    for f in ["build-version", "include"] {
        std::os::unix::fs::symlink(real.join(f), copy.join(f)).unwrap();
    }
    for l in [
        "libtorch_cpu.so",
        "libc10.so",
        "libgomp.so.1",
        "libcudart.so.12",
    ] {
        std::os::unix::fs::symlink(real.join("lib").join(l), copy.join("lib").join(l)).unwrap();
    }
    std::os::unix::fs::symlink("libtorch_cpu.so", copy.join("lib/libtorch.so")).unwrap();
    let cupti = std::fs::read(real.join("lib/libcupti.so.12")).unwrap();
    let mut changed = cupti.clone();
    *changed.last_mut().unwrap() ^= 1;
    std::fs::write(copy.join("lib/libcupti.so.12"), &changed).unwrap();
    let o = run(&["--verify".as_ref(), copy.as_os_str()], None);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // scripts/build-job's torch build refuses that copy before it compiles anything.
    let target = tmp.path().join("job-target");
    let o = Command::new("bash")
        .arg(root.join("scripts/build-job"))
        .arg(&target)
        .args(["--features", "torch"])
        .env("LIBTORCH", &copy)
        .env("BUILD_JOB_ALLOW_DIRTY", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the pinned LibTorch"),
        "says why: {o:?}"
    );
    assert!(!target.join("release").exists(), "nothing was built");
    std::fs::write(copy.join("lib/libcupti.so.12"), &cupti).unwrap();
    let o = run(&["--verify".as_ref(), copy.as_os_str()], None);
    assert!(
        o.status.success(),
        "the same check passes on the unchanged copy: {o:?}"
    );
}
