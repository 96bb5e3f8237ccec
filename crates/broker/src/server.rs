//! The HTTP(S) service: the KBS attestation endpoints and the owner's admin API
//! (docs/broker-protocol.md). Errors map to the wire in one place, [`fail`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::aead;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use blindfold_protocol::errors::ErrorCode;
use blindfold_protocol::{
    Attestation, Challenge, Release, TokenClaims, MAX_BODY, PROTOCOL_VERSION, SESSION_COOKIE,
};
use p256::ecdsa::signature::{Signer, Verifier as _};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::audit::{bounded, Entry};
use crate::db::{Conflict, DatasetRow, Db, Denial};
use crate::error::{Error, Result};
use crate::policy::{is_lower_hex, valid_job_name, Policy, MAX_JOB_NAME};
use crate::session::{self, SessionError, Sessions};
use crate::verifier::{self, Rejection, Verifier};

/// Settings of a running broker.
#[derive(Clone)]
pub struct Settings {
    /// How long a session lives after `auth`.
    pub session_ttl: Duration,
    /// Requests per second allowed per client address (burst: twice that).
    pub rate_limit: f64,
    /// Most pending sessions (challenged, not yet attested) held at once, and most
    /// attested ones: beyond either, the oldest of that kind is dropped.
    pub max_sessions: usize,
    /// Most pending sessions one client address may hold; more get `429`.
    pub max_pending_per_client: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_ttl: Duration::from_secs(300),
            rate_limit: 5000.0,
            max_sessions: 16_384,
            max_pending_per_client: 64,
        }
    }
}

/// Shared state of the service.
pub struct AppState {
    db: Db,
    master: aead::LessSafeKey,
    token_key: p256::ecdsa::SigningKey,
    admin_sha256: [u8; 32],
    sessions: Mutex<Sessions>,
    /// Whether some registered policy accepts the `sample` TEE. Until one does, `auth`
    /// refuses `sample`: otherwise anyone could open attested sessions without TEE
    /// hardware and crowd out real ones.
    sample_accepted: std::sync::atomic::AtomicBool,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    verifiers: HashMap<String, Box<dyn Verifier>>,
    settings: Settings,
}

impl AppState {
    /// Ids of the registered datasets whose policy accepts the `sample` TEE (no
    /// hardware root of trust): `broker serve` warns about them at start-up.
    pub fn datasets_accepting_sample(&self) -> Result<Vec<String>> {
        Ok(self
            .db
            .datasets()?
            .into_iter()
            .filter(|r| crate::policy::Policy::parse(&r.policy).is_ok_and(|p| p.allows_sample()))
            .map(|r| r.id)
            .collect())
    }

    /// State over an open database and the broker's keys.
    pub fn new(
        db: Db,
        master: [u8; 32],
        token_key: [u8; 32],
        admin_sha256: [u8; 32],
        settings: Settings,
    ) -> Result<Arc<Self>> {
        let master = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &master)
                .map_err(|_| Error::Internal("AES-256 key of 32 bytes refused".into()))?,
        );
        let token_key = p256::ecdsa::SigningKey::from_slice(&token_key)
            .map_err(|_| Error::BadInput("token.key is not a P-256 secret key".into()))?;
        let mut verifiers = HashMap::new();
        for t in ["sample", "snp", "tdx"] {
            if let Ok(v) = verifier::for_tee(t) {
                verifiers.insert(t.to_string(), v);
            }
        }
        let sample_accepted = db
            .datasets()?
            .iter()
            .any(|r| Policy::parse(&r.policy).is_ok_and(|p| p.allows_sample()));
        Ok(Arc::new(AppState {
            db,
            master,
            token_key,
            admin_sha256,
            sessions: Mutex::new(Sessions::new(
                settings.session_ttl,
                session::Limits {
                    pending: settings.max_sessions,
                    pending_per_client: settings.max_pending_per_client,
                    attested: settings.max_sessions,
                },
            )),
            sample_accepted: std::sync::atomic::AtomicBool::new(sample_accepted),
            buckets: Mutex::new(HashMap::new()),
            verifiers,
            settings,
        }))
    }

    /// Replaces a verifier (tests: a TDX verifier pinned to the captured evidence's time).
    pub fn with_verifier(mut self: Arc<Self>, tee: &str, v: Box<dyn Verifier>) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("before serving")
            .verifiers
            .insert(tee.into(), v);
        self
    }

    /// Wraps a dataset key under the master key.
    pub fn wrap_key(&self, id: &str, key: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let nonce: [u8; 12] = random()?;
        // Room for the tag up front: the buffer holds the key until it is sealed in
        // place, and must not be reallocated (and the old copy freed) meanwhile.
        let mut buf = Zeroizing::new(Vec::with_capacity(key.len() + aead::AES_256_GCM.tag_len()));
        buf.extend_from_slice(key);
        self.master
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(id.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| Error::Internal("AES-GCM seal failed".into()))?;
        Ok((nonce.to_vec(), buf.to_vec()))
    }

    fn unwrap_key(&self, row: &DatasetRow) -> Option<Zeroizing<Vec<u8>>> {
        let nonce: [u8; 12] = row.nonce.clone().try_into().ok()?;
        let mut buf = Zeroizing::new(row.wrapped_key.clone());
        let n = self
            .master
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(row.id.as_bytes()),
                &mut buf[..],
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    Ok(b)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Longest detail text in an error reply (characters): details can quote what the
/// client sent.
const MAX_DETAIL: usize = 300;

/// The one place errors become replies.
fn fail(code: ErrorCode, detail: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let detail = bounded(&detail.into(), MAX_DETAIL);
    (status, axum::Json(code.body(detail))).into_response()
}

/// A session failure as a reply.
fn session_fail(e: SessionError) -> Response {
    match e {
        SessionError::Unknown => fail(ErrorCode::TokenNotFound, "unknown session"),
        SessionError::Expired => fail(
            ErrorCode::SessionExpired,
            "session expired: start again with /kbs/v0/auth",
        ),
        SessionError::Replayed => fail(
            ErrorCode::NonceReplayed,
            "this session's nonce was already used",
        ),
        SessionError::NotAttested => fail(ErrorCode::Unauthorized, "this session has not attested"),
        SessionError::TooManyPending => fail(
            ErrorCode::TooManyRequests,
            "this address holds too many sessions that have not attested: finish them or let them expire",
        ),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("internal error: {e}");
    fail(ErrorCode::Internal, "internal error")
}

async fn body_bytes(body: Body) -> std::result::Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        fail(
            ErrorCode::PayloadTooLarge,
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
    })
}

/// A serving job's query counts (docs/broker-protocol.md §6.1): accepted only when
/// signed by the receipt key that this broker's release certificate (sent with the
/// report) names, for that model and that release, and numbered after the last report
/// recorded for that release.
async fn usage(State(st): State<Arc<AppState>>, body: Body) -> Response {
    use blindfold_protocol::serve::{SignedUsage, UsageReport, USAGE_PAYLOAD_TYPE};
    let body = match body_bytes(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Every failure before the signatures check out gets the same answer: an
    // unauthenticated caller learns nothing about which releases exist.
    let refuse = || {
        fail(
            ErrorCode::Unauthorized,
            "not a usage report signed by a key this broker certified for a release of this model",
        )
    };
    let Ok(signed) = serde_json::from_slice::<SignedUsage>(&body) else {
        return refuse();
    };
    let (Ok(payload), Ok(sig)) = (
        STANDARD.decode(&signed.payload),
        STANDARD.decode(&signed.sig),
    ) else {
        return refuse();
    };
    let Ok(claims) = blindfold_protocol::receipt::verify_certificate(
        &signed.certificate,
        st.token_key.verifying_key(),
    ) else {
        return refuse();
    };
    let Ok(report) = serde_json::from_slice::<UsageReport>(&payload) else {
        return refuse();
    };
    let Ok(key) = hex::decode(&claims.receipt_key) else {
        return refuse();
    };
    let signed_ok = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &key,
    )
    .verify(
        &blindfold_protocol::receipt::pae(USAGE_PAYLOAD_TYPE, &payload),
        &sig,
    )
    .is_ok();
    if !signed_ok || claims.audit_seq != report.release_seq || claims.dataset_id != report.model_id
    {
        return refuse();
    }
    // Signed by the certified key of that release: from here on, answers may say why.
    if let Err(e) = report.check() {
        return fail(ErrorCode::MalformedRequest, format!("usage report: {e}"));
    }
    let db = st.db.clone();
    let (seq, id) = (report.release_seq, report.model_id.clone());
    let found = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::db::DbError>((db.entry(seq)?, db.dataset(&id)?))
    })
    .await;
    let (release, row) = match found {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    // Only a model registered to be served reports usage (a training job never does).
    let served = row.is_some_and(|r| Policy::parse(&r.policy).is_ok_and(|p| p.serve.is_some()));
    if !served {
        return fail(
            ErrorCode::PolicyDenied,
            "this object's policy has no [serve] table: it is not a model to serve",
        );
    }
    let Some(release) = release.filter(|e| {
        e.event == "release"
            && e.outcome == "granted"
            && e.dataset.as_deref() == Some(report.model_id.as_str())
            && e.receipt_key.as_deref() == Some(claims.receipt_key.as_str())
    }) else {
        return internal("a certified release is not in the audit log as certified");
    };
    let mut entry = Entry::new("usage");
    entry.dataset = Some(report.model_id.clone());
    entry.job = release.job.clone();
    entry.tee = release.tee.clone();
    entry.measurement = release.measurement.clone();
    entry.insecure_sample = release.insecure_sample;
    let reason = format!(
        "report {} of release {}: {} records answered",
        report.report, report.release_seq, report.total
    );
    entry = entry.outcome("recorded", &reason);
    entry.usage = Some(report);
    let db = st.db.clone();
    match tokio::task::spawn_blocking(move || db.usage(entry)).await {
        Ok(Ok(Ok(seq))) => axum::Json(json!({ "seq": seq })).into_response(),
        Ok(Ok(Err(last))) => fail(
            ErrorCode::Conflict,
            format!("report {last} or a later one is already recorded for this release"),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION_COOKIE).then(|| v.to_owned())
        })
}

/// The router, with per-client rate limiting.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route("/kbs/v0/resource/{repo}/{kind}/{tag}", get(resource))
        .route("/admin/v0/datasets", post(register))
        .route("/admin/v0/datasets/{id}/revoke", post(revoke))
        .route("/admin/v0/audit", get(audit_log))
        .route(blindfold_protocol::serve::USAGE_PATH, post(usage))
        .fallback(|| async { fail(ErrorCode::NotFound, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ))
        .with_state(state)
}

async fn rate_limit(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ok = {
        let mut b = st.buckets.lock().expect("bucket lock");
        if b.len() > 100_000 {
            b.clear();
        }
        let rate = st.settings.rate_limit;
        let now = Instant::now();
        let e = b.entry(peer.ip()).or_insert((rate * 2.0, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate).min(rate * 2.0);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    };
    if !ok {
        return fail(
            ErrorCode::TooManyRequests,
            "rate limit exceeded; retry later",
        );
    }
    next.run(req).await
}

async fn auth(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let body = match body_bytes(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return fail(ErrorCode::MalformedRequest, format!("request: {e}")),
    };
    let version = v.get("version").and_then(Value::as_str).unwrap_or("");
    if version != PROTOCOL_VERSION {
        return fail(
            ErrorCode::ProtocolVersion,
            format!("protocol version {version:?} is not {PROTOCOL_VERSION}"),
        );
    }
    let tee = v
        .get("tee")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !st.verifiers.contains_key(&tee) {
        return fail(
            ErrorCode::UnsupportedTee,
            format!("TEE {tee:?} is not supported by this broker"),
        );
    }
    if tee == "sample"
        && !st
            .sample_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        return fail(
            ErrorCode::UnsupportedTee,
            "no dataset registered here accepts the sample TEE",
        );
    }
    let job = match v.get("extra-params").and_then(|p| p.get("job")) {
        None | Some(Value::Null) => None,
        Some(Value::String(j)) if valid_job_name(j) => Some(j.clone()),
        Some(_) => {
            return fail(
                ErrorCode::MalformedRequest,
                format!(
                    "extra-params.job must be 1-{MAX_JOB_NAME} characters from A-Z a-z 0-9 . _ -"
                ),
            )
        }
    };
    // The SHA-256 of the model spec the job will train (lowercase hex), for policies
    // that list the specs they accept.
    let model = match v.get("extra-params").and_then(|p| p.get("model")) {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if is_lower_hex(m, 64) => Some(m.clone()),
        Some(_) => {
            return fail(
                ErrorCode::MalformedRequest,
                "extra-params.model must be a SHA-256 in lowercase hex (64 characters)",
            )
        }
    };
    // The job's receipt key (P-256, hex), certified on release for its training receipt.
    let receipt_key = match v.get("extra-params").and_then(|p| p.get("receipt-key")) {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => match blindfold_protocol::receipt::check_receipt_key(k) {
            Ok(()) => Some(k.clone()),
            Err(e) => {
                return fail(
                    ErrorCode::MalformedRequest,
                    format!("extra-params.receipt-key: {e}"),
                )
            }
        },
        Some(_) => {
            return fail(
                ErrorCode::MalformedRequest,
                "extra-params.receipt-key must be a string",
            )
        }
    };
    let (nonce, sid) = match (random::<32>(), random::<16>()) {
        (Ok(n), Ok(s)) => (STANDARD.encode(n), hex::encode(s)),
        _ => return internal("random"),
    };
    let made = st.sessions.lock().expect("session lock").insert(
        sid.clone(),
        session::Challenge {
            nonce: nonce.clone(),
            tee,
            job,
            model,
            receipt_key,
        },
        peer.ip(),
        Instant::now(),
    );
    if let Err(e) = made {
        return session_fail(e);
    }
    let mut h = HeaderMap::new();
    let c = format!(
        "{SESSION_COOKIE}={sid}; Path=/kbs; HttpOnly; Max-Age={}",
        st.settings.session_ttl.as_secs()
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).expect("ascii cookie"),
    );
    (
        h,
        axum::Json(Challenge {
            nonce,
            extra_params: Value::String(String::new()),
        }),
    )
        .into_response()
}

fn token(st: &AppState, sid: &str, tee: &str) -> Result<String> {
    let iat = now_secs();
    let claims = TokenClaims {
        exp: iat + st.settings.session_ttl.as_secs(),
        iat,
        jti: sid.into(),
        tee: tee.into(),
    };
    let head = URL_SAFE_NO_PAD.encode(TOKEN_HEADER);
    let body = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims).map_err(|e| Error::Internal(e.to_string()))?);
    let input = format!("{head}.{body}");
    let sig: p256::ecdsa::Signature = st.token_key.sign(input.as_bytes());
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// The header of every attestation token, byte for byte. The same key signs release
/// certificates (`typ` `blindfold-release+jwt`): a token is only what carries this
/// header, so that no certificate a job publishes in its receipt is ever a bearer token.
const TOKEN_HEADER: &[u8] = br#"{"alg":"ES256","typ":"JWT"}"#;

fn token_session(st: &AppState, tok: &str) -> Option<String> {
    let (input, sig) = tok.rsplit_once('.')?;
    if input.split_once('.')?.0 != URL_SAFE_NO_PAD.encode(TOKEN_HEADER) {
        return None;
    }
    let sig = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).ok()?).ok()?;
    st.token_key
        .verifying_key()
        .verify(input.as_bytes(), &sig)
        .ok()?;
    let claims: TokenClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(input.split_once('.')?.1).ok()?).ok()?;
    (claims.exp > now_secs()).then_some(claims.jti)
}

async fn attest(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let Some(sid) = cookie(&headers) else {
        return fail(
            ErrorCode::TokenNotFound,
            "no session: call /kbs/v0/auth first",
        );
    };
    let body = match body_bytes(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Take the session's challenge; whatever happens next, this nonce is spent.
    let session::Challenge {
        nonce,
        tee,
        job,
        model,
        receipt_key,
    } = match st
        .sessions
        .lock()
        .expect("session lock")
        .spend(&sid, Instant::now())
    {
        Ok(c) => c,
        Err(e) => return session_fail(e),
    };
    let mut entry = Entry::new("attest");
    entry.tee = Some(tee.clone());
    entry.job = job.clone();
    entry.model = model.clone();
    entry.receipt_key = receipt_key;
    entry.insecure_sample = tee == "sample";
    let deny = |st: &AppState, entry: Entry, code: ErrorCode, reason: String| {
        let r = st.db.audit(entry.outcome("denied", &reason));
        match r {
            Ok(()) => fail(code, reason),
            Err(e) => internal(e),
        }
    };
    let att: Attestation = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return deny(
                &st,
                entry,
                ErrorCode::MalformedRequest,
                format!("attestation: {e}"),
            )
        }
    };
    if att.runtime_data.nonce != nonce {
        return deny(
            &st,
            entry,
            ErrorCode::ReportDataMismatch,
            "runtime data carries another nonce".into(),
        );
    }
    if let Err(e) = blindfold_protocol::jwe::public_key(&att.runtime_data.tee_pubkey) {
        return deny(
            &st,
            entry,
            ErrorCode::UnsupportedTeeKey,
            format!("TEE key: {e}"),
        );
    }
    let binding = match blindfold_protocol::report_data_binding(
        &nonce,
        &att.runtime_data.tee_pubkey,
        &att.tee_evidence.additional_evidence,
    ) {
        Ok(b) => b,
        Err(e) => return deny(&st, entry, ErrorCode::MalformedRequest, e.to_string()),
    };
    let v = st.verifiers.get(&tee).expect("checked at auth");
    let claims = match v.verify(&att.tee_evidence.primary_evidence, &binding) {
        Ok(c) => c,
        Err(Rejection::ReportData(r)) => {
            return deny(
                &st,
                entry,
                ErrorCode::ReportDataMismatch,
                format!("report data: {r}"),
            )
        }
        Err(Rejection::Evidence(r)) => return deny(&st, entry, ErrorCode::EvidenceRejected, r),
    };
    entry.measurement = claims.measurement.clone();
    if let Err(e) = st.db.audit(entry.outcome("granted", "evidence verified")) {
        return internal(e);
    }
    let tok = match token(&st, &sid, &tee) {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    st.sessions.lock().expect("session lock").attest(
        &sid,
        att.runtime_data.tee_pubkey,
        claims,
        Instant::now(),
    );
    axum::Json(json!({ "token": tok })).into_response()
}

async fn resource(
    State(st): State<Arc<AppState>>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if repo != blindfold_protocol::RESOURCE_REPO
        || kind != blindfold_protocol::RESOURCE_TYPE
        || !is_lower_hex(&tag, 32)
    {
        return fail(ErrorCode::NotFound, "no such resource");
    }
    let sid = cookie(&headers).or_else(|| {
        let a = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        token_session(&st, a.strip_prefix("Bearer ")?)
    });
    let Some(sid) = sid else {
        return fail(
            ErrorCode::TokenNotFound,
            "no session or token: attest first",
        );
    };
    let session::Attested {
        pubkey,
        claims,
        job,
        model,
        receipt_key,
    } = match st
        .sessions
        .lock()
        .expect("session lock")
        .attested(&sid, Instant::now())
    {
        Ok(a) => a,
        Err(e) => return session_fail(e),
    };
    let mut entry = Entry::new("release");
    entry.dataset = Some(tag.clone());
    entry.job = job.clone();
    entry.model = model.clone();
    entry.receipt_key = receipt_key.clone();
    entry.tee = Some(claims.tee.clone());
    entry.measurement = claims.measurement.clone();
    entry.insecure_sample = claims.insecure;
    let db = st.db.clone();
    let (t2, c2, j2, m2) = (tag.clone(), claims.clone(), job.clone(), model.clone());
    let m_cert = model;
    let decision =
        tokio::task::spawn_blocking(move || db.release(t2, c2, j2, m2, now_secs(), entry)).await;
    let (row, audit_seq) = match decision {
        Ok(Ok(Ok(granted))) => granted,
        Ok(Ok(Err(Denial::Unknown))) => return fail(ErrorCode::NotFound, "no such dataset"),
        Ok(Ok(Err(Denial::Revoked))) => {
            return fail(ErrorCode::Revoked, "the owner revoked this dataset")
        }
        Ok(Ok(Err(Denial::Policy(r)))) => return fail(ErrorCode::PolicyDenied, r),
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let Some(key) = st.unwrap_key(&row) else {
        return internal("a stored key does not unwrap");
    };
    // What this release was, signed for the job's training receipt: only for a job
    // that sent a receipt key (a stock KBS client sends none, and gets what it expects).
    let certificate = match receipt_key {
        None => None,
        Some(receipt_key) => {
            let c = blindfold_protocol::receipt::ReleaseClaims {
                iat: now_secs(),
                receipt_key,
                dataset_id: row.id.clone(),
                version: row.version,
                manifest_sha256: row.manifest_sha256.clone(),
                tee: claims.tee.clone(),
                measurement: claims.measurement.clone(),
                insecure: claims.insecure,
                job,
                model: m_cert,
                audit_seq,
            };
            match blindfold_protocol::receipt::sign_certificate(&c, &st.token_key) {
                Ok(c) => Some(c),
                Err(e) => return internal(e),
            }
        }
    };
    // A model's serving rules travel with its key, encrypted to the attested job: the
    // operator of the service cannot raise its budgets.
    let serve = match Policy::parse(&row.policy) {
        Ok(p) => p.serve,
        Err(e) => return internal(format!("a stored policy does not parse: {e}")),
    };
    let release = Release {
        dataset_id: row.id.clone(),
        key: STANDARD.encode(&key[..]),
        manifest_sha256: row.manifest_sha256.clone(),
        version: row.version,
        certificate,
        serve,
    };
    let plain = match release.to_json() {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    match blindfold_protocol::jwe::encrypt(&pubkey, &plain) {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => internal(e),
    }
}

fn admin_ok(st: &AppState, headers: &HeaderMap) -> bool {
    use sha2::Digest;
    let Some(tok) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let d: [u8; 32] = sha2::Sha256::digest(tok.as_bytes()).into();
    let mut acc = 0u8;
    for (a, b) in d.iter().zip(st.admin_sha256.iter()) {
        acc |= a ^ b;
    }
    std::hint::black_box(acc) == 0
}

/// Body of `POST /admin/v0/datasets`.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// Base64 of the dataset key.
    pub key: String,
    /// Manifest digest (hex).
    pub manifest_sha256: String,
    /// Manifest version.
    pub version: u64,
    /// Policy (TOML).
    pub policy: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

async fn register(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if !admin_ok(&st, &headers) {
        return fail(ErrorCode::Unauthorized, "admin token required");
    }
    let body = match body_bytes(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reg: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return fail(ErrorCode::MalformedRequest, format!("registration: {e}")),
    };
    match st.register(&reg) {
        Ok(policy) => {
            if policy.allows_sample() {
                tracing::warn!("dataset {} is registered with a policy that accepts the sample TEE (no hardware root of trust)", reg.dataset_id);
            }
            axum::Json(json!({"registered": reg.dataset_id, "version": reg.version, "accepts_sample_tee": policy.allows_sample()})).into_response()
        }
        Err(RegisterError::Malformed(m)) => fail(ErrorCode::MalformedRequest, m),
        Err(RegisterError::Conflict(c)) => fail(ErrorCode::Conflict, c.to_string()),
        Err(RegisterError::Internal(e)) => internal(e),
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The registration or its policy is malformed (the owner's input).
    #[error("{0}")]
    Malformed(String),
    /// It would undo a revocation, roll a version back or fork it.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The broker failed.
    #[error(transparent)]
    Internal(#[from] Error),
}

fn lower_hex(s: &str, bytes: usize) -> bool {
    s.len() == 2 * bytes
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl AppState {
    /// Registers a dataset (what `POST /admin/v0/datasets` does once the admin token is
    /// checked): checks the registration and its policy, wraps the key under the master
    /// key, and records it with an audit entry. Returns the policy.
    pub fn register(&self, reg: &Registration) -> std::result::Result<Policy, RegisterError> {
        if !lower_hex(&reg.dataset_id, 16) || !lower_hex(&reg.manifest_sha256, 32) {
            return Err(RegisterError::Malformed(
                "dataset_id must be 32 lowercase hex digits, manifest_sha256 64".into(),
            ));
        }
        let policy =
            Policy::parse(&reg.policy).map_err(|e| RegisterError::Malformed(e.to_string()))?;
        // Decoded straight into zeroizing memory: no heap copy of the key is left.
        let mut key = Zeroizing::new([0u8; 48]);
        let n = STANDARD
            .decode_slice(&reg.key, &mut key[..])
            .ok()
            .filter(|&n| n == 32)
            .ok_or_else(|| RegisterError::Malformed("key must be base64 of 32 bytes".into()))?;
        let (nonce, wrapped_key) = self.wrap_key(&reg.dataset_id, &key[..n])?;
        let row = DatasetRow {
            id: reg.dataset_id.clone(),
            nonce,
            wrapped_key,
            manifest_sha256: reg.manifest_sha256.clone(),
            version: reg.version,
            policy: reg.policy.clone(),
            releases: 0,
            revoked: false,
        };
        let mut entry = Entry::new("register");
        entry.dataset = Some(reg.dataset_id.clone());
        entry.insecure_sample = policy.allows_sample();
        self.db.register(row, entry).map_err(Error::from)??;
        if policy.allows_sample() {
            self.sample_accepted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(policy)
    }
}

async fn revoke(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !admin_ok(&st, &headers) {
        return fail(ErrorCode::Unauthorized, "admin token required");
    }
    let mut entry = Entry::new("revoke");
    entry.dataset = Some(id.clone());
    match st.db.revoke(id.clone(), entry) {
        Ok(true) => axum::Json(json!({"revoked": id})).into_response(),
        Ok(false) => fail(ErrorCode::NotFound, "no such dataset"),
        Err(e) => internal(e),
    }
}

async fn audit_log(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !admin_ok(&st, &headers) {
        return fail(ErrorCode::Unauthorized, "admin token required");
    }
    let r = st
        .db
        .reader()
        .and_then(|c| Ok((crate::audit::entries(&c)?, st.db.verify_audit()?)));
    match r {
        Ok((entries, check)) => axum::Json(json!({
            "entries": entries,
            "chain": match check { Ok(h) => json!({"ok": true, "entries": h.seq, "head": hex::encode(h.hash)}), Err((seq, why)) => json!({"ok": false, "broken_at": seq, "reason": why}) },
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &std::path::Path) -> Arc<AppState> {
        let master = [3u8; 32];
        let db = Db::open(
            &dir.join("broker.db"),
            crate::audit::AuditKey::derive(&master),
        )
        .unwrap();
        AppState::new(db, master, [7u8; 32], [0u8; 32], Settings::default()).unwrap()
    }

    #[test]
    fn only_the_token_header_makes_a_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path());
        let tok = token(&st, "session-1", "sample").unwrap();
        assert_eq!(token_session(&st, &tok).as_deref(), Some("session-1"));
        // The very claims of a valid token, signed by the same key under a release
        // certificate's header: not a token.
        let body = tok.split('.').nth(1).unwrap();
        let head = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({
                "alg": "ES256",
                "typ": blindfold_protocol::receipt::CERTIFICATE_TYP,
            }))
            .unwrap(),
        );
        let input = format!("{head}.{body}");
        let sig: p256::ecdsa::Signature = st.token_key.sign(input.as_bytes());
        let other = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        assert_eq!(token_session(&st, &other), None);
    }
}
