//! The `blindfold` command line, pinned by snapshot tests (insta): help texts, the
//! owner's flow on a small IDX dataset, and the one-line errors with their exit codes.

use std::fs;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use sha2::Digest;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn cmd(&self, args: &[&str]) -> Output {
        Command::cargo_bin("blindfold")
            .unwrap()
            .current_dir(self.path())
            .env("BLINDFOLD_HOME", self.path().join("home"))
            .env_remove("BLINDFOLD_PASSPHRASE")
            .args(args)
            .output()
            .unwrap()
    }
    /// Runs, expects `code`, returns stdout and stderr with temporary paths and random
    /// values replaced.
    fn run(&self, args: &[&str], code: i32) -> String {
        let o = self.cmd(args);
        let text = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(code), "{args:?}\n{text}");
        text.replace(&self.path().display().to_string(), "[TMP]")
    }
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"\b[0-9a-f]{64}\b", "[HEX64]");
    s.add_filter(r"\b[0-9a-f]{32}\b", "[ID]");
    s.add_filter(r"-[0-9a-f]{16}\.bfs", "-[TAG].bfs");
    s.add_filter(r"\.tmp[A-Za-z0-9]{6}", "[TMPDIR]");
    s.add_filter(r"blindfold \d+\.\d+\.\d+", "blindfold [VERSION]");
    s
}

fn idx_input(root: &Path) {
    let d = root.join("fm");
    fs::create_dir_all(&d).unwrap();
    for (prefix, n) in [("train", 12u32), ("t10k", 5)] {
        let mut img = vec![0, 0, 8, 3];
        for x in [n, 3, 3] {
            img.extend_from_slice(&x.to_be_bytes());
        }
        img.extend((0..n * 9).map(|i| (i % 200) as u8));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&n.to_be_bytes());
        lab.extend((0..n).map(|i| (i % 10) as u8));
        fs::write(d.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        fs::write(d.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }
}

#[test]
fn help_texts() {
    let e = Env::new();
    settings().bind(|| {
        insta::assert_snapshot!("help", e.run(&["--help"], 0));
        insta::assert_snapshot!("seal_help", e.run(&["seal", "--help"], 0));
        insta::assert_snapshot!("keys_init_help", e.run(&["keys", "init", "--help"], 0));
        insta::assert_snapshot!("train_help", e.run(&["train", "--help"], 0));
    });
}

#[test]
fn owner_flow() {
    let e = Env::new();
    idx_input(e.path());
    settings().bind(|| {
        insta::assert_snapshot!("no_keystore", e.run(&["seal", "fm", "--out", "sealed"], 5));
        insta::assert_snapshot!("keys_init", e.run(&["keys", "init"], 0));
        insta::assert_snapshot!("keys_init_again", e.run(&["keys", "init"], 3));
        insta::assert_snapshot!("seal", e.run(&["seal", "fm", "--out", "sealed"], 0));
        insta::assert_snapshot!("seal_again", e.run(&["seal", "fm", "--out", "sealed"], 3));
        insta::assert_snapshot!("inspect", e.run(&["inspect", "sealed"], 0));
        insta::assert_snapshot!("verify", e.run(&["verify", "sealed"], 0));
        insta::assert_snapshot!("open", e.run(&["open", "sealed", "--out", "opened"], 0));
        insta::assert_snapshot!(
            "open_again",
            e.run(&["open", "sealed", "--out", "opened"], 3)
        );
        insta::assert_snapshot!("keys_show", e.run(&["keys", "show"], 0));
    });
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        assert_eq!(
            fs::read(e.path().join("opened").join(f)).unwrap(),
            fs::read(e.path().join("fm").join(f)).unwrap(),
            "{f}"
        );
    }
    // Tamper with a byte in the middle of the train shard.
    let shard = fs::read_dir(e.path().join("sealed/shards"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("train-")
        })
        .unwrap();
    let mut b = fs::read(&shard).unwrap();
    let at = b.len() - 20;
    b[at] ^= 0x10;
    fs::write(&shard, &b).unwrap();
    settings().bind(|| {
        insta::assert_snapshot!("verify_tampered", e.run(&["verify", "sealed"], 4));
        insta::assert_snapshot!(
            "open_tampered",
            e.run(&["open", "sealed", "--out", "opened2"], 4)
        );
    });
    assert!(!e
        .path()
        .join("opened2")
        .join("train-images-idx3-ubyte")
        .exists());
    fs::remove_file(&shard).unwrap();
    settings().bind(|| insta::assert_snapshot!("verify_missing", e.run(&["verify", "sealed"], 4)));
}

#[test]
fn bad_input() {
    let e = Env::new();
    e.run(&["keys", "init"], 0);
    fs::write(e.path().join("notes.txt"), "hello").unwrap();
    fs::write(e.path().join("t.csv"), "a,label\n1,2\nx,3\n").unwrap();
    settings().bind(|| {
        insta::assert_snapshot!(
            "unknown_format",
            e.run(&["seal", "notes.txt", "--out", "s1"], 3)
        );
        insta::assert_snapshot!("bad_csv", e.run(&["seal", "t.csv", "--out", "s2"], 3));
        insta::assert_snapshot!("no_dataset", e.run(&["verify", "."], 3));
        insta::assert_snapshot!("bad_scheme", e.run(&["inspect", "ftp://x/y"], 3));
    });
    // A rejected input writes nothing.
    assert!(!e.path().join("s2").join("manifest.bfm").exists());
    assert!(
        fs::read_dir(e.path().join("s2"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[test]
fn passphrase_protected_keystore() {
    let e = Env::new();
    fs::write(e.path().join("pass"), "correct horse battery staple\n").unwrap();
    e.run(
        &["keys", "init", "--passphrase", "--passphrase-file", "pass"],
        0,
    );
    fs::write(e.path().join("f.bin"), b"secret bytes").unwrap();
    settings().bind(|| {
        insta::assert_snapshot!(
            "locked",
            e.run(&["seal", "f.bin", "--format", "raw", "--out", "s"], 5)
        );
    });
    fs::write(e.path().join("wrong"), "nope").unwrap();
    let wrong = e.run(
        &[
            "seal",
            "f.bin",
            "--format",
            "raw",
            "--out",
            "s",
            "--passphrase-file",
            "wrong",
        ],
        5,
    );
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    e.run(
        &[
            "seal",
            "f.bin",
            "--format",
            "raw",
            "--out",
            "s",
            "--passphrase-file",
            "pass",
        ],
        0,
    );
    e.run(&["open", "s", "--out", "o", "--passphrase-file", "pass"], 0);
    assert_eq!(fs::read(e.path().join("o/f.bin")).unwrap(), b"secret bytes");
}

/// The README's main job, on the real Fashion-MNIST from Debian's package (installed by
/// scripts/test).
#[test]
fn demo_on_fashion_mnist() {
    let data = Path::new("/usr/share/datasets/fashion-mnist");
    assert!(
        data.join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST missing: apt-get install dataset-fashion-mnist (scripts/test does)"
    );
    let e = Env::new();
    let out = e.run(&["demo", "--workdir", "demo"], 0);
    assert!(
        out.contains("4/4 files byte-identical to the originals"),
        "{out}"
    );
    assert!(out.contains("70000 (train 60000, test 10000)"), "{out}");
    assert!(out.contains("one flipped byte refused"), "{out}");
    assert!(
        out.contains("100 test images predicted through the attested TLS key, labels identical to the owner's evaluation"),
        "{out}"
    );
    assert!(
        out.contains("same weights          yes, bit-identical"),
        "{out}"
    );
    assert!(out.contains("test accuracy"), "{out}");
    // A second run replaces its own previous workdir; a foreign folder is refused.
    e.run(&["demo", "--workdir", "demo"], 0);
    fs::create_dir_all(e.path().join("mine")).unwrap();
    fs::write(e.path().join("mine/keep"), "x").unwrap();
    e.run(&["demo", "--workdir", "mine"], 3);
    assert!(e.path().join("mine/keep").exists());
}

/// `broker export-kbs-resource`: the release object for a stock Trustee KBS carries the
/// dataset's real key (it opens the sealed manifest), the manifest's digest and version.
#[test]
fn export_kbs_resource() {
    use base64::Engine;
    let e = Env::new();
    idx_input(e.path());
    e.run(&["keys", "init"], 0);
    let id = e.run(&["seal", "fm", "--out", "sealed"], 0);
    let id = id.lines().nth(2).unwrap().trim().to_owned();
    let o = e.cmd(&["broker", "export-kbs-resource", "sealed"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("KBS resource path: blindfold/dataset/{id}")),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fields: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(fields.len(), 4, "{fields:?}");
    assert_eq!(v["dataset_id"], id.as_str());
    assert_eq!(v["version"], 1);
    let manifest = fs::read(e.path().join("sealed/manifest.bfm")).unwrap();
    assert_eq!(
        v["manifest_sha256"],
        hex::encode(blindfold_format::manifest_digest(&manifest)).as_str()
    );
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(v["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let m =
        blindfold_format::Manifest::open(&blindfold_format::DatasetKey::from_bytes(key), &manifest)
            .expect("the exported key opens the dataset's manifest");
    assert_eq!(m.dataset_id.to_hex(), id);
    let mut wrong = key;
    wrong[0] ^= 1;
    assert!(blindfold_format::Manifest::open(
        &blindfold_format::DatasetKey::from_bytes(wrong),
        &manifest
    )
    .is_err());
    let o = e.cmd(&["broker", "export-kbs-resource", "nowhere"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty());
}

/// The broker commands end to end over TLS: init, serve, register, fetch-key (granted,
/// then denied by the policy), revoke, audit --verify, and a tampered audit log.
/// Starts `blindfold broker serve` on a loopback port the kernel picks (`:0`, so that no
/// other test can take it between a probe and the bind); returns the process and the URL
/// it printed once listening. Its stderr is drained on a thread so that it never blocks.
fn serve_broker(e: &Env, dir: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin("blindfold"))
        .current_dir(e.path())
        .args(["broker", "serve", "--dir", dir, "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("broker listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.to_owned());
                }
            }
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("broker did not start");
    (server, url)
}

#[test]
fn broker_commands_over_tls() {
    let e = Env::new();
    idx_input(e.path());
    e.run(&["keys", "init"], 0);
    let id = e.run(&["seal", "fm", "--out", "sealed"], 0);
    let id = id.lines().nth(2).unwrap().trim().to_owned();
    let out = e.run(&["broker", "init", "--dir", "brk"], 0);
    assert!(out.contains("admin token"), "{out}");
    let (mut server, url) = serve_broker(&e, "brk");
    fs::write(
        e.path().join("policy.toml"),
        "tee = [\"sample\"]\njobs = [\"cnn\"]\n",
    )
    .unwrap();
    let out = e.run(
        &[
            "broker",
            "register",
            "sealed",
            "--policy",
            "policy.toml",
            "--broker",
            &url,
            "--broker-dir",
            "brk",
        ],
        0,
    );
    assert!(
        out.contains(&format!("registered dataset {id} version 1")),
        "{out}"
    );
    let fetch = |job: &str, code: i32| {
        e.run(
            &[
                "broker",
                "fetch-key",
                "--broker",
                &url,
                "--dataset",
                &id,
                "--tee",
                "sample",
                "--job",
                job,
                "--ca-cert",
                "brk/tls-cert.pem",
            ],
            code,
        )
    };
    let out = fetch("cnn", 0);
    assert!(
        out.contains("released: dataset") && !out.to_lowercase().contains("key: \""),
        "{out}"
    );
    // A denial exits 7, as it does from `train`.
    let out = fetch("mlp", 7);
    assert!(out.contains("PolicyDenied") && out.contains("job"), "{out}");

    // A training job through the same broker: the key by attestation, outputs sealed to
    // the owner; its temporary folder is scanned for plaintext records afterwards.
    let tmp = e.path().join("job-tmp");
    fs::create_dir_all(&tmp).unwrap();
    let train = |job: &str, out: &str, code: i32| {
        let o = Command::cargo_bin("blindfold")
            .unwrap()
            .current_dir(e.path())
            .env("TMPDIR", &tmp)
            .env_remove("BLINDFOLD_HOME")
            .args([
                "train",
                "--dataset",
                "sealed",
                "--broker",
                &url,
                "--ca-cert",
                "brk/tls-cert.pem",
                "--tee",
                "sample",
                "--job",
                job,
                "--model",
                "mlp",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--out",
                out,
                "--quiet",
            ])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(code), "{text}");
        text
    };
    let out = train("cnn", "model", 0);
    assert!(out.contains("trained mlp (sealed)"), "{out}");
    assert!(
        !out.contains("epoch 1:"),
        "--quiet withholds per-epoch figures: {out}"
    );
    let out = train("mlp", "model-denied", 7);
    assert!(out.contains("PolicyDenied"), "{out}");
    assert!(!e.path().join("model-denied/model.sealed").exists());
    // The first training record (bytes 0..9 of the images) appears nowhere the job wrote.
    let record: Vec<u8> = (0..9).collect();
    for dir in ["model", "sealed", "job-tmp"] {
        let mut stack = vec![e.path().join(dir)];
        while let Some(d) = stack.pop() {
            for f in fs::read_dir(&d).unwrap().flatten() {
                if f.path().is_dir() {
                    stack.push(f.path());
                } else {
                    let b = fs::read(f.path()).unwrap();
                    assert!(
                        !b.windows(9).any(|w| w == record.as_slice()),
                        "plaintext record in {}",
                        f.path().display()
                    );
                }
            }
        }
    }
    let out = e.run(
        &[
            "model",
            "open",
            "model",
            "--dataset",
            &id,
            "--out",
            "weights.safetensors",
        ],
        0,
    );
    assert!(
        out.contains("mlp (spec sha256 ") && out.contains(") for input [1, 3, 3], 10 classes"),
        "{out}"
    );
    assert!(out.contains("\"weights_sha256\""), "{out}");
    e.run(
        &[
            "model",
            "open",
            "model",
            "--dataset",
            &id,
            "--out",
            "weights.safetensors",
        ],
        3,
    );
    // Which dataset the model must come from is the owner's to say.
    e.run(&["model", "open", "model", "--out", "w.safetensors"], 2);

    // The job's training receipt, checked offline with the broker's public key.
    let jwk = e.cmd(&["broker", "public-key", "--dir", "brk"]);
    assert!(jwk.status.success());
    fs::write(e.path().join("broker.jwk"), &jwk.stdout).unwrap();
    let verify = |extra: &[&str], code: i32| {
        let mut args = vec![
            "receipt",
            "verify",
            "model/receipt.json",
            "--broker-key",
            "broker.jwk",
        ];
        args.extend_from_slice(extra);
        e.run(&args, code)
    };
    // A sample TEE's receipt is genuine and proves nothing: refused unless accepted.
    let out = verify(&[], 4);
    assert!(
        out.contains("predicate.tee.type") && out.contains("proves nothing"),
        "{out}"
    );
    let out = verify(&["--danger-accept-sample", "--outputs", "model"], 0);
    assert!(out.contains("receipt verified"), "{out}");
    assert!(out.contains(&format!("dataset   {id} version 1")), "{out}");
    assert!(out.contains("NO HARDWARE ROOT OF TRUST"), "{out}");
    assert!(out.contains("every subject present"), "{out}");
    let out = verify(
        &["--danger-accept-sample", "--expect-measurement", "00ff"],
        4,
    );
    assert!(out.contains("predicate.tee.measurement"), "{out}");
    // Another job's model put in this one's place is not a subject.
    let sealed_model = fs::read(e.path().join("model/model.sealed")).unwrap();
    fs::write(e.path().join("model/model.sealed"), b"another model").unwrap();
    let out = verify(&["--danger-accept-sample", "--outputs", "model"], 4);
    assert!(out.contains("subject[0].digest.sha256"), "{out}");
    fs::write(e.path().join("model/model.sealed"), sealed_model).unwrap();
    // An edited statement: the dataset version named, a hyperparameter via the signature.
    let receipt = fs::read_to_string(e.path().join("model/receipt.json")).unwrap();
    let env: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement: serde_json::Value =
        serde_json::from_slice(&b64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    for (path, value, field) in [
        (
            "/predicate/dataset/version",
            serde_json::json!(2),
            "predicate.dataset.version",
        ),
        (
            "/predicate/hyperparameters/epochs",
            serde_json::json!(20),
            "signatures[0].sig",
        ),
    ] {
        let mut st = statement.clone();
        *st.pointer_mut(path).unwrap() = value;
        let mut edited = env.clone();
        edited["payload"] = serde_json::json!(b64.encode(serde_json::to_vec(&st).unwrap()));
        fs::write(
            e.path().join("edited.json"),
            serde_json::to_vec(&edited).unwrap(),
        )
        .unwrap();
        let out = e.run(
            &[
                "receipt",
                "verify",
                "edited.json",
                "--broker-key",
                "broker.jwk",
                "--danger-accept-sample",
            ],
            4,
        );
        assert!(out.contains(field), "{field}: {out}");
    }
    let out = e.run(
        &["eval", "--model", "weights.safetensors", "--test", "fm"],
        0,
    );
    assert!(out.contains("mlp on 5 records of fm: accuracy"), "{out}");
    assert!(out.contains("confusion matrix"), "{out}");
    let out = e.run(&["train", "--plaintext", "fm", "--out", "m2", "--quiet"], 3);
    assert!(out.contains("--owner-key"), "{out}");
    e.run(
        &[
            "broker",
            "revoke",
            &id,
            "--broker",
            &url,
            "--broker-dir",
            "brk",
        ],
        0,
    );
    assert!(fetch("cnn", 7).contains("Revoked"));
    let _ = server.kill();
    let _ = server.wait();
    let out = e.run(&["broker", "audit", "--dir", "brk", "--verify"], 0);
    assert!(out.contains("audit chain intact: 12 entries"), "{out}");
    let c = rusqlite::Connection::open(e.path().join("brk/broker.db")).unwrap();
    c.execute(
        "UPDATE audit SET entry = replace(entry, '\"denied\"', '\"granted\"') WHERE seq = 5",
        [],
    )
    .unwrap();
    let out = e.run(&["broker", "audit", "--dir", "brk", "--verify"], 4);
    assert!(out.contains("audit entry 5"), "{out}");
}

/// The three holes an adversarial review reproduced end to end (issue 14), through the
/// CLI as an attacker and a careless owner would meet them. Each of these steps
/// succeeded before its fix:
/// - `seal --update` without registering, then `train`: the job trained on the newer,
///   unregistered manifest;
/// - `broker revoke`, then `broker register` again: the key was released again;
/// - an audit entry edited and every later hash recomputed with plain SHA-256:
///   `broker audit --verify` said "intact".
#[test]
fn adversarial_review_reproductions() {
    let e = Env::new();
    idx_input(e.path());
    e.run(&["keys", "init"], 0);
    let id = e.run(&["seal", "fm", "--out", "sealed"], 0);
    let id = id.lines().nth(2).unwrap().trim().to_owned();
    e.run(&["broker", "init", "--dir", "brk"], 0);
    let (mut server, url) = serve_broker(&e, "brk");
    fs::write(
        e.path().join("policy.toml"),
        "tee = [\"sample\", \"tdx\"]\n",
    )
    .unwrap();
    let register = |code: i32| {
        e.run(
            &[
                "broker",
                "register",
                "sealed",
                "--policy",
                "policy.toml",
                "--broker",
                &url,
                "--broker-dir",
                "brk",
            ],
            code,
        )
    };
    let train = |out: &str, code: i32| {
        e.run(
            &[
                "train",
                "--dataset",
                "sealed",
                "--broker",
                &url,
                "--ca-cert",
                "brk/tls-cert.pem",
                "--tee",
                "sample",
                "--model",
                "mlp",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--out",
                out,
                "--quiet",
                "--json",
            ],
            code,
        )
    };
    let out = register(0);
    assert!(out.contains("no measurements"), "register warns: {out}");

    // 1. A newer manifest the owner did not register is refused by the job.
    e.run(&["seal", "fm", "--out", "sealed", "--update"], 0);
    let out = train("model-v2", 4);
    assert!(
        out.contains("unregistered: manifest version 2 is newer than the recorded version 1"),
        "{out}"
    );
    assert!(!e.path().join("model-v2/model.sealed").exists());
    register(0);
    let job_output = train("model-v2", 0);
    // The weights' digest would confirm a guessed dataset (training is deterministic):
    // it is in the sealed metrics the owner opens, and nowhere in what the job printed.
    let opened = e.run(
        &[
            "model",
            "open",
            "model-v2",
            "--dataset",
            &id,
            "--out",
            "w.safetensors",
        ],
        0,
    );
    assert!(opened.contains("authenticated by its key"), "{opened}");
    let digest = opened
        .split("\"weights_sha256\":\"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .unwrap()
        .to_owned();
    assert!(!job_output.contains(&digest), "{job_output}");
    assert!(!job_output.contains("weights_sha256"), "{job_output}");
    // --quiet withholds the per-epoch figures (data statistics) from --json too.
    assert!(
        job_output.contains("\"epochs\":[]") && !job_output.contains("\"loss\""),
        "{job_output}"
    );

    // 2. Revocation is final: registering again is refused, the key stays withheld.
    e.run(
        &[
            "broker",
            "revoke",
            &id,
            "--broker",
            &url,
            "--broker-dir",
            "brk",
        ],
        0,
    );
    let out = register(7);
    assert!(out.contains("revoked, and revocation is final"), "{out}");
    let out = e.run(
        &[
            "broker",
            "fetch-key",
            "--broker",
            &url,
            "--dataset",
            &id,
            "--tee",
            "sample",
            "--ca-cert",
            "brk/tls-cert.pem",
        ],
        7,
    );
    assert!(out.contains("Revoked"), "{out}");
    let _ = server.kill();
    let _ = server.wait();

    // 3. Entry 2 edited, and every later link and hash recomputed with plain SHA-256,
    // as anyone who can write the database (but not read the broker's keys) can.
    e.run(&["broker", "audit", "--dir", "brk", "--verify"], 0);
    let c = rusqlite::Connection::open(e.path().join("brk/broker.db")).unwrap();
    let rows: Vec<(i64, String)> = c
        .prepare("SELECT seq, entry FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev: Vec<u8> = c
        .query_row("SELECT hash FROM audit WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    for (seq, entry) in rows.into_iter().skip(1) {
        let mut v: serde_json::Value = serde_json::from_str(&entry).unwrap();
        if seq == 2 {
            v["reason"] = "nothing happened".into();
        }
        let text = serde_json::to_string(&v).unwrap();
        let canon = blindfold_protocol::canonical::jcs(&v).unwrap();
        let mut h = sha2::Sha256::new();
        sha2::Digest::update(&mut h, &prev);
        sha2::Digest::update(&mut h, canon.as_bytes());
        let hash = sha2::Digest::finalize(h).to_vec();
        c.execute(
            "UPDATE audit SET entry = ?1, prev = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![text, prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
    let out = e.run(&["broker", "audit", "--dir", "brk", "--verify"], 4);
    assert!(
        out.contains("audit entry 2") && out.contains("plain SHA-256"),
        "{out}"
    );
    assert!(
        out.contains("--- stdout\n--- stderr"),
        "a broken log is not printed as if it were the log: {out}"
    );
}

/// Anyone who can write MODEL_DEST knows the owner's public key. A model planted there
/// (before: accepted by `model open` with its invented metrics) is refused unless a
/// holder of the dataset key sealed it; a baseline's unauthenticated output opens only
/// on request.
#[test]
fn a_planted_model_is_refused() {
    let e = Env::new();
    idx_input(e.path());
    let keys = e.run(&["keys", "init"], 0);
    let public = keys
        .split("identity (X25519, HPKE): ")
        .nth(1)
        .unwrap()
        .get(..64)
        .unwrap()
        .to_owned();
    let public = hex::decode(public).unwrap();
    e.run(&["seal", "fm", "--out", "sealed"], 0);
    let insp: serde_json::Value = serde_json::from_str(
        e.run(&["inspect", "sealed", "--json"], 0)
            .split("--- stdout\n")
            .nth(1)
            .unwrap()
            .split("--- stderr")
            .next()
            .unwrap(),
    )
    .unwrap();
    // Real weights of the model the header names: a planted model is refused for who
    // sealed it, not for what it holds.
    let spec = blindfold_zone::model::ModelSpec {
        spec: blindfold_zone::spec::Spec::builtin("mlp").unwrap(),
        input: [1, 3, 3],
        classes: 10,
    };
    let weights = blindfold_zone::model::to_burnpack(
        &spec
            .init::<blindfold_zone::model::Cpu>(7, &Default::default())
            .unwrap(),
    )
    .unwrap();
    let plant_bytes = |dir: &str,
                       source: Option<blindfold_format::OutputSource>,
                       key: Option<&blindfold_format::DatasetKey>,
                       bytes: &[u8]| {
        let header = blindfold_format::OutputHeader::new(
            "model",
            "burnpack",
            source,
            serde_json::json!({"model": "mlp", "spec": spec.spec.text, "input": [1, 3, 3], "classes": 10, "run": "00"}),
        );
        let sealed =
            blindfold_format::seal_output(&public, &header, key, bytes, "model.sealed").unwrap();
        fs::create_dir_all(e.path().join(dir)).unwrap();
        fs::write(e.path().join(dir).join("model.sealed"), sealed).unwrap();
    };
    let plant = |dir: &str,
                 source: Option<blindfold_format::OutputSource>,
                 key: Option<&blindfold_format::DatasetKey>| {
        plant_bytes(dir, source, key, &weights)
    };
    let id = insp["dataset_id"].as_str().unwrap().to_owned();
    let open = |dir: &str, out: &str, code: i32| {
        e.run(
            &[
                "model",
                "open",
                dir,
                "--dataset",
                &id,
                "--out",
                out,
                "--format",
                "burnpack",
            ],
            code,
        )
    };
    // Sealed to the owner, claiming no source: unauthenticated.
    plant("plain", None, None);
    let out = open("plain", "w1", 4);
    assert!(out.contains("names no dataset"), "{out}");
    assert!(!e.path().join("w1").exists());
    let out = e.run(
        &[
            "model",
            "open",
            "plain",
            "--out",
            "w1",
            "--format",
            "burnpack",
            "--danger-unauthenticated",
        ],
        0,
    );
    assert!(out.contains("WARNING: unauthenticated"), "{out}");
    // Whatever opens, weights that are not the header's model are refused, in either
    // output format, and nothing is written.
    plant_bytes("junk", None, None, b"not a burnpack");
    for format in ["burnpack", "safetensors"] {
        let out = e.run(
            &[
                "model",
                "open",
                "junk",
                "--out",
                "w0",
                "--format",
                format,
                "--danger-unauthenticated",
            ],
            3,
        );
        assert!(out.contains("model weights do not load"), "{out}");
        assert!(!e.path().join("w0").exists());
    }
    // A model sealed before model specs (its header names no spec): Burnpack as
    // sealed, not loaded (its tensors have the old names); safetensors says so.
    let header = blindfold_format::OutputHeader::new(
        "model",
        "burnpack",
        None,
        serde_json::json!({"model": "mlp", "input": [1, 3, 3], "classes": 10, "run": "00"}),
    );
    let sealed =
        blindfold_format::seal_output(&public, &header, None, b"old names", "model.sealed")
            .unwrap();
    fs::create_dir_all(e.path().join("legacy")).unwrap();
    fs::write(e.path().join("legacy/model.sealed"), sealed).unwrap();
    for (format, code) in [("safetensors", 3), ("burnpack", 0)] {
        let out = e.run(
            &[
                "model",
                "open",
                "legacy",
                "--out",
                format,
                "--format",
                format,
                "--danger-unauthenticated",
            ],
            code,
        );
        let want = if code == 0 {
            "sealed before model specs"
        } else {
            "open it with --format burnpack"
        };
        assert!(out.contains(want), "{out}");
    }
    assert_eq!(fs::read(e.path().join("burnpack")).unwrap(), b"old names");
    // Claiming the real dataset and version, but sealed without its key.
    let source = blindfold_format::OutputSource {
        dataset_id: insp["dataset_id"].as_str().unwrap().into(),
        version: 1,
        manifest_sha256: insp["manifest_sha256"].as_str().unwrap().into(),
    };
    plant(
        "forged",
        Some(source),
        Some(&blindfold_format::DatasetKey::from_bytes([3; 32])),
    );
    let out = open("forged", "w2", 4);
    assert!(
        out.contains("not made by a holder of the dataset key"),
        "{out}"
    );
    assert!(!e.path().join("w2").exists());
    // Sealed with the key of another dataset of the same owner, one whose key got out
    // (a sample-TEE policy released it, say), and claiming that dataset: a valid output
    // of *that* dataset, refused for this one.
    e.run(&["seal", "fm", "--out", "sealed-b"], 0);
    let o = e.cmd(&["broker", "export-kbs-resource", "sealed-b"]);
    assert!(o.status.success());
    let release: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key_b: [u8; 32] = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        release["key"].as_str().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    plant(
        "other",
        Some(blindfold_format::OutputSource {
            dataset_id: release["dataset_id"].as_str().unwrap().into(),
            version: release["version"].as_u64().unwrap(),
            manifest_sha256: release["manifest_sha256"].as_str().unwrap().into(),
        }),
        Some(&blindfold_format::DatasetKey::from_bytes(key_b)),
    );
    let out = open("other", "w3", 4);
    assert!(out.contains("was made from dataset"), "{out}");
    assert!(!e.path().join("w3").exists());
}

/// `broker tdx-collateral` stores Intel's collateral for a platform in the broker's
/// folder, names the platform and the end of its validity, and refuses what is not TDX
/// collateral without writing anything.
#[test]
fn broker_tdx_collateral() {
    let e = Env::new();
    let coll = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/evidence/tdx_quote_collateral.json");
    let coll = coll.to_str().unwrap();
    let out = e.run(&["broker", "tdx-collateral", "--dir", "brk", coll], 3);
    assert!(out.contains("not a broker folder"), "{out}");
    assert!(!e.path().join("brk").exists());
    e.run(&["broker", "init", "--dir", "brk"], 0);
    let out = e.run(&["broker", "tdx-collateral", "--dir", "brk", coll], 0);
    assert!(
        out.contains("stored TDX collateral for FMSPC B0C06F000000")
            && out.contains("valid until 2025-07-19T10:16:03Z"),
        "{out}"
    );
    let store = e.path().join("brk/tdx-collateral");
    let files: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .map(|f| f.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        fs::read(store.join(&files[0])).unwrap(),
        fs::read(coll).unwrap()
    );
    // Adding it again replaces the file; a bad file is refused and leaves the store alone.
    e.run(&["broker", "tdx-collateral", "--dir", "brk", coll], 0);
    fs::write(e.path().join("bad.json"), "{\"tcb_info\": 1}").unwrap();
    let out = e.run(&["broker", "tdx-collateral", "--dir", "brk", "bad.json"], 3);
    assert!(out.contains("bad.json: not TDX quote collateral"), "{out}");
    assert_eq!(fs::read_dir(&store).unwrap().count(), 1);
}

/// A seal killed (SIGKILL) halfway publishes nothing, and a second seal to the same
/// DEST succeeds and removes what the first left: complete but unpublished shards, and
/// the partial upload it was writing.
#[test]
fn a_killed_seal_publishes_nothing_and_the_next_seal_cleans_up() {
    let e = Env::new();
    e.run(&["keys", "init"], 0);
    // 256 shards of 1 MiB: the first appears long before the last.
    let input = e.path().join("big.bin");
    let mut data = vec![0u8; 256 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    fs::write(&input, &data).unwrap();
    drop(data);
    let shards = e.path().join("sealed/shards");
    let count = |dir: &Path| fs::read_dir(dir).map_or(0, |d| d.count());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("blindfold"))
        .current_dir(e.path())
        .env("BLINDFOLD_HOME", e.path().join("home"))
        .args([
            "seal", "big.bin", "--format", "raw", "--out", "sealed", "-q",
        ])
        .args(["--shard-size", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while count(&shards) < 3 {
        assert!(t.elapsed().as_secs() < 60, "the seal wrote no shard");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the seal finished before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs
    child.wait().unwrap();
    assert!(!e.path().join("sealed/manifest.bfm").exists());
    let left = count(&shards);
    assert!(left >= 3, "{left}");
    // Nothing was recorded either: the key store records a dataset just before publishing.
    let shown = e.run(&["keys", "show"], 0);
    assert!(shown.contains("datasets: 0"), "{shown}");

    let out = e.run(
        &[
            "seal", "big.bin", "--format", "raw", "--out", "sealed", "-q",
        ],
        0,
    );
    assert!(
        out.contains("shard objects the new manifest does not list"),
        "{out}"
    );
    // One 256 MiB shard is all the folder holds now, and it verifies.
    let names: Vec<String> = fs::read_dir(&shards)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".bfs"), "{names:?}");
    e.run(&["verify", "sealed"], 0);
}

/// `model spec` prints the digest a policy lists (sha256sum's form, over the file's
/// bytes) and checks a spec against a record shape, naming the layer that does not fit.
#[test]
fn model_specs() {
    let e = Env::new();
    let o = e.cmd(&["model", "spec", "lenet5", "--input", "1,28,28"]);
    assert_eq!(o.status.code(), Some(0));
    let want = hex::encode(sha2::Sha256::digest(include_bytes!(
        "../../../models/lenet5.toml"
    )));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{want}  lenet5\n")
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("61706 parameters"));
    fs::write(
        e.path().join("bad.toml"),
        "name = \"bad\"\n[[layer]]\ntype = \"conv2d\"\nout = 4\nkernel = 3\n[[layer]]\ntype = \"linear\"\nout = 8\n",
    )
    .unwrap();
    let out = e.run(&["model", "spec", "bad.toml", "--input", "1,8,8"], 3);
    assert!(
        out.contains("layer 2 (linear): needs flat features, but its input is 4×6×6 images"),
        "{out}"
    );
    let out = e.run(&["model", "spec", "nothing-here"], 3);
    assert!(out.contains("not a built-in model"), "{out}");
}

/// Real-valued labels end to end: a CSV whose label column holds real numbers imports
/// as f32 labels, a regression spec learns them (held-out validation and test splits),
/// and `eval` reports the RMSE and writes each prediction.
#[test]
fn regression_on_a_csv() {
    let e = Env::new();
    let keys = e.run(&["keys", "init"], 0);
    let key = keys
        .split("identity (X25519, HPKE): ")
        .nth(1)
        .unwrap()
        .get(..64)
        .unwrap()
        .to_owned();
    let table = |from: usize, to: usize| {
        let mut csv = String::from("x0,x1,label\n");
        for i in from..to {
            let x0 = (i * 37 % 101) as f32 / 10.0;
            let x1 = (i * 61 % 103) as f32 / 10.0;
            csv.push_str(&format!("{x0},{x1},{}\n", 3.0 * x0 - 2.0 * x1 + 0.5));
        }
        csv
    };
    fs::write(e.path().join("t.csv"), table(0, 300)).unwrap();
    // Records the job never saw, for eval.
    fs::write(e.path().join("unseen.csv"), table(300, 400)).unwrap();
    fs::write(
        e.path().join("reg.toml"),
        "name = \"reg\"\nstandardize = true\n[head]\ntype = \"regression\"\n[optimizer]\ntype = \"sgd\"\nmomentum = 0.9\n",
    )
    .unwrap();
    let args = [
        "train",
        "--plaintext",
        "t.csv",
        "--train-split",
        "data",
        "--owner-key",
        &key,
        "--out",
        "m",
        "--model",
        "reg.toml",
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--holdout",
        "0.2",
    ];
    let out = e.run(&args, 0);
    assert!(out.contains("test RMSE"), "{out}");
    e.run(
        &[
            "model",
            "open",
            "m",
            "--out",
            "w.safetensors",
            "--danger-unauthenticated",
        ],
        0,
    );
    let out = e.run(
        &[
            "eval",
            "--model",
            "w.safetensors",
            "--test",
            "unseen.csv",
            "--split",
            "data",
            "--predictions",
            "p.csv",
        ],
        0,
    );
    let rmse: f64 = out
        .split("RMSE ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(rmse < 0.1, "{out}");
    let p = fs::read_to_string(e.path().join("p.csv")).unwrap();
    assert!(p.starts_with("record,label,predicted\n0,"), "{}", &p[..60]);
    assert_eq!(p.lines().count(), 101);
    // A classifier on these labels is refused, naming the head to use.
    let mut bad = args;
    bad[10] = "mlp";
    bad[8] = "m2";
    let out = e.run(&bad, 3);
    assert!(out.contains("regression"), "{out}");
}

/// A TLS-terminating relay in front of `target`, with its own key: what a host could put
/// between a client and the service. Returns its URL and how many predictions reached
/// it.
fn start_relay(
    target: &str,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::runtime::Runtime,
) {
    use axum::extract::Request;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let predictions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (target, seen) = (target.to_owned(), predictions.clone());
    rt.spawn(async move {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cfg = axum_server::tls_rustls::RustlsConfig::from_pem(
            ck.cert.pem().into_bytes(),
            ck.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let app = axum::Router::new().fallback(move |req: Request| {
            let (client, target, seen) = (client.clone(), target.clone(), seen.clone());
            async move {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                if path.starts_with("/v1/predict") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let r = client
                    .request(req.method().clone(), format!("{target}{path}"))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap();
                (axum::http::StatusCode::from_u16(status).unwrap(), body)
            }
        });
        axum_server::from_tcp_rustls(listener, cfg)
            .serve(app.into_make_service())
            .await
            .unwrap();
    });
    (url, predictions, rt)
}

/// Kills a child process when dropped (a failing test leaves no server behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `blindfold serve` with `args`; returns the process and the URL it printed once
/// listening (stdout's first line, JSON). Stderr is drained on a thread.
fn start_service(e: &Env, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut svc = std::process::Command::new(assert_cmd::cargo::cargo_bin("blindfold"))
        .current_dir(e.path())
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(svc.stdout.take().unwrap());
    let stderr = std::io::BufReader::new(svc.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(u) = v["listening"].as_str() {
                let _ = tx.send(Ok(u.to_owned()));
            }
        }
    });
    std::thread::spawn(move || {
        let lines: Vec<String> = stderr.lines().map_while(Result::ok).collect();
        let _ = tx2.send(Err(lines.join("\n")));
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the service did not start")
        .unwrap_or_else(|err| panic!("the service ended: {err}"));
    (svc, url)
}

#[test]
/// A trained model served from the zone: the owner seals the opened weights as a raw
/// file and registers them with a `[serve]` table; `serve` attests and receives key and
/// rules; `predict` checks the evidence (and names the field that fails) before sending
/// anything; budgets, API keys and bad requests get clean 4xx while the service goes on.
fn serve_and_predict() {
    let e = Env::new();
    idx_input(e.path());
    e.run(&["keys", "init"], 0);
    let id = e.run(&["seal", "fm", "--out", "sealed"], 0);
    let id = id.lines().nth(2).unwrap().trim().to_owned();
    e.run(&["broker", "init", "--dir", "brk"], 0);
    let (broker, url) = serve_broker(&e, "brk");
    let _broker = KillOnDrop(broker);
    let register = |dest: &str, policy: &str| {
        fs::write(e.path().join("p.toml"), policy).unwrap();
        e.run(
            &[
                "broker",
                "register",
                dest,
                "--policy",
                "p.toml",
                "--broker",
                &url,
                "--broker-dir",
                "brk",
            ],
            0,
        )
    };
    register("sealed", "tee = [\"sample\"]\n");
    let m = "ab".repeat(48);
    e.run(
        &[
            "train",
            "--dataset",
            "sealed",
            "--broker",
            &url,
            "--ca-cert",
            "brk/tls-cert.pem",
            "--tee",
            "sample",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            "model",
            "--quiet",
        ],
        0,
    );
    e.run(
        &[
            "model",
            "open",
            "model",
            "--dataset",
            &id,
            "--out",
            "w.safetensors",
        ],
        0,
    );
    let model_id = e.run(
        &[
            "seal",
            "w.safetensors",
            "--format",
            "raw",
            "--out",
            "sealed-model",
        ],
        0,
    );
    let model_id = model_id.lines().nth(2).unwrap().trim().to_owned();
    let key_sha = |k: &str| hex::encode(sha2::Sha256::digest(k.as_bytes()));
    fs::write(e.path().join("alice.key"), "alice-key-0123456789\n").unwrap();
    fs::write(e.path().join("bob.key"), "bob-key-0123456789").unwrap();
    fs::write(e.path().join("mallory.key"), "not-a-key").unwrap();

    // A model registered without a [serve] table is a dataset to the broker: not served.
    register("sealed-model", "tee = [\"sample\"]\n");
    let serve_args = [
        "--model",
        "sealed-model",
        "--broker",
        &url,
        "--ca-cert",
        "brk/tls-cert.pem",
        "--tee",
        "sample",
        "--measurement",
        &m,
        "--listen",
        "127.0.0.1:0",
        "--report-every",
        "1",
    ];
    let out = e.run(&[&["serve"][..], &serve_args[..]].concat(), 7);
    assert!(out.contains("no [serve] table"), "{out}");

    let receipt = hex::encode(sha2::Sha256::digest(
        fs::read(e.path().join("model/receipt.json")).unwrap(),
    ));
    let rules = format!(
        "tee = [\"sample\"]\n[serve]\nreceipt_sha256 = \"{receipt}\"\nglobal_budget = 100\n[[serve.clients]]\nname = \"alice\"\nkey_sha256 = \"{}\"\nbudget = 7\n[[serve.clients]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
        key_sha("alice-key-0123456789"),
        key_sha("bob-key-0123456789")
    );
    let out = register("sealed-model", &rules);
    assert!(out.contains("version 1"), "{out}");
    let (svc, svc_url) = start_service(&e, &serve_args);
    let _svc = KillOnDrop(svc);

    let expect = |extra: &str| {
        fs::write(
            e.path().join("expect.toml"),
            format!("model = \"{model_id}\"\ntee = [\"sample\"]\n{extra}"),
        )
        .unwrap();
    };
    let predict = |key: &str, code: i32| {
        e.run(
            &[
                "predict",
                "--service",
                &svc_url,
                "--expect",
                "expect.toml",
                "--api-key-file",
                key,
                "--labels",
                "fm/t10k-labels-idx1-ubyte",
                "fm/t10k-images-idx3-ubyte",
                "--json",
            ],
            code,
        )
    };
    expect(&format!(
        "measurements = [\"{m}\"]\nversion = 1\nreceipt_sha256 = \"{receipt}\""
    ));
    let out = predict("alice.key", 0);
    let preds: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(preds.len(), 5, "{out}");
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["record"], i, "{out}");
        assert!(p["label"].as_u64().unwrap() < 10, "{out}");
        assert_eq!(p["logits"].as_array().unwrap().len(), 10, "{out}");
        assert_eq!(p["receipt_sha256"], receipt.as_str(), "{out}");
    }
    assert!(
        out.contains("the sample TEE: its evidence proves nothing"),
        "{out}"
    );
    // The owner's own evaluation of the same weights predicts the same labels.
    e.run(
        &[
            "eval",
            "--model",
            "w.safetensors",
            "--test",
            "fm",
            "--split",
            "test",
            "--predictions",
            "eval.csv",
        ],
        0,
    );
    let owner: Vec<String> = fs::read_to_string(e.path().join("eval.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().to_owned())
        .collect();
    let served: Vec<String> = preds.iter().map(|p| p["label"].to_string()).collect();
    assert_eq!(owner, served);

    // Each expectation that fails names its field, and nothing is sent.
    expect(&format!("measurements = [\"{}\"]", "cd".repeat(48)));
    let out = predict("bob.key", 7);
    assert!(out.contains("expectation: measurement:"), "{out}");
    expect("version = 2");
    let out = predict("bob.key", 7);
    assert!(out.contains("expectation: version:"), "{out}");
    fs::write(
        e.path().join("expect.toml"),
        format!("model = \"{}\"\ntee = [\"sample\"]\n", "00".repeat(16)),
    )
    .unwrap();
    let out = predict("bob.key", 7);
    assert!(out.contains("expectation: model:"), "{out}");
    fs::write(
        e.path().join("expect.toml"),
        format!("model = \"{model_id}\"\ntee = [\"tdx\"]\nallow_unpinned = true\n"),
    )
    .unwrap();
    let out = predict("bob.key", 7);
    assert!(out.contains("expectation: tee:"), "{out}");

    // The service reports its counts (never contents) to the broker's audit log, signed
    // with the key the broker certified in the model's release.
    let usage = || -> Vec<serde_json::Value> {
        let out = e.run(&["broker", "audit", "--dir", "brk", "--verify"], 0);
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "usage")
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut reports = usage();
    while reports.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        reports = usage();
    }
    let last = reports.last().expect("no usage report in the audit log");
    assert_eq!(last["dataset"], model_id.as_str(), "{last}");
    assert_eq!(last["usage"]["total"], 5, "{last}");
    assert_eq!(last["usage"]["clients"]["alice"], 5, "{last}");
    assert_eq!(last["usage"]["clients"]["bob"], 0, "{last}");
    assert_eq!(last["insecure_sample"], true, "{last}");

    // A host that terminates TLS itself and relays to the real service: the evidence
    // does not bind the relay's key, so the client sends nothing (exit 4).
    let relay = start_relay(&svc_url);
    let relayed = |code: i32| {
        e.run(
            &[
                "predict",
                "--service",
                &relay.0,
                "--expect",
                "expect.toml",
                "--api-key-file",
                "bob.key",
                "--labels",
                "fm/t10k-labels-idx1-ubyte",
                "fm/t10k-images-idx3-ubyte",
            ],
            code,
        )
    };
    expect("");
    let out = relayed(4);
    assert!(
        out.contains("report_data: the evidence does not bind"),
        "{out}"
    );
    assert_eq!(
        relay.1.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a prediction reached the relay"
    );

    // Alice has 2 of her 7 queries left: 5 more are refused, with nothing answered.
    expect("");
    let out = predict("alice.key", 7);
    assert!(out.contains("429") && out.contains("budget_spent"), "{out}");
    let out = predict("mallory.key", 7);
    assert!(
        out.contains("401") && out.contains("unknown API key"),
        "{out}"
    );

    // Bad requests straight to the service: each a clean 4xx, and it keeps serving.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let post = |body: Vec<u8>, key: &'static str| {
            c.post(format!("{svc_url}/v1/predict"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let status = |r: reqwest::Response| r.status().as_u16();
        let bob = "bob-key-0123456789";
        let row = vec![0.5f32; 9];
        assert_eq!(status(post(b"{not json".to_vec(), bob).await.unwrap()), 400);
        let wrong = serde_json::to_vec(&serde_json::json!({"inputs": [[1.0, 2.0]]})).unwrap();
        let r = post(wrong, bob).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert!(r.text().await.unwrap().contains("wrong_shape"));
        let many =
            serde_json::to_vec(&serde_json::json!({ "inputs": vec![row.clone(); 257] })).unwrap();
        assert_eq!(status(post(many, bob).await.unwrap()), 400);
        assert_eq!(status(post(vec![b' '; 9 << 20], bob).await.unwrap()), 413);
        let ok = serde_json::to_vec(&serde_json::json!({ "inputs": [row.clone()] })).unwrap();
        assert_eq!(status(post(ok.clone(), "nobody").await.unwrap()), 401);
        let r = c
            .post(format!("{svc_url}/v1/predict"))
            .body(ok.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = c
            .get(format!("{svc_url}/v1/attestation?nonce=00"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        // Still serving.
        let r = post(ok, bob).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["predictions"].as_array().unwrap().len(), 1);
    });

    // The owner changes the rules (same version, a new policy): top-1 answers only and a
    // service-wide budget of 3 records. The next release serves under them.
    let rules = format!(
        "tee = [\"sample\"]\n[serve]\ntop1_only = true\nglobal_budget = 3\n[[serve.clients]]\nname = \"bob\"\nkey_sha256 = \"{}\"\n",
        key_sha("bob-key-0123456789")
    );
    register("sealed-model", &rules);
    let (svc2, url2) = start_service(&e, &serve_args);
    let _svc2 = KillOnDrop(svc2);
    let top1 = |limit: &str, code: i32| {
        e.run(
            &[
                "predict",
                "--service",
                &url2,
                "--expect",
                "expect.toml",
                "--api-key-file",
                "bob.key",
                "--labels",
                "fm/t10k-labels-idx1-ubyte",
                "fm/t10k-images-idx3-ubyte",
                "--limit",
                limit,
                "--json",
            ],
            code,
        )
    };
    let out = top1("3", 0);
    let preds: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(preds.len(), 3, "{out}");
    for p in &preds {
        assert!(
            p["label"].as_u64().is_some() && p.get("logits").is_none(),
            "{out}"
        );
    }
    let out = top1("1", 7);
    assert!(out.contains("429") && out.contains("total budget"), "{out}");
}

#[test]
/// `bench serve` runs both services and prints its figures as one JSON line.
fn bench_serve_prints_its_figures() {
    let e = Env::new();
    let o = e.cmd(&[
        "bench",
        "serve",
        "--clients",
        "2",
        "--seconds",
        "0.4",
        "--model",
        "mlp",
        "--scratch",
        ".",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in [
        "predictions_per_s",
        "plaintext_predictions_per_s",
        "p50_ms",
        "p99_ms",
        "overhead",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {out}");
    }
    assert_eq!(v["errors"], 0, "{out}");
    assert_eq!(v["plaintext_errors"], 0, "{out}");
}

/// `bench train` on each CPU backend this binary has: both sides of every backend give
/// one set of weights, and the JSON names the backend. A GPU device is sent to `bench
/// gpu`.
#[test]
fn bench_train_measures_each_cpu_backend() {
    let e = Env::new();
    idx_input(e.path());
    let mut devices = vec!["cpu"];
    if cfg!(feature = "torch") {
        devices.push("torch-cpu");
    }
    for device in devices {
        let o = e.cmd(&[
            "bench", "train", "--model", "mlp", "--device", device, "--rounds", "2", "--data",
            "fm", "--dir", ".", "--quiet",
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(v["device"], device, "{out}");
        assert_eq!(v["identical_weights"], true, "{out}");
        assert_eq!(v["runs_per_side"], 2, "{out}");
        assert!(v["sealed_s"].as_f64().is_some_and(|s| s > 0.0), "{out}");
    }
    let out = e.run(
        &[
            "bench", "train", "--device", "wgpu", "--data", "fm", "--dir", ".",
        ],
        3,
    );
    assert!(out.contains("bench gpu"), "{out}");
}
