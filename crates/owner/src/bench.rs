//! `blindfold bench seal`: seal and open throughput next to the physical limits measured
//! in the same run on the same file and folder: raw AES-256-GCM on 64 KiB chunks (one
//! core), a plain copy of the file (the I/O ceiling), and the `age` CLI.
//!
//! Every figure is in GB/s (10⁹ bytes per second) of plaintext. Rounds alternate the
//! programs (seal, open, copy, age) so drift on a noisy machine hits all of them alike;
//! the median of the rounds is reported. All runs read a file the page cache holds, and
//! every writer is timed until its output is synced to disk (seal and open sync what they
//! write; the copy and `age` outputs get an fsync inside the timed span).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::aead;
use blindfold_format::Suite;
use blindfold_store::Store;
use serde::Serialize;

use crate::error::{Error, Result};
use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_dataset::{claimed_id, NoProgress};

use crate::keystore::KeyStore;
use crate::seal::{seal, SealOptions};

/// Settings of the seal benchmark.
#[derive(Debug, Clone)]
pub struct SealBenchOptions {
    /// Input size in bytes.
    pub size: u64,
    /// Folder for the input and outputs (needs about 4× `size` free).
    pub dir: PathBuf,
    /// Rounds; the median is reported.
    pub rounds: usize,
    /// Suite to seal with.
    pub suite: Suite,
}

/// The figures, as printed on the last line.
#[derive(Debug, Clone, Serialize)]
pub struct SealBenchResult {
    /// Seal throughput.
    pub seal_gbps: f64,
    /// Open (decrypt, verify, write the original file) throughput.
    pub open_gbps: f64,
    /// aws-lc-rs AES-256-GCM on 64 KiB chunks, one core.
    pub aead_gbps: f64,
    /// Read the file and write a copy, 1 MiB buffers, synced.
    pub copy_gbps: f64,
    /// `age` CLI encrypting the same file, if installed.
    pub age_encrypt_gbps: Option<f64>,
    /// `age` CLI decrypting it.
    pub age_decrypt_gbps: Option<f64>,
    /// Cores available to this process.
    pub cores: usize,
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn io<T>(p: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(p, e))
}

/// Raw AEAD throughput of aws-lc-rs AES-256-GCM, 64 KiB chunks, one core, ~`secs`.
pub fn aead_gbps(secs: f64) -> f64 {
    let key =
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[7u8; 32]).expect("key"));
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    let start = Instant::now();
    let mut counter = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..256 {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&counter.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::empty(),
                    &mut buf,
                )
                .expect("seal");
            std::hint::black_box(&tag);
            n += buf.len() as u64;
        }
    }
    gbps(n, start.elapsed())
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let mut r = io(src, fs::File::open(src))?;
    let mut w = io(dst, fs::File::create(dst))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = io(src, r.read(&mut buf))?;
        if n == 0 {
            break;
        }
        io(dst, w.write_all(&buf[..n]))?;
    }
    io(dst, w.sync_all())
}

/// Every writer is timed until its output is on disk: seal and open sync their files,
/// so the copy and `age` runs are followed by an fsync too.
fn sync_file(p: &Path) -> Result<()> {
    io(p, fs::File::open(p).and_then(|f| f.sync_all()))
}

fn age_available() -> bool {
    Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::BadInput(format!("could not run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::BadInput(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs the benchmark. `log` receives a line per measurement.
pub fn seal_bench(opts: &SealBenchOptions, log: &mut dyn FnMut(&str)) -> Result<SealBenchResult> {
    let dir = tempfile::Builder::new()
        .prefix("blindfold-bench-")
        .tempdir_in(&opts.dir)
        .map_err(|e| Error::io(&opts.dir, e))?;
    let d = dir.path();
    let input = d.join("input.bin");
    log(&format!(
        "writing a {} MiB random input in {}",
        opts.size >> 20,
        d.display()
    ));
    {
        let mut f = io(&input, fs::File::create(&input))?;
        let mut block = vec![0u8; 1 << 20];
        let mut left = opts.size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            aws_lc_rs::rand::fill(&mut block[..n]).map_err(|_| Error::Bug("random".into()))?;
            io(&input, f.write_all(&block[..n]))?;
            left -= n as u64;
        }
        io(&input, f.sync_all())?;
    }
    let home = d.join("keys");
    let ks = KeyStore::init(&home, None)?;
    let have_age = age_available();
    let age_key = d.join("age-key.txt");
    let mut recipient = String::new();
    if have_age {
        run(Command::new("age-keygen").arg("-o").arg(&age_key))?;
        let text = io(&age_key, fs::read_to_string(&age_key))?;
        recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .ok_or_else(|| Error::Bug("age-keygen wrote no public key".into()))?
            .to_owned();
    } else {
        log("age is not installed (Debian package `age`): its figures are null");
    }
    let size = opts.size;
    let (mut seal_v, mut open_v, mut copy_v, mut agee_v, mut aged_v) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..opts.rounds.max(1) {
        let sealed = d.join("sealed");
        let opened = d.join("opened");
        let store = Store::open(sealed.to_str().expect("utf-8 temp path"), true)?;
        let imp = import(&input, Format::Raw, &ImportOptions::default())?;
        let t = Instant::now();
        seal(
            &ks,
            imp,
            &store,
            &SealOptions {
                suite: opts.suite,
                ..SealOptions::default()
            },
            &NoProgress,
        )?;
        seal_v.push(gbps(size, t.elapsed()));
        let t = Instant::now();
        let ds = crate::open(&ks, store)?;
        crate::open_to_dir(&ds, &opened, false, &NoProgress)?;
        open_v.push(gbps(size, t.elapsed()));
        let t = Instant::now();
        copy_file(&input, &d.join("copy.bin"))?;
        copy_v.push(gbps(size, t.elapsed()));
        if have_age {
            let enc = d.join("input.age");
            let t = Instant::now();
            run(Command::new("age")
                .arg("-r")
                .arg(&recipient)
                .arg("-o")
                .arg(&enc)
                .arg(&input))?;
            sync_file(&enc)?;
            agee_v.push(gbps(size, t.elapsed()));
            let t = Instant::now();
            run(Command::new("age")
                .arg("-d")
                .arg("-i")
                .arg(&age_key)
                .arg("-o")
                .arg(d.join("age-out.bin"))
                .arg(&enc))?;
            sync_file(&d.join("age-out.bin"))?;
            aged_v.push(gbps(size, t.elapsed()));
        }
        log(&format!(
            "round {}: seal {:.2}  open {:.2}  copy {:.2}  age enc {}  age dec {} GB/s",
            round + 1,
            seal_v[round],
            open_v[round],
            copy_v[round],
            agee_v.get(round).map_or("-".into(), |v| format!("{v:.2}")),
            aged_v.get(round).map_or("-".into(), |v| format!("{v:.2}")),
        ));
        // Clean the outputs (and the sealed dataset's key record) for the next round.
        let id = claimed_id(&Store::open(
            sealed.to_str().expect("utf-8 temp path"),
            false,
        )?)?;
        ks.remove_dataset(&id)?;
        for p in [&sealed, &opened] {
            io(p, fs::remove_dir_all(p))?;
        }
        for f in ["copy.bin", "input.age", "age-out.bin"] {
            let _ = fs::remove_file(d.join(f));
        }
    }
    let aead = aead_gbps(1.0);
    log(&format!(
        "raw AES-256-GCM, 64 KiB chunks, one core: {aead:.2} GB/s"
    ));
    Ok(SealBenchResult {
        seal_gbps: median(seal_v),
        open_gbps: median(open_v),
        aead_gbps: aead,
        copy_gbps: median(copy_v),
        age_encrypt_gbps: (!agee_v.is_empty()).then(|| median(agee_v)),
        age_decrypt_gbps: (!aged_v.is_empty()).then(|| median(aged_v)),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}
