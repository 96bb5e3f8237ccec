//! The synthetic dataset the zone's tests train on.
#![allow(dead_code)]

use std::path::Path;

pub const TRAIN: usize = 240;
pub const TEST: usize = 60;

/// A record no real image looks like: found anywhere on disk, it is a leak.
pub fn canary() -> Vec<u8> {
    (0..784u32).map(|i| (i * 37 % 251) as u8 | 1).collect()
}

/// Class `c` is a bright 8×8 square at one of ten places, over deterministic noise.
pub fn image(i: usize, c: usize) -> Vec<u8> {
    let mut img: Vec<u8> = (0..784).map(|p| ((p * 7 + i * 13) % 40) as u8).collect();
    let (r0, c0) = ((c / 5) * 12 + 2, (c % 5) * 5 + 1);
    for r in r0..r0 + 8 {
        for col in c0..(c0 + 8).min(28) {
            img[r * 28 + col] = 200;
        }
    }
    img
}

pub fn idx(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// Writes a Fashion-MNIST-shaped IDX folder; training record 0 is the canary.
pub fn write_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", TRAIN), ("t10k", TEST)] {
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..n {
            let c = (i * 7 + n) % 10;
            if prefix == "train" && i == 0 {
                images.extend(canary());
            } else {
                images.extend(image(i, c));
            }
            labels.push(c as u8);
        }
        idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            0x0803,
            &[n as u32, 28, 28],
            &images,
        );
        idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            0x0801,
            &[n as u32],
            &labels,
        );
    }
}
