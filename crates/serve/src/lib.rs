//! The prediction service, as the trusted zone runs it (docs/serving.md): it attests to
//! the owner's key broker, receives a sealed model's key with the owner's serving rules,
//! decrypts the weights into memory only, and answers predictions over HTTPS.
//!
//! Its TLS key is made in memory at start and bound into its evidence: a client asks
//! `/v1/attestation` with a fresh nonce and gets evidence whose report data covers the
//! service's description, the SHA-256 of its certificate's public key and the nonce
//! ([`blindfold_protocol::serve::service_binding`]). `blindfold predict` checks that
//! evidence against the client's expectations before it sends any input, and then
//! talks only to that key.
//!
//! Against copying the model by querying it: every request needs an API key the owner
//! listed, each key and the whole release have query budgets (429 once spent), and the
//! owner may allow only top-1 labels. Those rules come from the broker, encrypted to
//! this process, so the operator cannot change them.
//!
//! This crate, and the `blindfold-serve` binary, link no key store, no broker server, no
//! database and no training loop (`tests/boundary.rs`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_dataset::SealedDataset;
use blindfold_format::Schema;
use blindfold_job::{EvidenceArgs, Failure, Fault};
use blindfold_protocol::serve::{
    service_binding, spki_sha256, ServeRules, ServiceInfo, MAX_BATCH, MAX_REQUEST, SERVE_PROTOCOL,
};
use blindfold_store::Store;
use blindfold_zone::infer::Predictor;
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use zeroize::Zeroizing;

/// Largest model accepted (bytes of weights).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

/// `blindfold serve`'s and `blindfold-serve`'s arguments.
#[derive(Args)]
pub struct ServeArgs {
    /// The sealed model (folder, file:///path, s3://bucket/prefix): a model's weights
    /// sealed as a raw file (`blindfold seal model.safetensors --format raw`) and
    /// registered at the broker with a policy that has a `[serve]` table.
    #[arg(long, value_name = "MODEL_DEST")]
    pub model: String,
    /// Address to serve HTTPS on (port 0: any free port; the port is printed).
    #[arg(long, default_value = "127.0.0.1:8444", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Broker URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", value_name = "URL")]
    pub broker: String,
    /// The broker's TLS certificate to trust.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Job name, checked by the model's policy (the service chooses it: not attested).
    #[arg(long, value_name = "NAME", default_value = "serve")]
    pub job: String,
    /// Accept an http:// broker URL (a test broker on loopback): nothing authenticates
    /// the broker, and its replies cross the network in the clear.
    #[arg(long)]
    pub insecure_http: bool,
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Seconds between reports of the query counts (per client, never contents) to the
    /// broker's audit log, sent when they changed; counts since the last report are lost
    /// if the process is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_interval)]
    pub report_every: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (1.0..=86400.0).contains(&v) => Ok(v),
        _ => Err("a number of seconds from 1 to 86400".into()),
    }
}

/// A model released by the broker, in the zone's memory.
pub struct Released {
    /// The network.
    pub predictor: Predictor,
    /// What the service says about itself.
    pub info: ServiceInfo,
    /// The owner's serving rules.
    pub rules: ServeRules,
    /// The key the broker certified for this release, which signs usage reports; none
    /// from a broker that issues no certificates (a stock KBS).
    pub reporter: Option<Reporter>,
}

/// Signs and numbers usage reports for one release.
pub struct Reporter {
    key: blindfold_attest::ReceiptKey,
    cert: blindfold_attest::Certificate,
    release_seq: u64,
    model_id: String,
    next: u64,
}

impl Reporter {
    /// The next report of `usage` (per client name, and total), signed.
    pub fn sign(
        &mut self,
        clients: Vec<(String, u64)>,
        total: u64,
    ) -> Result<blindfold_protocol::serve::SignedUsage, blindfold_attest::Error> {
        self.next += 1;
        let report = blindfold_protocol::serve::UsageReport {
            model_id: self.model_id.clone(),
            release_seq: self.release_seq,
            report: self.next,
            total,
            clients: clients.into_iter().collect(),
        };
        self.key.sign_usage(&report, &self.cert)
    }
}

/// Attests to the broker, receives the model's key and rules, and decrypts the weights
/// into memory.
pub fn release_model(
    model: &str,
    broker: &FetchOptions,
    evidence: &EvidenceSource,
) -> Result<Released, Failure> {
    let store = Store::open(model, false)?;
    let claimed = blindfold_dataset::claimed_manifest(&store)?;
    if claimed.schema != Schema::raw() {
        return Err(Failure::bad_input(format!(
            "{model} is a sealed dataset, not a sealed model (seal the model's .safetensors file with --format raw)"
        )));
    }
    let id = claimed.dataset_id.to_hex();
    // A key of this process, certified by the broker with the release: it signs the
    // usage reports, so that the broker can tell them from anyone else's.
    let key = blindfold_attest::ReceiptKey::generate()?;
    let broker = FetchOptions {
        receipt_key: Some(key.public_hex()),
        ..broker.clone()
    };
    let released = blindfold_attest::fetch_key(&broker, &id, evidence)?;
    if released.dataset_id != id {
        return Err(blindfold_attest::Error::BadReply(
            "the broker released the key of another object".into(),
        )
        .into());
    }
    let rules = released.serve.clone().ok_or_else(|| {
        Failure::new(
            Fault::Denied,
            format!("the policy of {id} has no [serve] table: the owner registered it as a dataset, not as a model to serve"),
        )
    })?;
    rules
        .check()
        .map_err(|e| Failure::new(Fault::Integrity, format!("the broker's serving rules: {e}")))?;
    let ds = SealedDataset::open_registered(
        store,
        &released.key,
        released.version,
        released.manifest_sha256,
    )?;
    let records = ds
        .manifest()
        .split("data")
        .map(|s| s.records)
        .ok_or_else(|| {
            Failure::bad_input(format!("{model}: a raw file seals one split, `data`"))
        })?;
    if records > MAX_MODEL_BYTES {
        return Err(Failure::bad_input(format!(
            "{model}: {records} bytes of weights, more than {MAX_MODEL_BYTES}"
        )));
    }
    let weights: Zeroizing<Vec<u8>> = ds.read_records("data", 0, records)?;
    let predictor = Predictor::from_safetensors(&weights)?;
    drop(weights);
    let info = describe(
        &predictor,
        &id,
        released.version,
        &hex::encode(released.manifest_sha256),
        &rules,
    );
    let reporter = released.certificate.clone().map(|cert| Reporter {
        key,
        release_seq: cert.claims.audit_seq,
        cert,
        model_id: id.clone(),
        next: 0,
    });
    Ok(Released {
        predictor,
        info,
        rules,
        reporter,
    })
}

/// What a service of `predictor` says about itself.
pub fn describe(
    predictor: &Predictor,
    model_id: &str,
    version: u64,
    manifest_sha256: &str,
    rules: &ServeRules,
) -> ServiceInfo {
    let spec = predictor.spec();
    ServiceInfo {
        protocol: SERVE_PROTOCOL.into(),
        model_id: model_id.into(),
        version,
        manifest_sha256: manifest_sha256.into(),
        model_name: spec.name().into(),
        spec_sha256: spec.spec.sha256_hex(),
        input: spec.input,
        outputs: predictor.outputs(),
        receipt_sha256: rules.receipt_sha256.clone(),
        top1_only: rules.top1_only,
    }
}

/// The service's TLS identity, made in memory at start and never written.
pub struct Tls {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl Tls {
    /// A new self-signed certificate and key (P-256).
    pub fn generate() -> Result<Tls, Failure> {
        let ck =
            rcgen::generate_simple_self_signed(vec!["blindfold-serve".into(), "localhost".into()])
                .map_err(|e| Failure::bug(format!("TLS certificate: {e}")))?;
        let spki_sha256 = spki_sha256(ck.cert.der()).map_err(Failure::bug)?;
        Ok(Tls {
            cert_pem: ck.cert.pem(),
            key_pem: Zeroizing::new(ck.signing_key.serialize_pem()),
            spki_sha256,
        })
    }
}

/// Counts of answered records, per client and in total.
#[derive(Default)]
struct Usage {
    total: u64,
    per_client: Vec<u64>,
}

/// A running service's state.
pub struct Service {
    predictor: Predictor,
    info_json: String,
    rules: ServeRules,
    /// SHA-256 of an API key → index in `rules.clients`.
    keys: HashMap<[u8; 32], usize>,
    usage: Mutex<Usage>,
    /// None: a plaintext baseline that cannot attest (benchmarks).
    evidence: Option<Mutex<EvidenceSource>>,
    /// Set while a report is being made: one at a time, others get 503 at once (an
    /// unauthenticated flood must not take the blocking threads predictions use).
    evidence_busy: AtomicBool,
    spki_sha256: [u8; 32],
    receipt_sha256: Option<String>,
}

impl Service {
    /// A service of `predictor` under `rules`, describing itself as `info`, attesting
    /// with `evidence` (none: it cannot attest), behind the TLS key `spki_sha256`.
    pub fn new(
        predictor: Predictor,
        info: ServiceInfo,
        rules: ServeRules,
        evidence: Option<EvidenceSource>,
        spki_sha256: [u8; 32],
    ) -> Result<Service, Failure> {
        rules.check().map_err(Failure::bad_input)?;
        let mut keys = HashMap::new();
        for (i, c) in rules.clients.iter().enumerate() {
            let k: [u8; 32] = hex::decode(&c.key_sha256)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Failure::bug("a checked key digest does not decode"))?;
            keys.insert(k, i);
        }
        let info_json = serde_json::to_string(&info).map_err(Failure::bug)?;
        Ok(Service {
            predictor,
            receipt_sha256: info.receipt_sha256.clone(),
            info_json,
            usage: Mutex::new(Usage {
                total: 0,
                per_client: vec![0; rules.clients.len()],
            }),
            rules,
            keys,
            evidence: evidence.map(Mutex::new),
            evidence_busy: AtomicBool::new(false),
            spki_sha256,
        })
    }

    /// The description the evidence covers, exactly as sent.
    pub fn info_json(&self) -> &str {
        &self.info_json
    }

    /// Records answered so far, per client name, and in total.
    pub fn usage(&self) -> (Vec<(String, u64)>, u64) {
        let u = self.usage.lock().expect("usage lock");
        (
            self.rules
                .clients
                .iter()
                .zip(&u.per_client)
                .map(|(c, &n)| (c.name.clone(), n))
                .collect(),
            u.total,
        )
    }
}

/// An error answer: `{"error": code, "detail": text}`.
fn fail(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "detail": detail.into()})),
    )
        .into_response()
}

/// The service's routes.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/attestation", get(attestation))
        .route("/v1/predict", post(predict))
        .route("/v1/usage", get(usage))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(svc)
}

async fn info(State(svc): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        svc.info_json.clone(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct NonceQuery {
    nonce: String,
}

async fn attestation(
    State(svc): State<Arc<Service>>,
    q: Result<Query<NonceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give ?nonce= 64 hex digits (32 fresh random bytes)",
        );
    };
    let Some(nonce) = hex::decode(&q.nonce)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the nonce must be 64 hex digits (32 fresh random bytes)",
        );
    };
    if svc.evidence.is_none() {
        return fail(
            StatusCode::NOT_FOUND,
            "not_attested",
            "this service runs without attestation (a plaintext baseline)",
        );
    }
    let binding = service_binding(svc.info_json.as_bytes(), &svc.spki_sha256, &nonce);
    // One report at a time (the platform's report interface is one device), and no
    // queue: a request while one is being made is told to come back.
    if svc.evidence_busy.swap(true, Ordering::Acquire) {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "another client's evidence is being made: try again",
        );
    }
    let busy = Busy(svc.clone());
    let made = tokio::task::spawn_blocking(move || {
        let s = &busy.0;
        let src = s
            .evidence
            .as_ref()
            .expect("checked above")
            .lock()
            .expect("evidence lock");
        src.evidence(&binding).map(|e| (src.tee().to_owned(), e))
    })
    .await;
    match made {
        Ok(Ok((tee, evidence))) => axum::Json(json!({
            "tee": tee,
            "info": svc.info_json,
            "evidence": evidence,
        }))
        .into_response(),
        Ok(Err(e)) => {
            tracing::error!("evidence: {e}");
            fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_evidence",
                "the platform made no evidence",
            )
        }
        Err(e) => {
            tracing::error!("evidence task: {e}");
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

/// Clears the evidence flag when a report is done, even by a panic, or when the task
/// never ran.
struct Busy(Arc<Service>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.evidence_busy.store(false, Ordering::Release);
    }
}

/// The client an `Authorization: Bearer KEY` header names, or why there is none.
fn client_of(svc: &Service, headers: &HeaderMap) -> Result<usize, &'static str> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("send your API key as `Authorization: Bearer KEY`")?;
    let digest: [u8; 32] = sha2::Sha256::digest(key.trim().as_bytes()).into();
    svc.keys.get(&digest).copied().ok_or("unknown API key")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: Vec<Vec<f32>>,
}

async fn predict(State(svc): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let client = match client_of(&svc, &headers) {
        Ok(c) => c,
        Err(why) => return fail(StatusCode::UNAUTHORIZED, "unauthorized", why),
    };
    let req: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body must be {{\"inputs\": [[numbers], ...]}}: {e}"),
            )
        }
    };
    let n = req.inputs.len();
    if n == 0 || n > MAX_BATCH {
        return fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("send 1 to {MAX_BATCH} inputs per request, not {n}"),
        );
    }
    let width = svc.predictor.features();
    let mut x = Vec::with_capacity(n * width);
    for (i, r) in req.inputs.iter().enumerate() {
        if r.len() != width {
            let [c, h, w] = svc.predictor.spec().input;
            return fail(
                StatusCode::BAD_REQUEST,
                "wrong_shape",
                format!(
                    "input {i} has {} values; the model takes {width} ({c}×{h}×{w}, as the model saw them in training: u8 data scaled to [0, 1])",
                    r.len()
                ),
            );
        }
        if r.iter().any(|v| !v.is_finite()) {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("input {i} has a value that is not a finite f32"),
            );
        }
        x.extend_from_slice(r);
    }
    drop(req);
    // Budgets are charged before the model runs: a spent budget answers nothing.
    {
        let mut u = svc.usage.lock().expect("usage lock");
        let rule = &svc.rules.clients[client];
        if let Some(b) = rule.budget {
            if u.per_client[client] + n as u64 > b {
                return fail(
                    StatusCode::TOO_MANY_REQUESTS,
                    "budget_spent",
                    format!(
                        "client {:?} has {} of its {b} queries left",
                        rule.name,
                        b - u.per_client[client].min(b)
                    ),
                );
            }
        }
        if let Some(g) = svc.rules.global_budget {
            if u.total + n as u64 > g {
                // No figures: one client must not learn the others' use.
                return fail(
                    StatusCode::TOO_MANY_REQUESTS,
                    "budget_spent",
                    "the service's total budget does not cover this request",
                );
            }
        }
        u.per_client[client] += n as u64;
        u.total += n as u64;
    }
    let s = svc.clone();
    let out = tokio::task::spawn_blocking(move || s.predictor.predict(x, n)).await;
    let out = match out {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            tracing::error!("predict: {e}");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
        Err(e) => {
            tracing::error!("predict task: {e}");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    };
    let k = svc.predictor.outputs();
    let predictions: Vec<Value> = out
        .chunks(k)
        .map(|o| {
            if svc.predictor.regression() {
                json!({"value": o[0]})
            } else {
                let label = blindfold_zone::infer::top1(o);
                if svc.rules.top1_only {
                    json!({"label": label})
                } else {
                    json!({"label": label, "logits": o})
                }
            }
        })
        .collect();
    axum::Json(json!({
        "receipt_sha256": svc.receipt_sha256,
        "predictions": predictions,
    }))
    .into_response()
}

async fn usage(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let client = match client_of(&svc, &headers) {
        Ok(c) => c,
        Err(why) => return fail(StatusCode::UNAUTHORIZED, "unauthorized", why),
    };
    let u = svc.usage.lock().expect("usage lock");
    let rule = &svc.rules.clients[client];
    axum::Json(json!({
        "client": rule.name,
        "used": u.per_client[client],
        "budget": rule.budget,
    }))
    .into_response()
}

/// Serves `svc` over HTTPS with `tls` on `listener` until the process ends.
pub async fn run(
    listener: std::net::TcpListener,
    tls: &Tls,
    svc: Arc<Service>,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::new(Fault::Io, format!("serving: {e}"));
    listener.set_nonblocking(true).map_err(io)?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = axum_server::tls_rustls::RustlsConfig::from_pem(
        tls.cert_pem.clone().into_bytes(),
        tls.key_pem.as_bytes().to_vec(),
    )
    .await
    .map_err(|e| Failure::bug(format!("TLS configuration: {e}")))?;
    axum_server::from_tcp_rustls(listener, cfg)
        .serve(router(svc).into_make_service())
        .await
        .map_err(io)
}

/// Periods without a change after which the counts are reported anyway.
pub const HEARTBEAT: u32 = 10;

/// Reports the service's query counts to the broker every `every` when they changed,
/// and every [`HEARTBEAT`] periods when they did not.
/// A report that fails is logged, and the next one carries the counts anyway (they are
/// totals since the release).
pub async fn report_usage(
    svc: Arc<Service>,
    mut reporter: Reporter,
    client: reqwest::Client,
    broker: String,
    every: std::time::Duration,
) {
    let url = format!(
        "{}{}",
        broker.trim_end_matches('/'),
        blindfold_protocol::serve::USAGE_PATH
    );
    let mut reported = 0u64;
    let mut quiet = 0u32;
    loop {
        tokio::time::sleep(every).await;
        let (clients, total) = svc.usage();
        // Unchanged counts are reported too, every HEARTBEAT periods, so that the log
        // tells a quiet service from one whose reports are blocked.
        quiet += 1;
        if total == reported && quiet < HEARTBEAT {
            continue;
        }
        quiet = 0;
        let signed = match reporter.sign(clients, total) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("usage report: {e}");
                continue;
            }
        };
        match client.post(&url).json(&signed).send().await {
            Ok(r) if r.status().is_success() => reported = total,
            Ok(r) => eprintln!(
                "blindfold-serve: warning: the broker refused a usage report: HTTP {}",
                r.status()
            ),
            Err(e) => eprintln!("blindfold-serve: warning: usage report not delivered: {e}"),
        }
    }
}

/// Runs `blindfold serve`: attest, receive the model, serve until stopped. Prints one
/// JSON line on stdout once it listens: address, model, TLS key digest.
pub fn serve(a: &ServeArgs) -> Result<(), Failure> {
    blindfold_zone::job::harden_process()?;
    let ca_cert_pem = match &a.ca_cert {
        Some(p) => Some(
            std::fs::read(p).map_err(|e| Failure::bad_input(format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    let broker = FetchOptions {
        broker: a.broker.clone(),
        ca_cert_pem,
        job: Some(a.job.clone()),
        model: None,
        insecure_http: a.insecure_http,
        receipt_key: None,
    };
    broker.check()?;
    let evidence = a.evidence.source()?;
    let Released {
        predictor,
        info,
        rules,
        reporter,
    } = release_model(&a.model, &broker, &evidence)?;
    let tls = Tls::generate()?;
    let listener = std::net::TcpListener::bind(a.listen)
        .map_err(|e| Failure::bad_input(format!("--listen {}: {e}", a.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    let svc = Arc::new(Service::new(
        predictor,
        info.clone(),
        rules,
        Some(evidence),
        tls.spki_sha256,
    )?);
    println!(
        "{}",
        json!({
            "listening": format!("https://{addr}"),
            "model_id": info.model_id,
            "version": info.version,
            "tls_spki_sha256": hex::encode(tls.spki_sha256),
        })
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    match reporter {
        Some(r) => {
            let client = blindfold_attest::client(&broker)?;
            rt.spawn(report_usage(
                svc.clone(),
                r,
                client,
                broker.broker.clone(),
                std::time::Duration::from_secs_f64(a.report_every),
            ));
        }
        None => eprintln!(
            "blindfold-serve: warning: the broker certified no key (a stock KBS?): query counts are not reported to its audit log"
        ),
    }
    rt.block_on(run(listener, &tls, svc))
}
