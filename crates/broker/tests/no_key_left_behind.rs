//! A key release end to end in one process (the broker on loopback, the trusted zone's
//! client), with every freed heap block scanned for the dataset key, raw and in base64:
//! no copy of it is given back to the allocator unwiped, on either side.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_attest::{fetch_key, EvidenceSource, FetchOptions};
use blindfold_broker::Settings;

#[global_allocator]
static ALLOC: blindfold_testkit::ScanningAllocator = blindfold_testkit::ScanningAllocator;

/// A broker serving `dir` on loopback until the runtime is dropped.
fn serve(dir: &std::path::Path) -> (String, tokio::runtime::Runtime) {
    let state = blindfold_broker::load(dir, None, Settings::default()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move { blindfold_broker::serve(state, listener, None).await });
    (url, rt)
}

#[test]
fn a_released_key_leaves_no_copy_in_freed_memory() {
    let dir = tempfile::tempdir().unwrap();
    blindfold_broker::init(dir.path(), &[]).unwrap();
    let key: [u8; 32] = std::array::from_fn(|i| 0xa5 ^ (i as u8).wrapping_mul(29));
    let key_b64 = STANDARD.encode(key);
    let id = "5a".repeat(16);
    // Registered in process, not through the admin API: the HTTP stack's buffers of an
    // admin request (the key in base64 in its body) are not ours to wipe
    // (docs/threat-model.md), and a freed one would be seen here when its memory is
    // reused and freed again.
    let state = blindfold_broker::load(dir.path(), None, Settings::default()).unwrap();
    state
        .register(&blindfold_broker::Registration {
            dataset_id: id.clone(),
            key: key_b64.clone(),
            manifest_sha256: "ab".repeat(32),
            version: 1,
            policy: "tee = [\"sample\"]\n".into(),
        })
        .unwrap();
    drop(state);
    let (url, _rt) = serve(dir.path());
    let opts = FetchOptions {
        broker: url,
        insecure_http: true,
        ..FetchOptions::default()
    };
    let ev = EvidenceSource::InsecureSample { measurement: None };
    // One fetch before watching: connection pools and lazy statics are set up.
    drop(fetch_key(&opts, &id, &ev).unwrap());
    let w = blindfold_testkit::watch(&[&key[..], key_b64.as_bytes()]);
    for _ in 0..3 {
        let r = fetch_key(&opts, &id, &ev).unwrap();
        assert_eq!(**r.key, key);
    }
    let (hits, block) = (w.hits(), w.largest_hit_block());
    drop(w);
    assert_eq!(
        hits, 0,
        "freed blocks held the key (largest: {block} bytes)"
    );
}
