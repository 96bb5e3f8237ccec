//! The device kernels against published vectors (RFC 8439, Wycheproof) and against
//! RustCrypto's CPU implementation: on CubeCL's wgpu runtime (Mesa's lavapipe in CI),
//! or, with the `cuda-tests` feature on a machine with an NVIDIA GPU, on CUDA.
#![cfg(any(feature = "wgpu", feature = "cuda-tests"))]

use blindfold_gpu::{gather_u8, open, Batch, Error, Key, Records};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use cubecl::prelude::*;

#[cfg(feature = "cuda-tests")]
type R = cubecl::cuda::CudaRuntime;
#[cfg(not(feature = "cuda-tests"))]
type R = cubecl::wgpu::WgpuRuntime;
use rand::{RngCore, SeedableRng};
use zeroize::Zeroizing;

fn client() -> ComputeClient<R> {
    R::client(&Default::default())
}

fn key(bytes: &[u8]) -> Key {
    Key::new(Zeroizing::new(bytes.try_into().expect("32-byte key")))
}

fn cpu_seal(k: &[u8], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(k.into())
        .encrypt(nonce.into(), Payload { msg: pt, aad })
        .expect("seal")
}

/// Opens `sealed` chunks (each `(key, nonce, aad, ciphertext ‖ tag)`) in one launch and
/// returns each plaintext, checking that the padding after each is zero.
/// One sealed chunk: key, nonce, associated data, ciphertext ‖ tag.
type Sealed = (Vec<u8>, [u8; 12], Vec<u8>, Vec<u8>);

fn device_open(chunks: &[Sealed]) -> Result<Vec<Vec<u8>>, Error> {
    let c = client();
    let mut b = Batch::default();
    for (k, nonce, aad, sealed) in chunks {
        let ks = b.add_key(key(k));
        let a = b.add_aad(aad)?;
        b.add_chunk(ks, a, *nonce, sealed)?;
    }
    let opened = open(&c, b)?;
    let host = opened.danger_read_to_host(&c)?;
    let mut out = Vec::new();
    for p in &opened.places {
        let pad_end = (p.offset + p.len).div_ceil(64) * 64;
        assert!(
            host[p.offset + p.len..pad_end].iter().all(|&v| v == 0),
            "bytes past a chunk's end must be zero"
        );
        out.push(host[p.offset..p.offset + p.len].to_vec());
    }
    Ok(out)
}

fn field(text: &str, name: &str) -> Vec<u8> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} =")))
        .unwrap_or_else(|| panic!("no {name} in the vector file"));
    hex::decode(line.split('=').nth(1).expect("value").trim()).expect("hex")
}

#[test]
fn rfc8439_aead_example() {
    let text = include_str!("vectors/rfc8439-2.8.2.txt");
    let (k, nonce, aad) = (field(text, "key"), field(text, "nonce"), field(text, "aad"));
    let (pt, mut sealed) = (field(text, "plaintext"), field(text, "ciphertext"));
    sealed.extend(field(text, "tag"));
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    // The CPU reference agrees with the file, so the file is read right.
    assert_eq!(cpu_seal(&k, &nonce, &aad, &pt), sealed);
    let got = device_open(&[(k, nonce, aad, sealed)]).expect("authentic");
    assert_eq!(got[0], pt);
}

#[test]
fn wycheproof_vectors() {
    let data = include_bytes!("vectors/wycheproof_chacha20poly1305.blb");
    let (mut valid, mut invalid, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for row in blobby::Blob6Iterator::new(data).expect("blobby") {
        let [k, nonce, aad, pt, ct, flag] = row.expect("row");
        if nonce.len() != 12 || k.len() != 32 || aad.len() > blindfold_gpu::MAX_AAD {
            skipped += 1;
            continue;
        }
        let entry = (
            k.to_vec(),
            nonce.try_into().unwrap(),
            aad.to_vec(),
            ct.to_vec(),
        );
        match flag[0] {
            1 => valid.push((entry, pt.to_vec())),
            0 => invalid.push(entry),
            f => panic!("flag {f}"),
        }
    }
    assert!(valid.len() >= 100, "{} valid rows", valid.len());
    assert!(!invalid.is_empty());
    eprintln!(
        "wycheproof: {} valid, {} invalid, {skipped} skipped (nonce not 96-bit or aad > 64 bytes)",
        valid.len(),
        invalid.len()
    );
    // All valid rows in one launch: one cube each.
    let chunks: Vec<_> = valid.iter().map(|(e, _)| e.clone()).collect();
    let got = device_open(&chunks).expect("valid rows open");
    for (i, ((_, want), got)) in valid.iter().zip(&got).enumerate() {
        assert_eq!(got, want, "valid row {i}");
    }
    // Each invalid row alone, then hidden among valid ones: refused, and named.
    for (i, bad) in invalid.iter().enumerate() {
        match device_open(std::slice::from_ref(bad)) {
            Err(Error::Tampered { chunk: 0 }) => {}
            Err(Error::BadInput(_)) if bad.3.len() < 16 => {} // shorter than a tag
            other => panic!("invalid row {i}: {:?}", other.map(|v| v.len())),
        }
    }
    let mut mixed = chunks[..3].to_vec();
    mixed.push(invalid[0].clone());
    mixed.extend_from_slice(&chunks[3..6]);
    assert!(matches!(
        device_open(&mixed),
        Err(Error::Tampered { chunk: 3 })
    ));
}

/// Random chunks of awkward and large lengths, each under its own key: the device's
/// plaintext equals RustCrypto's.
#[test]
fn random_chunks_match_the_cpu() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let lens = [
        0usize,
        1,
        3,
        4,
        5,
        15,
        16,
        17,
        31,
        63,
        64,
        65,
        127,
        128,
        129,
        785,
        4096,
        65155,
        100_003,
        1 << 20,
    ];
    let mut chunks = Vec::new();
    let mut plains = Vec::new();
    for (i, &n) in lens.iter().enumerate() {
        let mut k = vec![0u8; 32];
        let mut nonce = [0u8; 12];
        let mut pt = vec![0u8; n];
        let mut aad = vec![0u8; [0, 1, 12, 32, 64][i % 5]];
        rng.fill_bytes(&mut k);
        rng.fill_bytes(&mut nonce);
        rng.fill_bytes(&mut pt);
        rng.fill_bytes(&mut aad);
        let sealed = cpu_seal(&k, &nonce, &aad, &pt);
        chunks.push((k, nonce, aad, sealed));
        plains.push(pt);
    }
    let got = device_open(&chunks).expect("authentic");
    for (i, (g, want)) in got.iter().zip(&plains).enumerate() {
        assert!(g == want, "chunk {i} ({} bytes) differs", want.len());
    }
}

/// One flipped bit anywhere (ciphertext, tag, associated data, nonce, key) is caught on
/// the device, and the error names the chunk.
#[test]
fn a_flipped_bit_is_detected_on_the_device() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut base = Vec::new();
    for _ in 0..4 {
        let mut k = vec![0u8; 32];
        let mut nonce = [0u8; 12];
        let mut pt = vec![0u8; 5000];
        let mut aad = vec![0u8; 32];
        rng.fill_bytes(&mut k);
        rng.fill_bytes(&mut nonce);
        rng.fill_bytes(&mut pt);
        rng.fill_bytes(&mut aad);
        let sealed = cpu_seal(&k, &nonce, &aad, &pt);
        base.push((k, nonce, aad, sealed));
    }
    device_open(&base).expect("untouched chunks open");
    type Edit = fn(&mut Sealed);
    let edits: [(&str, Edit); 6] = [
        ("first ciphertext byte", |c| c.3[0] ^= 1),
        ("last ciphertext byte", |c| {
            let n = c.3.len() - 17;
            c.3[n] ^= 0x80
        }),
        ("tag", |c| {
            let n = c.3.len() - 1;
            c.3[n] ^= 1
        }),
        ("associated data", |c| c.2[31] ^= 4),
        ("nonce", |c| c.1[11] ^= 1),
        ("key", |c| c.0[0] ^= 1),
    ];
    for (i, (what, edit)) in edits.iter().enumerate() {
        let mut chunks = base.clone();
        let target = i % chunks.len();
        edit(&mut chunks[target]);
        match device_open(&chunks) {
            Err(Error::Tampered { chunk }) => assert_eq!(chunk, target, "{what}"),
            other => panic!("{what}: {:?}", other.map(|v| v.len())),
        }
    }
}

/// The gather kernel builds a batch exactly as the host would: features through the
/// table, labels from the byte after them, records at arbitrary offsets.
#[test]
fn gather_builds_the_batch_the_host_would() {
    let c = client();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let elements = 13usize;
    let rs = elements + 1;
    // Three chunks of 5, 5, 2 records, each chunk's plaintext at a 64-byte boundary.
    let mut chunks = Vec::new();
    let mut records = Vec::new();
    for n in [5usize, 5, 2] {
        let mut pt = vec![0u8; n * rs];
        rng.fill_bytes(&mut pt);
        records.extend(pt.chunks(rs).map(<[u8]>::to_vec));
        let k = vec![7u8; 32];
        let nonce = [n as u8; 12];
        let sealed = cpu_seal(&k, &nonce, &[], &pt);
        chunks.push((k, nonce, Vec::new(), sealed));
    }
    let mut b = Batch::default();
    let mut offsets = Vec::new();
    for (k, nonce, aad, sealed) in &chunks {
        let ks = b.add_key(key(k));
        let a = b.add_aad(aad).unwrap();
        let place = b.add_chunk(ks, a, *nonce, sealed).unwrap();
        for r in 0..place.len / rs {
            offsets.push((place.offset + r * rs) as u32);
        }
    }
    let opened = open(&c, b).unwrap();
    let scale: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let recs = Records::new(&c, &offsets, elements, &scale).unwrap();
    let indices = [11u32, 0, 7, 7, 3];
    let (f, l) = gather_u8(&c, &opened, &recs, &indices).unwrap();
    let f = c.read_one(f).unwrap();
    let l = c.read_one(l).unwrap();
    let (f, l) = (f32::from_bytes(&f), i32::from_bytes(&l));
    for (n, &i) in indices.iter().enumerate() {
        let r = &records[i as usize];
        let want: Vec<f32> = r[..elements].iter().map(|&v| scale[v as usize]).collect();
        assert_eq!(
            &f[n * elements..(n + 1) * elements],
            &want[..],
            "record {i}"
        );
        assert_eq!(l[n], r[elements] as i32, "label of record {i}");
    }
    assert!(matches!(
        gather_u8(&c, &opened, &recs, &[12]),
        Err(Error::BadInput(_))
    ));
}
