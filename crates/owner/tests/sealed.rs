//! The owner's tools end to end on local folders: round trips for every importer,
//! tamper detection over whole datasets, rollback, and no half-written outputs.

mod common;

use std::fs;

use blindfold_dataset::Error as DError;
use blindfold_format::{Schema, Suite};
use blindfold_owner::import::{import, Format, Import, ImportOptions, RecordSource, SplitSource};
use blindfold_owner::{Error, KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;
use common::*;
use proptest::prelude::*;

fn open(ks: &KeyStore, dest: &std::path::Path) -> Result<SealedDataset, Error> {
    blindfold_owner::open(ks, Store::open(dest.to_str().unwrap(), false)?)
}

fn verify(ks: &KeyStore, dest: &std::path::Path) -> Result<(), Error> {
    open(ks, dest)?
        .verify(&NoProgress)
        .map(|_| ())
        .map_err(Error::from)
}

/// A key store and a small two-split IDX dataset sealed into `<tmp>/sealed` with small
/// shards and chunks. Returns (tempdir, key store, IDX folder, sealed folder).
fn sealed_fixture() -> (
    tempfile::TempDir,
    KeyStore,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let src = idx_folder(t.path());
    let dest = t.path().join("sealed");
    seal_path(
        &ks,
        &src,
        Format::Idx,
        dest.to_str().unwrap(),
        &small_opts(),
    );
    (t, ks, src, dest)
}

#[test]
fn idx_round_trip_is_byte_identical_and_randomly_accessible() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let d = t.path().join("idx");
    fs::create_dir_all(&d).unwrap();
    let (train_img, train_lab) = write_idx_pair(&d, "train", 23, 4, 5, true);
    let (test_img, test_lab) = write_idx_pair(&d, "t10k", 9, 4, 5, false);
    let dest = t.path().join("sealed");
    for suite in [Suite::Aes256Gcm, Suite::ChaCha20Poly1305] {
        let _ = fs::remove_dir_all(&dest);
        let r = seal_path(
            &ks,
            &d,
            Format::Idx,
            dest.to_str().unwrap(),
            &SealOptions {
                suite,
                ..small_opts()
            },
        );
        assert_eq!(
            r.splits,
            vec![("train".to_string(), 23), ("test".to_string(), 9)]
        );
        assert!(r.shards > 2, "small shards expected");
        let ds = open(&ks, &dest).unwrap();
        let out = t.path().join(format!("opened-{suite}"));
        let written = blindfold_owner::open_to_dir(&ds, &out, false, &NoProgress).unwrap();
        assert_eq!(written.len(), 4);
        assert_eq!(
            fs::read(out.join("train-images-idx3-ubyte")).unwrap(),
            train_img
        );
        assert_eq!(
            fs::read(out.join("train-labels-idx1-ubyte")).unwrap(),
            train_lab
        );
        assert_eq!(
            fs::read(out.join("t10k-images-idx3-ubyte")).unwrap(),
            test_img
        );
        assert_eq!(
            fs::read(out.join("t10k-labels-idx1-ubyte")).unwrap(),
            test_lab
        );
        // Random access across shard and chunk boundaries.
        for (start, count) in [(0u64, 1u64), (5, 11), (22, 1), (0, 23), (13, 7)] {
            let recs = ds.read_records("train", start, count).unwrap();
            for k in 0..count as usize {
                let r = start as usize + k;
                assert_eq!(
                    &recs[k * 21..k * 21 + 20],
                    &train_img[16 + r * 20..16 + (r + 1) * 20]
                );
                assert_eq!(recs[k * 21 + 20], train_lab[8 + r]);
            }
        }
        assert!(matches!(
            ds.read_records("train", 20, 4),
            Err(DError::BadInput(_))
        ));
    }
}

#[test]
fn every_flipped_byte_of_a_sealed_dataset_is_detected() {
    let (_t, ks, _src, dest) = sealed_fixture();
    verify(&ks, &dest).unwrap();
    let objects = files(&dest);
    assert!(objects.len() >= 5, "{objects:?}");
    let mut checked = 0;
    for name in &objects {
        let path = dest.join(name);
        let orig = fs::read(&path).unwrap();
        for i in 0..orig.len() {
            let mut t = orig.clone();
            t[i] ^= 0x01;
            fs::write(&path, &t).unwrap();
            match verify(&ks, &dest) {
                Ok(()) => panic!("{name}: flipped byte {i} not detected"),
                Err(Error::Bug(m)) => panic!("{name}: byte {i}: internal error {m}"),
                Err(_) => checked += 1,
            }
        }
        fs::write(&path, &orig).unwrap();
    }
    verify(&ks, &dest).unwrap();
    assert!(checked > 1000, "only {checked} bytes");
}

#[test]
fn shards_dropped_duplicated_replaced_or_rolled_back_are_detected() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let src = idx_folder(t.path());
    let dest = t.path().join("sealed");
    let d = dest.to_str().unwrap();
    seal_path(&ks, &src, Format::Idx, d, &small_opts());
    let v1 = open(&ks, &dest).unwrap().manifest().clone();
    let v1_copy = t.path().join("v1");
    copy_tree(&dest, &v1_copy);
    let shard = |m: &blindfold_format::Manifest, k: usize| dest.join(&m.splits[0].shards[k].path);

    // Dropped.
    let s0 = fs::read(shard(&v1, 0)).unwrap();
    fs::remove_file(shard(&v1, 0)).unwrap();
    assert!(matches!(
        verify(&ks, &dest),
        Err(Error::MissingShard { .. })
    ));
    fs::write(shard(&v1, 0), &s0).unwrap();
    // Duplicated: shard 0's bytes under shard 1's name.
    let s1 = fs::read(shard(&v1, 1)).unwrap();
    fs::write(shard(&v1, 1), &s0).unwrap();
    assert!(matches!(verify(&ks, &dest), Err(Error::Integrity { .. })));
    fs::write(shard(&v1, 1), &s1).unwrap();
    verify(&ks, &dest).unwrap();

    // A new version under the same key.
    let imp = import(&src, Format::Idx, &ImportOptions::default()).unwrap();
    let store = Store::open(d, false).unwrap();
    let r = blindfold_owner::seal(
        &ks,
        imp,
        &store,
        &SealOptions {
            update: true,
            ..small_opts()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.version, 2);
    let v2 = open(&ks, &dest).unwrap().manifest().clone();
    assert_eq!(v2.dataset_id, v1.dataset_id);
    assert!(
        !shard(&v1, 0).exists(),
        "old shards are removed after the new version is published"
    );
    verify(&ks, &dest).unwrap();
    // Replaced by its older version (same split and index, v1 content).
    let v2s0 = fs::read(shard(&v2, 0)).unwrap();
    fs::write(shard(&v2, 0), &s0).unwrap();
    assert!(matches!(verify(&ks, &dest), Err(Error::Integrity { .. })));
    fs::write(shard(&v2, 0), &v2s0).unwrap();
    // The whole dataset rolled back to version 1: every object valid, but old.
    assert!(
        matches!(verify(&ks, &v1_copy), Err(Error::RolledBack { what, .. }) if what.contains("rolled back"))
    );
    // A forked version 2 (same version, other manifest) is refused too.
    let forked = t.path().join("fork");
    copy_tree(&v1_copy, &forked);
    let key_holder = open(&ks, &dest).unwrap();
    drop(key_holder);
    let imp = import(&src, Format::Idx, &ImportOptions::default()).unwrap();
    let ks_fork = KeyStore::open(&t.path().join("keys"), None).unwrap();
    // Make the fork with a copy of the key store that still records version 1.
    let ks2_dir = t.path().join("keys-old");
    copy_tree(&t.path().join("keys"), &ks2_dir);
    let ks2 = KeyStore::open(&ks2_dir, None).unwrap();
    ks2.set_version(&v1.dataset_id, 1, &open_with_v1_digest(&ks_fork, &v1_copy))
        .unwrap();
    blindfold_owner::seal(
        &ks2,
        imp,
        &Store::open(forked.to_str().unwrap(), false).unwrap(),
        &SealOptions {
            update: true,
            ..small_opts()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        matches!(verify(&ks, &forked), Err(Error::RolledBack { what, .. }) if what.contains("forked"))
    );
}

/// Any holder of the dataset key (a training job, say) can seal a valid "newer"
/// version. The owner's tools accept only versions their own key store sealed: such a
/// version is refused, not adopted as the latest (before, it was, and the record
/// advanced to it).
#[test]
fn a_newer_version_this_key_store_did_not_seal_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let src = idx_folder(t.path());
    let dest = t.path().join("sealed");
    let d = dest.to_str().unwrap();
    seal_path(&ks, &src, Format::Idx, d, &small_opts());
    // Another holder of the key: a copy of the key store standing in for it.
    let other_dir = t.path().join("keys-other");
    copy_tree(&t.path().join("keys"), &other_dir);
    let other = KeyStore::open(&other_dir, None).unwrap();
    let imp = import(&src, Format::Idx, &ImportOptions::default()).unwrap();
    let r = blindfold_owner::seal(
        &other,
        imp,
        &Store::open(d, false).unwrap(),
        &SealOptions {
            update: true,
            ..small_opts()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.version, 2);
    let e = verify(&ks, &dest).unwrap_err();
    assert!(
        matches!(&e, Error::RolledBack { what, .. } if what.contains("unregistered")),
        "{e}"
    );
    let rec = &ks.datasets().unwrap()[0];
    assert_eq!(rec.version, 1, "the record did not advance");
    // The key store that sealed it accepts it.
    verify(&other, &dest).unwrap();
}

/// Storage is untrusted, and the trainer reads the manifest before it holds a key: an
/// object larger than any manifest is refused by its size, before it is read (before,
/// it was read whole into memory first).
#[test]
fn an_oversized_manifest_object_is_refused_unread() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let src = idx_folder(t.path());
    let dest = t.path().join("sealed");
    seal_path(
        &ks,
        &src,
        Format::Idx,
        dest.to_str().unwrap(),
        &small_opts(),
    );
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dest.join("manifest.bfm"))
        .unwrap();
    // Sparse: 4 GiB that take no room on disk.
    f.set_len(4 << 30).unwrap();
    drop(f);
    let store = Store::open(dest.to_str().unwrap(), false).unwrap();
    let e = blindfold_dataset::claimed_id(&store).unwrap_err();
    assert!(e.to_string().contains("more than a manifest may be"), "{e}");
    assert!(matches!(verify(&ks, &dest), Err(Error::Format { .. })));
}

fn open_with_v1_digest(_ks: &KeyStore, v1: &std::path::Path) -> [u8; 32] {
    blindfold_format::manifest_digest(&fs::read(v1.join("manifest.bfm")).unwrap())
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for f in files(from) {
        let dst = to.join(&f);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&f), dst).unwrap();
    }
}

#[test]
fn a_dataset_from_another_owner_or_location_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let src = idx_folder(t.path());
    let a = t.path().join("a");
    let b = t.path().join("b");
    seal_path(&ks, &src, Format::Idx, a.to_str().unwrap(), &small_opts());
    seal_path(&ks, &src, Format::Idx, b.to_str().unwrap(), &small_opts());
    // Another owner has no key for it.
    let other = KeyStore::init(&t.path().join("other"), None).unwrap();
    assert!(matches!(open(&other, &a), Err(Error::KeyStore(m)) if m.contains("no key")));
    // A shard of dataset B dropped into dataset A under A's shard name.
    let ma = open(&ks, &a).unwrap().manifest().clone();
    let mb = open(&ks, &b).unwrap().manifest().clone();
    fs::copy(
        b.join(&mb.splits[0].shards[0].path),
        a.join(&ma.splits[0].shards[0].path),
    )
    .unwrap();
    assert!(matches!(verify(&ks, &a), Err(Error::Integrity { .. })));
    // B's manifest in A's place: B's manifest is valid for B; A's shards are then simply
    // not what it lists.
    fs::copy(b.join("manifest.bfm"), a.join("manifest.bfm")).unwrap();
    assert!(verify(&ks, &a).is_err());
}

#[test]
fn open_writes_nothing_on_failure_and_never_overwrites() {
    let (t, ks, _src, dest) = sealed_fixture();
    let m = open(&ks, &dest).unwrap().manifest().clone();
    // Tamper with the very last shard: everything before it decrypts fine.
    let last = m.splits.last().unwrap().shards.last().unwrap();
    let p = dest.join(&last.path);
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    fs::write(&p, &b).unwrap();
    let out = t.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, false, &NoProgress)
        .unwrap_err();
    assert!(matches!(e, Error::Integrity { .. }), "{e}");
    assert!(
        e.to_string().contains(&last.path) && e.to_string().contains("chunk"),
        "{e}"
    );
    assert_eq!(
        files(&out),
        vec!["keep.txt".to_string()],
        "half-written output left behind"
    );
    b[n - 1] ^= 1;
    fs::write(&p, &b).unwrap();
    // Existing files are not overwritten without force.
    fs::write(out.join("train-images-idx3-ubyte"), "mine").unwrap();
    let e = blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, false, &NoProgress)
        .unwrap_err();
    assert!(matches!(e, Error::OutputExists(_)));
    assert_eq!(
        fs::read(out.join("train-images-idx3-ubyte")).unwrap(),
        b"mine"
    );
    assert_eq!(files(&out).len(), 2);
    blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, true, &NoProgress).unwrap();
    assert_eq!(files(&out).len(), 5);
}

struct FailAfter {
    left: u64,
}

impl RecordSource for FailAfter {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<(), DError> {
        if self.left < buf.len() as u64 {
            return Err(DError::BadInput("input vanished".into()));
        }
        self.left -= buf.len() as u64;
        buf.fill(7);
        Ok(())
    }
}

#[test]
fn a_failed_seal_leaves_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let dest = t.path().join("sealed");
    let store = Store::open(dest.to_str().unwrap(), true).unwrap();
    let imp = Import {
        schema: Schema::raw(),
        splits: vec![SplitSource {
            name: "data".into(),
            records: 5000,
            source: Box::new(FailAfter { left: 3000 }),
        }],
        metadata: serde_json::json!({"importer": "raw", "file": "x"}),
    };
    let e = blindfold_owner::seal(
        &ks,
        imp,
        &store,
        &SealOptions {
            shard_bytes: 1000,
            chunk_target: 100,
            ..SealOptions::default()
        },
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(e, Error::BadInput(_)));
    assert_eq!(
        files(&dest),
        Vec::<String>::new(),
        "shards left after a failed seal"
    );
    assert!(
        ks.datasets().unwrap().is_empty(),
        "key record left after a failed seal"
    );
    // Sealing twice into one place is refused; --update into an empty place too.
    let raw = t.path().join("f.bin");
    fs::write(&raw, b"hello").unwrap();
    seal_path(
        &ks,
        &raw,
        Format::Raw,
        dest.to_str().unwrap(),
        &SealOptions::default(),
    );
    let imp = import(&raw, Format::Raw, &ImportOptions::default()).unwrap();
    assert!(matches!(
        blindfold_owner::seal(&ks, imp, &store, &SealOptions::default(), &NoProgress),
        Err(Error::OutputExists(_))
    ));
    let imp = import(&raw, Format::Raw, &ImportOptions::default()).unwrap();
    let empty = Store::open(t.path().join("empty").to_str().unwrap(), true).unwrap();
    assert!(matches!(
        blindfold_owner::seal(
            &ks,
            imp,
            &empty,
            &SealOptions {
                update: true,
                ..SealOptions::default()
            },
            &NoProgress
        ),
        Err(Error::NoDataset(_))
    ));
}

#[test]
fn npy_with_labels_round_trips_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let x = t.path().join("x.npy");
    let y = t.path().join("y.npy");
    let mut xb = b"\x93NUMPY\x01\x00".to_vec();
    let hx = "{'descr': '<f4', 'fortran_order': False, 'shape': (7, 3), }";
    let pad = 64 - (10 + hx.len() + 1) % 64;
    let hx = format!("{hx}{}\n", " ".repeat(pad));
    xb.extend_from_slice(&(hx.len() as u16).to_le_bytes());
    xb.extend_from_slice(hx.as_bytes());
    for i in 0..21 {
        xb.extend_from_slice(&(i as f32 * 0.5).to_le_bytes());
    }
    let mut yb = b"\x93NUMPY\x01\x00".to_vec();
    let hy = "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }";
    let pad = 64 - (10 + hy.len() + 1) % 64;
    let hy = format!("{hy}{}\n", " ".repeat(pad));
    yb.extend_from_slice(&(hy.len() as u16).to_le_bytes());
    yb.extend_from_slice(hy.as_bytes());
    for i in 0..7i64 {
        yb.extend_from_slice(&(i - 3).to_le_bytes());
    }
    fs::write(&x, &xb).unwrap();
    fs::write(&y, &yb).unwrap();
    let imp = import(
        &x,
        Format::Auto,
        &ImportOptions {
            labels: Some(y.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(imp.schema.record_size(), 12 + 8);
    let dest = t.path().join("sealed");
    let store = Store::open(dest.to_str().unwrap(), true).unwrap();
    blindfold_owner::seal(&ks, imp, &store, &small_opts(), &NoProgress).unwrap();
    let out = t.path().join("out");
    blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, false, &NoProgress).unwrap();
    assert_eq!(fs::read(out.join("x.npy")).unwrap(), xb);
    assert_eq!(fs::read(out.join("y.npy")).unwrap(), yb);
    // Mismatched label count is bad input, before anything is written.
    let mut short = yb.clone();
    short.truncate(yb.len() - 8);
    fs::write(&y, &short).unwrap();
    assert!(matches!(
        import(
            &x,
            Format::Npy,
            &ImportOptions {
                labels: Some(y.clone()),
                ..Default::default()
            }
        ),
        Err(DError::BadInput(_))
    ));
    // Float labels are real values (regression targets): accepted when finite,
    // refused at import when one is not.
    let mut fb = b"\x93NUMPY\x01\x00".to_vec();
    let hf = "{'descr': '<f8', 'fortran_order': False, 'shape': (7,), }";
    let pad = 64 - (10 + hf.len() + 1) % 64;
    let hf = format!("{hf}{}\n", " ".repeat(pad));
    fb.extend_from_slice(&(hf.len() as u16).to_le_bytes());
    fb.extend_from_slice(hf.as_bytes());
    let header = fb.len();
    for i in 0..7 {
        fb.extend_from_slice(&(i as f64 * 0.25).to_le_bytes());
    }
    fs::write(&y, &fb).unwrap();
    let opts = ImportOptions {
        labels: Some(y.clone()),
        ..Default::default()
    };
    let imp = import(&x, Format::Npy, &opts).unwrap();
    assert_eq!(imp.schema.label, Some(blindfold_format::DType::F64));
    fb[header + 8 * 5..header + 8 * 6].copy_from_slice(&f64::NAN.to_le_bytes());
    fs::write(&y, &fb).unwrap();
    let e = import(&x, Format::Npy, &opts).err().unwrap();
    assert!(e.to_string().contains("label 5 is not a finite"), "{e}");
}

#[test]
fn csv_round_trips_values_and_rejects_bad_cells_with_their_line() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    let c = t.path().join("t.csv");
    fs::write(&c, "a,label,b\n1.5,3,-2\n0.25,0,1e3\n7,9,0\n").unwrap();
    let dest = t.path().join("sealed");
    seal_path(
        &ks,
        &c,
        Format::Auto,
        dest.to_str().unwrap(),
        &SealOptions::default(),
    );
    let out = t.path().join("out");
    blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, false, &NoProgress).unwrap();
    assert_eq!(
        fs::read_to_string(out.join("t.csv")).unwrap(),
        "a,label,b\n1.5,3,-2\n0.25,0,1000\n7,9,0\n"
    );
    fs::write(&c, "a,label,b\n1.5,3,-2\n0.25,x,1\n").unwrap();
    let e = import(&c, Format::Csv, &ImportOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("t.csv:3") && e.to_string().contains("label"),
        "{e}"
    );
    fs::write(&c, "a,label,b\n1.5,3\n").unwrap();
    let e = import(&c, Format::Csv, &ImportOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("t.csv:2") && e.to_string().contains("2 fields"),
        "{e}"
    );
    fs::write(&c, "a,b\n1,oops\n").unwrap();
    assert!(import(&c, Format::Csv, &ImportOptions::default()).is_err());
    // Any label that is not an integer makes the labels real values (f32, for
    // regression). They open with a decimal point, so that sealing the opened file
    // gives real labels again.
    fs::write(&c, "a,label\n1,0.5\n2,-3\n3,1e2\n").unwrap();
    let imp = import(&c, Format::Csv, &ImportOptions::default()).unwrap();
    assert_eq!(imp.schema.label, Some(blindfold_format::DType::F32));
    let dest = t.path().join("sealed-real");
    seal_path(
        &ks,
        &c,
        Format::Auto,
        dest.to_str().unwrap(),
        &SealOptions::default(),
    );
    let out = t.path().join("out-real");
    blindfold_owner::open_to_dir(&open(&ks, &dest).unwrap(), &out, false, &NoProgress).unwrap();
    assert_eq!(
        fs::read_to_string(out.join("t.csv")).unwrap(),
        "a,label\n1,0.5\n2,-3.0\n3,100.0\n"
    );
    let again = import(&out.join("t.csv"), Format::Csv, &ImportOptions::default()).unwrap();
    assert_eq!(again.schema.label, Some(blindfold_format::DType::F32));
    fs::write(&c, "a,label\n1,0.5\n2,inf\n").unwrap();
    let e = import(&c, Format::Csv, &ImportOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("t.csv:3") && e.to_string().contains("finite"),
        "{e}"
    );
}

#[test]
fn malformed_idx_is_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (img, _) = write_idx_pair(d, "train", 3, 2, 2, false);
    fs::write(d.join("train-images-idx3-ubyte"), &img[..img.len() - 1]).unwrap();
    let e = import(d, Format::Idx, &ImportOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(e, DError::BadInput(_)) && e.to_string().contains("header promises"),
        "{e}"
    );
    fs::write(d.join("train-images-idx3-ubyte"), b"\x00\x00\x08").unwrap();
    assert!(matches!(
        import(d, Format::Idx, &ImportOptions::default()),
        Err(DError::BadInput(_))
    ));
    fs::write(d.join("notes.bin"), b"hello").unwrap();
    assert!(
        matches!(import(&d.join("notes.bin"), Format::Auto, &ImportOptions::default()), Err(DError::BadInput(m)) if m.contains("--format raw"))
    );
}

/// A gzip IDX file is streamed: its length is checked as it is read, so a short one
/// and one with bytes after its records fail when reading reaches them, as bad input.
#[test]
fn streamed_gzip_idx_checks_its_length_as_it_reads() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (img, _) = write_idx_pair(d, "train", 3, 2, 2, true);
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        fs::write(d.join("train-images-idx3-ubyte.gz"), e.finish().unwrap()).unwrap();
    };
    let read_all = || -> Result<Vec<u8>, DError> {
        let mut imp = import(d, Format::Idx, &ImportOptions::default())?;
        let rs = imp.schema.record_size();
        let mut buf = vec![0u8; rs * 3];
        imp.splits[0].source.read_records(&mut buf)?;
        Ok(buf)
    };
    let whole = read_all().unwrap();
    assert_eq!(whole[..4], img[img.len() - 12..img.len() - 8]);
    gz(&img[..img.len() - 1]);
    let e = read_all().unwrap_err();
    assert!(
        matches!(e, DError::BadInput(ref m) if m.contains("ends before")),
        "{e}"
    );
    let mut longer = img.clone();
    longer.push(0);
    gz(&longer);
    let e = read_all().unwrap_err();
    assert!(
        matches!(e, DError::BadInput(ref m) if m.contains("more data")),
        "{e}"
    );
    fs::write(d.join("train-images-idx3-ubyte.gz"), [0x1f, 0x8b, 0, 0]).unwrap();
    assert!(matches!(read_all(), Err(DError::BadInput(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn raw_files_round_trip(len in 0usize..5000, shard in 1u64..3000, chunk in 1usize..700, chacha in any::<bool>()) {
        let t = tempfile::tempdir().unwrap();
        let ks = keystore(t.path());
        let f = t.path().join("blob.bin");
        let data: Vec<u8> = (0..len).map(|i| (i * 131 % 256) as u8).collect();
        fs::write(&f, &data).unwrap();
        let dest = t.path().join("sealed");
        let suite = if chacha { Suite::ChaCha20Poly1305 } else { Suite::Aes256Gcm };
        seal_path(&ks, &f, Format::Raw, dest.to_str().unwrap(), &SealOptions { suite, shard_bytes: shard, chunk_target: chunk, update: false });
        let ds = open(&ks, &dest).unwrap();
        let out = t.path().join("out");
        blindfold_owner::open_to_dir(&ds, &out, false, &NoProgress).unwrap();
        prop_assert_eq!(fs::read(out.join("blob.bin")).unwrap(), data.clone());
        if len > 0 {
            let from = (len / 3) as u64;
            let n = (len as u64 - from).min(700);
            prop_assert_eq!(&ds.read_records("data", from, n).unwrap()[..], &data[from as usize..(from + n) as usize]);
        }
    }
}
