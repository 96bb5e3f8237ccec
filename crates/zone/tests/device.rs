//! The GPU path on CubeCL's wgpu runtime (Mesa's lavapipe in CI): records decrypted in
//! device memory equal the CPU decryptor's, a tampered chunk stops the job with the CPU
//! path's error, and sealed and plaintext device training give identical weights.
#![cfg(feature = "wgpu")]

mod common;

use blindfold_format::Suite;
use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;
use blindfold_zone::data::{Dataset, Splits};
use blindfold_zone::device::gpu::{DeviceBackend, DeviceData};
use blindfold_zone::device::DeviceKind;
use blindfold_zone::train::{Feed, Part, Quiet, TrainConfig};
use burn::tensor::{Int, Tensor};
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

type B = DeviceBackend<WgpuRuntime>;

struct Sealed {
    dir: tempfile::TempDir,
    ks: KeyStore,
}

impl Sealed {
    fn new(suite: Suite) -> Sealed {
        blindfold_zone::device::prepare_runtime().unwrap();
        let dir = tempfile::tempdir().unwrap();
        common::write_dataset(&dir.path().join("plain"));
        let ks = KeyStore::init(&dir.path().join("keys"), None).unwrap();
        blindfold_owner::seal(
            &ks,
            import(
                &dir.path().join("plain"),
                Format::Idx,
                &ImportOptions::default(),
            )
            .unwrap(),
            &Store::open(dir.path().join("sealed").to_str().unwrap(), true).unwrap(),
            // Small chunks (5 records of 785 bytes): many chunks, none 64-byte aligned.
            &SealOptions {
                suite,
                chunk_target: 4000,
                shard_bytes: 64 << 10,
                ..SealOptions::default()
            },
            &NoProgress,
        )
        .unwrap();
        Sealed { dir, ks }
    }

    fn location(&self) -> String {
        self.dir.path().join("sealed").to_str().unwrap().to_owned()
    }

    fn open(&self) -> SealedDataset {
        blindfold_owner::open(&self.ks, Store::open(&self.location(), false).unwrap()).unwrap()
    }

    fn plain(&self) -> Dataset {
        let imp = import(
            &self.dir.path().join("plain"),
            Format::Idx,
            &ImportOptions::default(),
        )
        .unwrap();
        Dataset::from_import(imp, &Splits::default(), &NoProgress).unwrap()
    }
}

fn batches(feed: &dyn Feed<B>, test: bool, n: usize) -> (Vec<f32>, Vec<i64>) {
    let order: Vec<u32> = (0..n as u32).rev().collect();
    let (mut f, mut l) = (Vec::new(), Vec::new());
    let part = if test { Part::Test } else { Part::Train };
    feed.for_each_batch(
        part,
        &order,
        37,
        &WgpuDevice::default(),
        &mut |x, y: Tensor<B, 1, Int>| {
            f.extend(x.into_data().convert::<f32>().to_vec::<f32>().unwrap());
            l.extend(y.into_data().convert::<i64>().to_vec::<i64>().unwrap());
            Ok(())
        },
    )
    .unwrap();
    (f, l)
}

#[test]
fn device_decryption_equals_the_cpu_decryptor() {
    let s = Sealed::new(Suite::ChaCha20Poly1305);
    let ds = s.open();
    let cpu = Dataset::from_sealed(&ds, &Splits::default(), &NoProgress).unwrap();
    let dev =
        DeviceData::<WgpuRuntime>::from_sealed(&ds, &Splits::default(), &WgpuDevice::default())
            .unwrap();
    // The records the device decrypted, brought back only for this comparison, are
    // byte-identical to what the CPU decryptor produced (both splits)...
    assert!(dev.danger_records_to_host(false).unwrap()[..] == cpu.train.bytes()[..]);
    assert!(
        dev.danger_records_to_host(true).unwrap()[..] == cpu.test.as_ref().unwrap().bytes()[..]
    );
    // ...and so are the batches built from them, on the device and on the host.
    assert_eq!(Feed::<B>::classes(&dev), cpu.classes);
    for test in [false, true] {
        let n = if test { common::TEST } else { common::TRAIN };
        assert_eq!(
            batches(&dev, test, n),
            batches(&cpu, test, n),
            "test split: {test}"
        );
    }
}

#[test]
fn a_tampered_chunk_stops_the_device_path_with_the_cpu_error() {
    let s = Sealed::new(Suite::ChaCha20Poly1305);
    // Flip one byte in the body of the first training shard, past its header.
    let path = std::fs::read_dir(s.dir.path().join("sealed/shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-00000-")
        })
        .expect("the first training shard");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 5000;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let ds = s.open();
    let cpu = Dataset::from_sealed(&ds, &Splits::default(), &NoProgress).unwrap_err();
    let dev =
        DeviceData::<WgpuRuntime>::from_sealed(&ds, &Splits::default(), &WgpuDevice::default())
            .err()
            .expect("the device path must refuse a tampered chunk");
    assert_eq!(dev.to_string(), cpu.to_string());
    assert!(dev.to_string().contains("chunk"), "{dev}");
}

#[test]
fn the_device_path_refuses_what_it_cannot_decrypt() {
    let s = Sealed::new(Suite::Aes256Gcm);
    let e = DeviceData::<WgpuRuntime>::from_sealed(
        &s.open(),
        &Splits::default(),
        &WgpuDevice::default(),
    )
    .err()
    .expect("AES-GCM is not decrypted on the device");
    assert!(e.to_string().contains("chacha20-poly1305"), "{e}");
}

#[test]
fn sealed_and_plaintext_device_training_give_identical_weights() {
    let s = Sealed::new(Suite::ChaCha20Poly1305);
    let cfg = TrainConfig {
        model: "mlp".into(),
        epochs: 2,
        batch_size: 32,
        lr: 3e-3,
        seed: 7,
        device: DeviceKind::Wgpu,
        ..TrainConfig::default()
    };
    let ds = s.open();
    let (sealed, _) = blindfold_zone::device::train(
        DeviceKind::Wgpu,
        blindfold_zone::device::DeviceSource::Sealed(&ds),
        &Splits::default(),
        &cfg,
        &Quiet,
    )
    .unwrap();
    let plain = s.plain();
    let (baseline, _) = blindfold_zone::device::train(
        DeviceKind::Wgpu,
        blindfold_zone::device::DeviceSource::Host(&plain),
        &Splits::default(),
        &cfg,
        &Quiet,
    )
    .unwrap();
    assert_eq!(sealed.weights_sha256, baseline.weights_sha256);
    assert_eq!(sealed.epochs.len(), 2);
    for (a, b) in sealed.epochs.iter().zip(&baseline.epochs) {
        assert_eq!((a.loss, a.test_accuracy), (b.loss, b.test_accuracy));
    }
    // It learned: the synthetic classes are easy.
    let acc = sealed.epochs.last().unwrap().test_accuracy.unwrap();
    assert!(acc > 0.5, "test accuracy {acc}");
}

/// The autotune cache folder of a process that is gone (a killed job, an earlier test
/// run) is removed by the next process that prepares the runtime; others stay.
#[cfg(target_os = "linux")]
#[test]
fn stale_runtime_caches_are_removed() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let tmp = std::env::temp_dir();
    let stale = tmp.join(format!("blindfold-cubecl-{dead}"));
    let other = tmp.join(format!("blindfold-cubecl-{dead}x"));
    std::fs::create_dir_all(stale.join("autotune")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    blindfold_zone::device::prepare_runtime().unwrap();
    assert!(!stale.exists(), "{}", stale.display());
    assert!(other.exists());
    assert!(tmp
        .join(format!("blindfold-cubecl-{}", std::process::id()))
        .exists());
    std::fs::remove_dir_all(other).unwrap();
}

/// The size in bytes of the device buffer a split's chunks are opened into: each
/// chunk's plaintext padded to 64 bytes (`blindfold_gpu::Batch::add_chunk`).
fn device_bytes(ds: &SealedDataset, split: &str) -> usize {
    let m = ds.manifest();
    let (rs, rpc) = (m.schema.record_size() as u64, m.records_per_chunk as u64);
    let pad = |n: u64| n.div_ceil(64) * 64;
    m.split(split)
        .unwrap()
        .shards
        .iter()
        .map(|e| (e.records / rpc) * pad(rpc * rs) + pad((e.records % rpc) * rs))
        .sum::<u64>() as usize
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads back `n` buffers of `bytes` fresh from CubeCL's pool, all held at once: every
/// free slice of that size is among them.
fn pool_contents(
    c: &cubecl::prelude::ComputeClient<WgpuRuntime>,
    bytes: usize,
    n: usize,
) -> Vec<Vec<u8>> {
    let handles: Vec<_> = (0..n).map(|_| c.empty(bytes)).collect();
    handles
        .iter()
        .map(|h| c.read_one(h.clone()).unwrap().to_vec())
        .collect()
}

/// A split opened on the device is overwritten with zeros before its memory goes back
/// to CubeCL's pool, also when loading stops with an error after it (here: a tampered
/// chunk in the test split, opened after the training split). Before, the training
/// split's plaintext went back to the pool as it was, for the next buffer of its size.
#[test]
fn device_plaintext_is_wiped_when_loading_fails_halfway() {
    let s = Sealed::new(Suite::ChaCha20Poly1305);
    let ds = s.open();
    let bytes = device_bytes(&ds, "train");
    let canary = common::canary();
    let device = WgpuDevice::default();
    let c = <WgpuRuntime as cubecl::prelude::Runtime>::client(&device);
    // The premise: memory freed with the canary in it is handed back, unwiped, by the
    // pool. Then every such buffer is wiped, so that only the job can put it back.
    let mut probe = vec![0u8; bytes];
    probe[64..64 + canary.len()].copy_from_slice(&canary);
    drop(c.create_from_slice(&probe));
    let handles: Vec<_> = (0..8).map(|_| c.empty(bytes)).collect();
    let seen = handles
        .iter()
        .any(|h| holds(&c.read_one(h.clone()).unwrap(), &canary));
    assert!(
        seen,
        "the pool did not hand the freed buffer back: this test shows nothing here"
    );
    for h in &handles {
        blindfold_gpu::wipe(
            &c,
            &blindfold_gpu::Opened {
                handle: h.clone(),
                words: bytes / 4,
                places: vec![],
            },
        );
    }
    blindfold_gpu::sync(&c).unwrap();
    drop(handles);

    // Tamper the test split: the training split is opened first, then loading fails.
    let path = std::fs::read_dir(s.dir.path().join("sealed/shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("test-00000-")
        })
        .expect("the first test shard");
    let mut b = std::fs::read(&path).unwrap();
    let at = b.len() - 100;
    b[at] ^= 0x20;
    std::fs::write(&path, b).unwrap();
    let ds = s.open();
    let e = DeviceData::<WgpuRuntime>::from_sealed(&ds, &Splits::default(), &device)
        .err()
        .expect("a tampered test chunk stops loading");
    assert!(e.to_string().contains("test"), "{e}");
    for buf in pool_contents(&c, bytes, 8) {
        assert!(
            !holds(&buf, &canary),
            "training plaintext left in the device pool"
        );
    }
}
