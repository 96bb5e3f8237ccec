//! Known-answer vectors (testdata/vectors/*.vec), each run through this crate's reader
//! and re-checked by an independent implementation of docs/sealed-format.md written
//! with RustCrypto (`hkdf`, `hmac`, `sha2`, `aes-gcm`, `chacha20poly1305`), so that the
//! vectors pin the specification rather than merely this code's output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use blindfold_format as bf;
use hmac::Mac;

struct Vector {
    name: String,
    fields: BTreeMap<String, String>,
    shard: Vec<u8>,
}

fn load() -> Vec<Vector> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors");
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).expect("testdata/vectors") {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("vec") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let sep = bytes
            .windows(4)
            .position(|w| w == b"---\n")
            .expect("--- separator");
        let head = std::str::from_utf8(&bytes[..sep]).unwrap();
        let fields = head
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("key: value");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        out.push(Vector {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            fields,
            shard: bytes[sep + 4..].to_vec(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 8,
        "expected the committed vectors, found {}",
        out.len()
    );
    out
}

fn hexf(v: &Vector, k: &str) -> Vec<u8> {
    hex::decode(&v.fields[k]).unwrap()
}

#[test]
fn vectors_through_the_reader() {
    for v in load() {
        let key = bf::DatasetKey::from_slice(&hexf(&v, "open_key")).unwrap();
        let r = bf::open_shard(&key, &v.shard);
        match v.fields["expect"].as_str() {
            "ok" => {
                let (_, plain) = r.unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert_eq!(plain, hexf(&v, "plaintext"), "{}", v.name);
                assert_eq!(
                    bf::sha256(&plain).to_vec(),
                    hexf(&v, "plaintext_sha256"),
                    "{}",
                    v.name
                );
            }
            "tampered" => assert!(
                matches!(r, Err(bf::Error::Tampered { .. })),
                "{}: {:?}",
                v.name,
                r.err()
            ),
            "truncated" => assert!(
                matches!(r, Err(bf::Error::Length { .. })),
                "{}: {:?}",
                v.name,
                r.err()
            ),
            "wrong-key" => assert!(
                matches!(r, Err(bf::Error::WrongKey { .. })),
                "{}: {:?}",
                v.name,
                r.err()
            ),
            other => panic!("{}: unknown expectation {other}", v.name),
        }
    }
}

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// The spec, §4 and §5, implemented from its text. Returns the plaintext or a reason.
fn independent_open(key: &[u8], s: &[u8]) -> Result<Vec<u8>, &'static str> {
    let be32 = |o: usize| u32::from_be_bytes(s[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(s[o..o + 8].try_into().unwrap());
    if &s[..8] != b"BFSHARD\0" || s[8..10] != [0, 1] {
        return Err("magic or version");
    }
    let suite = s[10];
    let hlen = be32(12) as usize;
    let did = &s[16..32];
    let commitment = &s[32..64];
    if hkdf32(did, key, b"blindfold/v1/commit") != commitment {
        return Err("wrong-key");
    }
    let mut o = 68;
    let split_len = s[o] as usize;
    o += 1 + split_len;
    let salt = &s[o..o + 32];
    o += 32;
    let prefix = &s[o..o + 7];
    o += 7;
    let dtype_size = [1usize, 1, 2, 2, 4, 4, 8, 8, 4, 8][s[o] as usize - 1];
    let label_size = if s[o + 1] == 0 {
        0
    } else {
        [1usize, 1, 2, 2, 4, 4, 8, 8, 4, 8][s[o + 1] as usize - 1]
    };
    let ndim = s[o + 2] as usize;
    o += 3;
    let mut elems = 1usize;
    for d in 0..ndim {
        elems *= be32(o + 4 * d) as usize;
    }
    o += 4 * ndim;
    let rpc = be32(o) as u64;
    let count = be64(o + 4);
    o += 20;
    assert_eq!(o + 32, hlen, "header length");
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&hkdf32(
        salt,
        key,
        b"blindfold/v1/shard-header",
    ))
    .unwrap();
    mac.update(&s[..o]);
    mac.verify_slice(&s[o..hlen]).map_err(|_| "tampered")?;
    let h: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&s[..hlen]).into();
    let mut info = b"blindfold/v1/shard-payload".to_vec();
    info.push(suite);
    let pk = hkdf32(salt, key, &info);
    let rs = (elems * dtype_size + label_size) as u64;
    let n = count.div_ceil(rpc).max(1);
    let expected_len = hlen as u64 + count * rs + 16 * n;
    if (s.len() as u64) < expected_len {
        return Err("truncated");
    }
    let mut pos = hlen;
    let mut out = vec![];
    for i in 0..n {
        let recs = rpc.min(count - i * rpc);
        let clen = (recs * rs) as usize + 16;
        let mut nonce = prefix.to_vec();
        nonce.extend_from_slice(&(i as u32).to_be_bytes());
        nonce.push(u8::from(i == n - 1));
        let payload = Payload {
            msg: &s[pos..pos + clen],
            aad: &h,
        };
        let pt = match suite {
            1 => aes_gcm::Aes256Gcm::new_from_slice(&pk)
                .unwrap()
                .decrypt(nonce.as_slice().into(), payload),
            2 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(&pk)
                .unwrap()
                .decrypt(nonce.as_slice().into(), payload),
            _ => return Err("suite"),
        }
        .map_err(|_| "tampered")?;
        out.extend_from_slice(&pt);
        pos += clen;
    }
    if pos != s.len() {
        return Err("trailing");
    }
    Ok(out)
}

#[test]
fn vectors_through_an_independent_implementation() {
    for v in load() {
        let r = independent_open(&hexf(&v, "open_key"), &v.shard);
        match v.fields["expect"].as_str() {
            "ok" => assert_eq!(
                r.unwrap_or_else(|e| panic!("{}: {e}", v.name)),
                hexf(&v, "plaintext"),
                "{}",
                v.name
            ),
            "tampered" => assert_eq!(r, Err("tampered"), "{}", v.name),
            "truncated" => assert_eq!(r, Err("truncated"), "{}", v.name),
            "wrong-key" => assert_eq!(r, Err("wrong-key"), "{}", v.name),
            other => panic!("unknown expectation {other}"),
        }
    }
}

#[test]
fn sealing_is_deterministic_given_the_randomness() {
    // Re-sealing the "ok" vectors with their salt and nonce prefix gives the same bytes:
    // the writer, not only the reader, matches the committed vectors.
    for v in load().into_iter().filter(|v| v.fields["expect"] == "ok") {
        let key = bf::DatasetKey::from_slice(&hexf(&v, "key")).unwrap();
        let h = bf::ShardHeader::parse(&v.shard).unwrap();
        let sealer =
            bf::ShardSealer::with_randomness(&key, h.params.clone(), h.salt, h.nonce_prefix)
                .unwrap();
        let (again, _) = bf::seal_with(sealer, &hexf(&v, "plaintext")).unwrap();
        assert_eq!(again, v.shard, "{}", v.name);
    }
}

#[test]
fn sealing_in_a_callers_buffer_gives_the_vectors_bytes() {
    // `seal_next_in`, which the owner's pipelined seal uses (each chunk sealed where it
    // will be written, its tag in the room left after it), writes the very bytes of the
    // committed vectors, and refuses a chunk without room for its tag.
    for v in load().into_iter().filter(|v| v.fields["expect"] == "ok") {
        let key = bf::DatasetKey::from_slice(&hexf(&v, "key")).unwrap();
        let h = bf::ShardHeader::parse(&v.shard).unwrap();
        let mut sealer =
            bf::ShardSealer::with_randomness(&key, h.params.clone(), h.salt, h.nonce_prefix)
                .unwrap();
        let plaintext = hexf(&v, "plaintext");
        let mut out = sealer.header_bytes().to_vec();
        let mut at = 0;
        while let Some(n) = sealer.next_chunk_len() {
            let mut chunk = plaintext[at..at + n].to_vec();
            assert!(sealer.seal_next_in(&mut chunk).is_err(), "{}", v.name);
            chunk.resize(n + bf::TAG_LEN, 0);
            sealer.seal_next_in(&mut chunk).unwrap();
            out.extend_from_slice(&chunk);
            at += n;
        }
        assert!(sealer.is_complete());
        assert_eq!(out, v.shard, "{}", v.name);
    }
}

/// What the device path takes from the reader (payload key, chunk nonces, header
/// digest) opens every chunk of the "ok" vectors with RustCrypto, so a decryptor outside
/// this crate sees the same keys and nonces the spec defines.
#[test]
fn exported_payload_keys_and_nonces_open_the_vectors() {
    let mut checked = 0;
    for v in load() {
        if v.fields["expect"].as_str() != "ok" {
            continue;
        }
        let key = bf::DatasetKey::from_slice(&hexf(&v, "open_key")).unwrap();
        let opener = bf::ShardOpener::new(&key, &v.shard).unwrap();
        let pk = opener.danger_payload_key(&key).unwrap();
        let h = opener.header().clone();
        let mut out = Vec::new();
        for i in 0..h.chunk_count() {
            let r = h.chunk_range(i);
            let payload = Payload {
                msg: &v.shard[r.start as usize..r.end as usize],
                aad: &opener.header_digest(),
            };
            let nonce = h.chunk_nonce(i);
            let pt = match h.params.suite {
                bf::Suite::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&pk[..])
                    .unwrap()
                    .decrypt(nonce.as_slice().into(), payload),
                bf::Suite::ChaCha20Poly1305 => {
                    chacha20poly1305::ChaCha20Poly1305::new_from_slice(&pk[..])
                        .unwrap()
                        .decrypt(nonce.as_slice().into(), payload)
                }
            }
            .unwrap_or_else(|_| panic!("{}: chunk {i}", v.name));
            out.extend_from_slice(&pt);
        }
        assert_eq!(out, hexf(&v, "plaintext"), "{}", v.name);
        // Another dataset key is refused, not turned into a wrong payload key.
        let other = bf::DatasetKey::from_bytes([9; 32]);
        assert!(matches!(
            opener.danger_payload_key(&other),
            Err(bf::Error::WrongKey { .. })
        ));
        checked += 1;
    }
    assert!(checked >= 2, "{checked} ok vectors");
}
