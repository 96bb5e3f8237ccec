//! `blindfold bench serve`: prediction throughput and latency of a sealed, attested
//! service against the same model served from plaintext weights without attestation,
//! side by side in one run (docs/serving.md).
//!
//! Both services run in this process on loopback, with the load generator beside them:
//! on a small machine the clients take CPU from the services, equally for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fault::Fault;
use crate::Failure;
use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{KeyStore, NoProgress, SealOptions};
use blindfold_protocol::serve::{ClientRule, ServeRules};
use blindfold_store::Store;
use blindfold_zone::infer::Predictor;
use blindfold_zone::model::{Cpu, ModelSpec};
use blindfold_zone::spec::Spec;
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct BenchServeArgs {
    /// Concurrent clients, each sending one request at a time.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load per service (in two alternating halves).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Model: built in (mlp, lenet5, cnn) or a spec file, with random weights, for
    /// 28×28 single-channel inputs and 10 classes.
    #[arg(long, default_value = "lenet5", value_name = "NAME|SPEC.toml")]
    model: String,
    /// Records per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Scratch folder (a fresh temporary folder inside it is used and removed).
    #[arg(long, default_value = "/var/tmp")]
    scratch: std::path::PathBuf,
}

const KEY: &str = "bench-client-key";

/// One load run's figures.
#[derive(Default)]
struct Load {
    latencies_ms: Vec<f64>,
    errors: u64,
    seconds: f64,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.latencies_ms.extend(other.latencies_ms);
        self.errors += other.errors;
        self.seconds += other.seconds;
    }
    fn per_s(&self, batch: usize) -> f64 {
        (self.latencies_ms.len() * batch) as f64 / self.seconds
    }
    fn quantile(&mut self, q: f64) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        let n = self.latencies_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        self.latencies_ms[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    }
}

/// `clients` tasks against `post` for `seconds`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    body: Arc<Vec<u8>>,
    clients: usize,
    seconds: f64,
) -> Load {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = vec![];
    for _ in 0..clients {
        let (c, u, b) = (client.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                let r = c
                    .post(&u)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(b.as_ref().clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1e3)
                } else {
                    errors += 1
                }
            }
            (lat, errors)
        }));
    }
    let mut out = Load::default();
    for t in tasks {
        if let Ok((l, e)) = t.await {
            out.latencies_ms.extend(l);
            out.errors += e;
        } else {
            out.errors += 1;
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}

pub fn run(a: &BenchServeArgs) -> Result<(), Failure> {
    if a.clients == 0 || a.batch == 0 || a.batch > blindfold_protocol::serve::MAX_BATCH {
        return Err(Failure::bad_input("--clients ≥ 1, --batch 1 to 256"));
    }
    if !a.seconds.is_finite() || a.seconds <= 0.0 {
        return Err(Failure::bad_input("--seconds must be positive"));
    }
    let spec = Spec::load(&a.model)?;
    let ms = ModelSpec {
        spec,
        input: [1, 28, 28],
        classes: 10,
    };
    let net = ms.init::<Cpu>(42, &Default::default())?;
    let weights = blindfold_zone::model::to_safetensors(&net, &ms)?;

    // The owner's side: seal the weights as a raw file, register them with a [serve]
    // table at a local broker.
    let tmp = tempfile::Builder::new()
        .prefix("blindfold-bench-serve")
        .tempdir_in(&a.scratch)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", a.scratch.display())))?;
    let w = tmp.path().join("model.safetensors");
    std::fs::write(&w, &weights[..]).map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    let ks = KeyStore::init(&tmp.path().join("keys"), None)?;
    let dest = tmp.path().join("sealed-model");
    let dest_s = dest
        .to_str()
        .ok_or_else(|| Failure::bad_input("scratch path is not UTF-8"))?;
    let store = Store::open(dest_s, true)?;
    let imp = import(&w, Format::Raw, &ImportOptions::default())?;
    blindfold_owner::seal(&ks, imp, &store, &SealOptions::default(), &NoProgress)?;
    std::fs::remove_file(&w).map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    let ds = blindfold_owner::open(&ks, Store::open(dest_s, false)?)?;
    let broker = crate::local_broker::LocalBroker::start(&tmp.path().join("broker"))?;
    let rules = ServeRules {
        top1_only: false,
        receipt_sha256: None,
        global_budget: None,
        clients: vec![ClientRule {
            name: "bench".into(),
            key_sha256: hex::encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                KEY.as_bytes(),
            )),
            budget: None,
        }],
    };
    let policy = format!(
        "tee = [\"sample\"]\njobs = [\"serve\"]\n[serve]\n[[serve.clients]]\nname = \"bench\"\nkey_sha256 = \"{}\"\n",
        rules.clients[0].key_sha256
    );
    let model_id = broker.register(&ds, &policy)?;

    // The zone's side: the sealed service (attested, key from the broker) and the
    // plaintext one (weights as they are, no attestation), each with its own TLS key.
    let evidence = blindfold_attest::EvidenceSource::InsecureSample { measurement: None };
    let t = Instant::now();
    let rel = blindfold_serve::release_model(dest_s, &broker.fetch_options("serve"), &evidence)?;
    let release_s = t.elapsed().as_secs_f64();
    let sealed_tls = blindfold_serve::Tls::generate()?;
    let sealed = Arc::new(blindfold_serve::Service::new(
        rel.predictor,
        rel.info,
        rel.rules,
        Some(evidence),
        sealed_tls.spki_sha256,
    )?);
    let plain_predictor = Predictor::from_safetensors(&weights)?;
    let plain_info = blindfold_serve::describe(&plain_predictor, &model_id, 1, "", &rules);
    let plain_tls = blindfold_serve::Tls::generate()?;
    let plain_spki = plain_tls.spki_sha256;
    let plain = Arc::new(blindfold_serve::Service::new(
        plain_predictor,
        plain_info,
        rules,
        None,
        plain_tls.spki_sha256,
    )?);
    drop(weights);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Failure::new(Fault::Io, e.to_string()))
    };
    let (l1, l2) = (bind()?, bind()?);
    let sealed_url = format!("https://{}", l1.local_addr().map_err(Failure::bug)?);
    let plain_url = format!("https://{}", l2.local_addr().map_err(Failure::bug)?);
    rt.spawn(async move { blindfold_serve::run(l1, &sealed_tls, sealed).await });
    rt.spawn(async move { blindfold_serve::run(l2, &plain_tls, plain).await });

    let expect = blindfold_verify::expect::Expectation::parse(&format!(
        "model = \"{model_id}\"\ntee = [\"sample\"]\n"
    ))
    .map_err(|e| Failure::bug(e.to_string()))?;
    let x: Vec<Vec<f32>> = (0..a.batch)
        .map(|r| {
            (0..784)
                .map(|i| ((i * 7 + r * 13) % 256) as f32 / 255.0)
                .collect()
        })
        .collect();
    let body = Arc::new(serde_json::to_vec(&json!({ "inputs": x })).map_err(Failure::bug)?);
    let (mut s_load, mut p_load) = rt.block_on(async {
        // The client of the sealed service checks its evidence and pins its key, as
        // `blindfold predict` does; the plaintext one has no evidence to check.
        let t = Instant::now();
        let attested = crate::predict::attest(&sealed_url, &expect).await?;
        let attest_ms = t.elapsed().as_secs_f64() * 1e3;
        // The same TLS client configuration for both, pinned to the key it was given.
        let plain_client = crate::predict::pinned_client(plain_spki)?;
        // Warm both (connections, allocator) before timing.
        let _ = load(
            attested.client(),
            &format!("{sealed_url}/v1/predict"),
            body.clone(),
            a.clients,
            0.5,
        )
        .await;
        let _ = load(
            &plain_client,
            &format!("{plain_url}/v1/predict"),
            body.clone(),
            a.clients,
            0.5,
        )
        .await;
        let mut s = Load::default();
        let mut p = Load::default();
        // Two alternating halves each, so that drift of a noisy machine hits both.
        for round in 0..2 {
            let half = a.seconds / 2.0;
            let sealed_first = round == 0;
            for which in [sealed_first, !sealed_first] {
                if which {
                    s.add(
                        load(
                            attested.client(),
                            &format!("{sealed_url}/v1/predict"),
                            body.clone(),
                            a.clients,
                            half,
                        )
                        .await,
                    );
                } else {
                    p.add(
                        load(
                            &plain_client,
                            &format!("{plain_url}/v1/predict"),
                            body.clone(),
                            a.clients,
                            half,
                        )
                        .await,
                    );
                }
            }
        }
        eprintln!("key release {release_s:.3} s, client attestation {attest_ms:.1} ms");
        Ok::<_, Failure>((s, p))
    })?;
    let sealed_ps = s_load.per_s(a.batch);
    let plain_ps = p_load.per_s(a.batch);
    println!(
        "{}",
        json!({
            "model": ms.name(),
            "clients": a.clients,
            "batch": a.batch,
            "seconds": a.seconds,
            "predictions_per_s": round2(sealed_ps),
            "p50_ms": round2(s_load.quantile(0.5)),
            "p99_ms": round2(s_load.quantile(0.99)),
            "errors": s_load.errors,
            "plaintext_predictions_per_s": round2(plain_ps),
            "plaintext_p50_ms": round2(p_load.quantile(0.5)),
            "plaintext_p99_ms": round2(p_load.quantile(0.99)),
            "plaintext_errors": p_load.errors,
            "overhead": round2(plain_ps / sealed_ps),
        })
    );
    drop(broker);
    Ok(())
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
