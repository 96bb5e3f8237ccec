//! Sealed datasets on a real S3-compatible server (`s3s-fs` 0.14.1, started here on
//! loopback). This test needs the `s3s-fs` binary: `scripts/test` installs it with
//! `cargo install s3s-fs --version 0.14.1 --features binary`.

mod common;

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blindfold_owner::import::Format;
use blindfold_owner::{Error, NoProgress};
use blindfold_store::Store;
use common::*;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3s_fs() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(h).join("bin/s3s-fs"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("s3s-fs not found: install it with `cargo install s3s-fs --version 0.14.1 --features binary` (scripts/test does)")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn seal_verify_open_and_tamper_on_s3() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("s3root");
    fs::create_dir_all(root.join("bucket")).unwrap();
    let port = free_port();
    let server = Server(
        Command::new(s3s_fs())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                "blindfold",
                "--secret-key",
                "blindfold-secret",
            ])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs"),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "s3s-fs did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // This test binary has one test, so setting the process environment is race-free.
    for (k, v) in [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "blindfold".into()),
        ("AWS_SECRET_ACCESS_KEY", "blindfold-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ] {
        std::env::set_var(k, v);
    }
    let ks = keystore(t.path());
    let d = t.path().join("idx");
    fs::create_dir_all(&d).unwrap();
    let (img, lab) = write_idx_pair(&d, "train", 40, 6, 6, true);
    let url = "s3://bucket/datasets/fm";
    // Shards bigger than one multipart part exercise the multipart upload.
    let big = t.path().join("big.bin");
    let blob: Vec<u8> = (0..(9usize << 20) + 17).map(|i| (i % 253) as u8).collect();
    fs::write(&big, &blob).unwrap();
    seal_path(
        &ks,
        &big,
        Format::Raw,
        "s3://bucket/blobs/b1",
        &blindfold_owner::SealOptions::default(),
    );
    let ds =
        blindfold_owner::open(&ks, Store::open("s3://bucket/blobs/b1", false).unwrap()).unwrap();
    let out = t.path().join("blob-out");
    blindfold_owner::open_to_dir(&ds, &out, false, &NoProgress).unwrap();
    assert!(
        fs::read(out.join("big.bin")).unwrap() == blob,
        "9 MiB blob differs after S3 round trip"
    );

    seal_path(&ks, &d, Format::Idx, url, &small_opts());
    // The objects really are in the server's folder, and hold no plaintext image row.
    let stored = files(&root.join("bucket/datasets/fm"));
    assert!(stored.iter().any(|f| f == "manifest.bfm"), "{stored:?}");
    for f in &stored {
        let bytes = fs::read(root.join("bucket/datasets/fm").join(f)).unwrap();
        assert!(
            !bytes.windows(36).any(|w| w == &img[16..52]),
            "{f} holds a plaintext record"
        );
    }
    let store = Store::open(url, false).unwrap();
    let ds = blindfold_owner::open(&ks, store.clone()).unwrap();
    ds.verify(&NoProgress).unwrap();
    let out = t.path().join("out");
    blindfold_owner::open_to_dir(&ds, &out, false, &NoProgress).unwrap();
    assert_eq!(fs::read(out.join("train-images-idx3-ubyte")).unwrap(), img);
    assert_eq!(fs::read(out.join("train-labels-idx1-ubyte")).unwrap(), lab);
    // Tamper through the S3 API.
    let path = ds.manifest().splits[0].shards[1].path.clone();
    let mut b = store.get(&path).unwrap();
    b[100] ^= 0x20;
    store.put(&path, b).unwrap();
    let e = blindfold_owner::open(&ks, store.clone())
        .unwrap()
        .verify(&NoProgress)
        .map_err(Error::from)
        .unwrap_err();
    assert!(
        matches!(e, Error::Integrity { .. }) && e.to_string().contains(&path),
        "{e}"
    );
    drop(server);
}
