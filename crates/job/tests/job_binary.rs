//! The `blindfold-job` binary itself, end to end: the owner seals a small IDX dataset
//! and registers it with a broker on loopback (in this process); the binary attests
//! (`sample`), trains, and seals its outputs, which the owner opens. Its refusals keep
//! their exit statuses.

use std::process::Command;

use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_dataset::NoProgress;

fn idx(path: &std::path::Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

fn job(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_blindfold-job"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_job_binary_trains_from_a_sealed_dataset_and_keeps_its_exit_statuses() {
    let t = tempfile::tempdir().unwrap();
    let plain = t.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for (prefix, n) in [("train", 40u32), ("t10k", 10)] {
        let images: Vec<u8> = (0..n * 16).map(|i| (i * 13 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        idx(
            &plain.join(format!("{prefix}-images-idx3-ubyte")),
            0x0803,
            &[n, 4, 4],
            &images,
        );
        idx(
            &plain.join(format!("{prefix}-labels-idx1-ubyte")),
            0x0801,
            &[n],
            &labels,
        );
    }
    let ks = blindfold_owner::KeyStore::init(&t.path().join("keys"), None).unwrap();
    let sealed = t.path().join("sealed");
    let sealed_s = sealed.to_str().unwrap();
    let report = blindfold_owner::seal(
        &ks,
        import(&plain, Format::Idx, &ImportOptions::default()).unwrap(),
        &blindfold_store::Store::open(sealed_s, true).unwrap(),
        &blindfold_owner::SealOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let id = report.dataset_id.to_hex();
    // The broker, in this process, on loopback.
    let bdir = t.path().join("broker");
    blindfold_broker::init(&bdir, &[]).unwrap();
    let state = blindfold_broker::load(&bdir, None, blindfold_broker::Settings::default()).unwrap();
    let ds =
        blindfold_owner::open(&ks, blindfold_store::Store::open(sealed_s, false).unwrap()).unwrap();
    let rel = blindfold_owner::release(&ds);
    state
        .register(&blindfold_broker::Registration {
            dataset_id: id.clone(),
            key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &rel.key[..]),
            manifest_sha256: hex::encode(rel.manifest_sha256),
            version: rel.version,
            policy: "tee = [\"sample\"]\njobs = [\"ok\"]\n".into(),
        })
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move { blindfold_broker::serve(state, listener, None).await });

    let out = t.path().join("model");
    let run = |job_name: &str, out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "--dataset",
            sealed_s,
            "--broker",
            &url,
            "--tee",
            "sample",
            "--job",
            job_name,
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        job(&args)
    };
    // Plain HTTP needs the flag.
    let (code, text) = run("ok", &out, &[]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("--insecure-http"), "{text}");
    // A job the policy does not name: refused, exit 7, nothing written.
    let (code, text) = run("other", &out, &["--insecure-http"]);
    assert_eq!(code, 7, "{text}");
    assert!(!out.join("model.sealed").exists());
    // The job the policy names trains and seals its outputs to the owner.
    let (code, text) = run("ok", &out, &["--insecure-http"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("trained mlp (sealed)"), "{text}");
    let outputs =
        blindfold_owner::open_job_outputs(&ks, out.to_str().unwrap(), Some(&id), false).unwrap();
    assert_eq!(outputs.header.kind, "model");
    assert_eq!(outputs.header.source.unwrap().dataset_id, id);
    assert!(outputs.metrics.is_some());
    // --help teaches the exit statuses.
    let (code, text) = job(&["--help"]);
    assert_eq!(code, 0);
    assert!(text.contains("7   the key broker refused"), "{text}");
}
