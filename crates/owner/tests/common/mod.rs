//! Helpers shared by the owner's integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{KeyStore, NoProgress, SealOptions, SealReport};
use blindfold_store::Store;

pub fn keystore(dir: &Path) -> KeyStore {
    KeyStore::init(&dir.join("keys"), None).unwrap()
}

fn idx_bytes(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Writes `<prefix>-images-idx3-ubyte` (n images of h×w u8) and its labels file; gzips
/// them when `gz`. Returns the uncompressed bytes (images, labels).
pub fn write_idx_pair(
    dir: &Path,
    prefix: &str,
    n: u32,
    h: u32,
    w: u32,
    gz: bool,
) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let img = idx_bytes(0x08, &[n, h, w], &data);
    let lab = idx_bytes(0x08, &[n], &labels);
    for (name, bytes) in [
        (format!("{prefix}-images-idx3-ubyte"), &img),
        (format!("{prefix}-labels-idx1-ubyte"), &lab),
    ] {
        if gz {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    (img, lab)
}

/// A small two-split IDX folder (train gzipped, t10k plain).
pub fn idx_folder(root: &Path) -> PathBuf {
    let d = root.join("idx");
    std::fs::create_dir_all(&d).unwrap();
    write_idx_pair(&d, "train", 23, 4, 5, true);
    write_idx_pair(&d, "t10k", 9, 4, 5, false);
    d
}

/// Small chunks and shards so that a tiny dataset has several of each.
pub fn small_opts() -> SealOptions {
    SealOptions {
        shard_bytes: 200,
        chunk_target: 64,
        ..SealOptions::default()
    }
}

pub fn seal_path(
    ks: &KeyStore,
    input: &Path,
    format: Format,
    dest: &str,
    opts: &SealOptions,
) -> SealReport {
    let imp = import(input, format, &ImportOptions::default()).unwrap();
    let store = Store::open(dest, true).unwrap();
    blindfold_owner::seal(ks, imp, &store, opts, &NoProgress).unwrap()
}

/// Every file under `root`, relative, sorted.
pub fn files(root: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}
