//! In-process harness: a broker on loopback over a temporary folder, the trusted zone's
//! client, and named cases for every grant and denial of docs/broker-protocol.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_attest::{fetch_key, Error, EvidenceSource, FetchOptions};
use blindfold_broker::{audit, AppState, Settings};
use blindfold_protocol::errors::ErrorCode;
use serde_json::{json, Value};

struct Broker {
    url: String,
    admin: String,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

const MEAS: &str = "aa0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

fn start(settings: Settings) -> Broker {
    start_in(tempfile::tempdir().unwrap(), settings)
}

fn start_in(dir: tempfile::TempDir, settings: Settings) -> Broker {
    let admin = if dir.path().join("admin.token").exists() {
        std::fs::read_to_string(dir.path().join("admin.token")).unwrap()
    } else {
        blindfold_broker::init(dir.path(), &[]).unwrap()
    };
    let state: Arc<AppState> = blindfold_broker::load(dir.path(), None, settings).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        blindfold_broker::serve(state, listener, None)
            .await
            .unwrap()
    });
    Broker {
        url,
        admin,
        dir,
        _rt: rt,
    }
}

impl Broker {
    fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let c = reqwest::blocking_free::client();
        c.post(&format!("{}{path}", self.url), &self.admin, body)
    }
    fn register(&self, id: &str, policy: &str) -> (u16, Value) {
        self.admin_post("/admin/v0/datasets", json!({"dataset_id": id, "key": STANDARD.encode([7u8; 32]), "manifest_sha256": "ab".repeat(32), "version": 3, "policy": policy}))
    }
    fn fetch(
        &self,
        id: &str,
        job: Option<&str>,
        ev: &EvidenceSource,
    ) -> Result<blindfold_attest::Released, Error> {
        fetch_key(
            &FetchOptions {
                broker: self.url.clone(),
                ca_cert_pem: None,
                job: job.map(str::to_owned),
                model: None,
                receipt_key: None,
                insecure_http: true,
            },
            id,
            ev,
        )
    }
    fn audit(&self) -> Vec<audit::Entry> {
        let c = rusqlite::Connection::open(self.dir.path().join("broker.db")).unwrap();
        audit::entries(&c).unwrap()
    }
    fn db_path(&self) -> PathBuf {
        self.dir.path().join("broker.db")
    }
    fn verify_audit(&self) -> Result<audit::Head, (u64, String)> {
        let c = rusqlite::Connection::open(self.db_path()).unwrap();
        audit::verify(&c, &blindfold_broker::audit_key(self.dir.path()).unwrap()).unwrap()
    }
}

/// A tiny async-free HTTP helper over reqwest for the admin API (tests only).
mod reqwest {
    pub mod blocking_free {
        use serde_json::Value;
        pub struct C(tokio::runtime::Runtime, ::reqwest::Client);
        pub fn client() -> C {
            C(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
                ::reqwest::Client::new(),
            )
        }
        impl C {
            pub fn post(&self, url: &str, token: &str, body: Value) -> (u16, Value) {
                self.0.block_on(async {
                    let r = self
                        .1
                        .post(url)
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
                })
            }
            pub fn raw(
                &self,
                method: &str,
                url: &str,
                headers: &[(&str, &str)],
                body: Vec<u8>,
            ) -> (u16, Value) {
                self.0.block_on(async {
                    let mut rb = self.1.request(method.parse().unwrap(), url).body(body);
                    for (k, v) in headers {
                        rb = rb.header(*k, *v);
                    }
                    let r = rb.send().await.unwrap();
                    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
                })
            }
        }
    }
}

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

fn sample(m: Option<&str>) -> EvidenceSource {
    EvidenceSource::InsecureSample {
        measurement: m.map(str::to_owned),
    }
}

fn denied(r: Result<blindfold_attest::Released, Error>) -> ErrorCode {
    match r {
        Err(Error::Denied { code, .. }) => code,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn grant_sample_when_the_policy_names_it() {
    let b = start(Settings::default());
    let (s, v) = b.register(&id(1), "tee = [\"sample\"]\njobs = [\"cnn\"]\n");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["accepts_sample_tee"], true);
    let r = b.fetch(&id(1), Some("cnn"), &sample(None)).unwrap();
    assert_eq!(&r.key[..], &[7u8; 32]);
    assert_eq!(r.version, 3);
    assert_eq!(r.manifest_sha256, [0xab; 32]);
    let a = b.audit();
    let last = a.last().unwrap();
    assert_eq!(
        (last.event.as_str(), last.outcome.as_str()),
        ("release", "granted")
    );
    assert!(
        last.insecure_sample && last.reason.contains("insecure_sample"),
        "{last:?}"
    );
    // What `broker serve` warns about at start-up: the sample-accepting policies only.
    assert_eq!(b.register(&id(2), "tee = [\"tdx\"]\n").0, 200);
    let reloaded = blindfold_broker::load(b.dir.path(), None, Settings::default()).unwrap();
    assert_eq!(reloaded.datasets_accepting_sample().unwrap(), vec![id(1)]);
}

#[test]
fn denials_by_policy() {
    let b = start(Settings::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (s, v) = b.register(
        &id(1),
        "tee = [\"snp\", \"tdx\"]\n[snp]\nmin_bootloader = 3\nmin_tee = 0\nmin_snp = 8\nmin_microcode = 115\n",
    );
    assert_eq!(s, 200, "{v}");
    b.register(
        &id(2),
        &format!("tee = [\"sample\"]\nmeasurements = [\"{MEAS}\"]\n"),
    );
    b.register(&id(3), "tee = [\"sample\"]\njobs = [\"cnn\"]\n");
    b.register(
        &id(4),
        &format!("tee = [\"sample\"]\nexpires = {}\n", now - 1),
    );
    b.register(&id(5), "tee = [\"sample\"]\nmax_releases = 2\n");
    // sample_not_named: a policy without "sample" refuses sample evidence.
    assert_eq!(
        denied(b.fetch(&id(1), None, &sample(Some(MEAS)))),
        ErrorCode::PolicyDenied
    );
    // wrong_measurement, then the right one.
    assert_eq!(
        denied(b.fetch(&id(2), None, &sample(Some(&"bb".repeat(48))))),
        ErrorCode::PolicyDenied
    );
    assert_eq!(
        denied(b.fetch(&id(2), None, &sample(None))),
        ErrorCode::PolicyDenied
    );
    b.fetch(&id(2), None, &sample(Some(MEAS))).unwrap();
    // wrong_job, missing job.
    assert_eq!(
        denied(b.fetch(&id(3), Some("mlp"), &sample(None))),
        ErrorCode::PolicyDenied
    );
    assert_eq!(
        denied(b.fetch(&id(3), None, &sample(None))),
        ErrorCode::PolicyDenied
    );
    // expired_policy.
    assert_eq!(
        denied(b.fetch(&id(4), None, &sample(None))),
        ErrorCode::PolicyDenied
    );
    // release_limit.
    b.fetch(&id(5), None, &sample(None)).unwrap();
    b.fetch(&id(5), None, &sample(None)).unwrap();
    assert_eq!(
        denied(b.fetch(&id(5), None, &sample(None))),
        ErrorCode::PolicyDenied
    );
    // unknown_dataset.
    assert_eq!(
        denied(b.fetch(&id(9), None, &sample(None))),
        ErrorCode::NotFound
    );
    // revoked: stops releases at once.
    b.register(&id(6), "tee = [\"sample\"]\n");
    b.fetch(&id(6), None, &sample(None)).unwrap();
    assert_eq!(
        b.admin_post(&format!("/admin/v0/datasets/{}/revoke", id(6)), json!({}))
            .0,
        200
    );
    assert_eq!(
        denied(b.fetch(&id(6), None, &sample(None))),
        ErrorCode::Revoked
    );
    // Every decision is in the audit log, with its reason.
    let a = b.audit();
    let denials: Vec<_> = a
        .iter()
        .filter(|e| e.event == "release" && e.outcome == "denied")
        .collect();
    assert_eq!(denials.len(), 9, "{denials:#?}");
    assert!(denials
        .iter()
        .any(|e| e.reason.contains("not allowed by the policy")));
    assert!(denials.iter().any(|e| e.reason.contains("measurement")));
    assert!(denials.iter().any(|e| e.reason.contains("expired")));
    assert!(denials.iter().any(|e| e.reason.contains("limit")));
    assert!(denials.iter().any(|e| e.reason == "revoked"));
    assert!(b.verify_audit().is_ok());
}

/// Revocation is final: registering the dataset again (exit 0 before) is refused, and
/// the key stays withheld. An older version, or the same version with another manifest,
/// is refused too; the same registration again (a policy change) is accepted.
#[test]
fn registration_cannot_undo_a_revocation_or_fork_a_version() {
    let b = start(Settings::default());
    let reg = |id: &str, version: u64, digest: &str| {
        b.admin_post("/admin/v0/datasets", json!({"dataset_id": id, "key": STANDARD.encode([7u8; 32]), "manifest_sha256": digest.repeat(32), "version": version, "policy": "tee = [\"sample\"]\n"}))
    };
    assert_eq!(reg(&id(1), 3, "ab").0, 200);
    assert_eq!(reg(&id(1), 3, "ab").0, 200, "the same version and manifest");
    let (s, v) = reg(&id(1), 3, "cd");
    assert_eq!((s, code(&v).as_str()), (409, "Conflict"), "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("another manifest"),
        "{v}"
    );
    let (s, v) = reg(&id(1), 2, "ab");
    assert_eq!((s, code(&v).as_str()), (409, "Conflict"), "{v}");
    assert_eq!(reg(&id(1), 4, "ef").0, 200, "a newer version");
    b.fetch(&id(1), None, &sample(None)).unwrap();
    let (s, _) = b.admin_post(&format!("/admin/v0/datasets/{}/revoke", id(1)), json!({}));
    assert_eq!(s, 200);
    for version in [4, 5] {
        let (s, v) = reg(&id(1), version, "ef");
        assert_eq!((s, code(&v).as_str()), (409, "Conflict"), "{v}");
        assert!(v["detail"].as_str().unwrap().contains("revoked"), "{v}");
    }
    assert_eq!(
        denied(b.fetch(&id(1), None, &sample(None))),
        ErrorCode::Revoked
    );
    let a = b.audit();
    assert_eq!(
        a.iter()
            .filter(|e| e.event == "register" && e.outcome == "denied")
            .count(),
        4,
        "{a:#?}"
    );
    assert!(b.verify_audit().is_ok());
}

/// `sample` evidence costs nothing to make: until a registered policy accepts it, `auth`
/// refuses it, so nobody can fill the attested-session table without TEE hardware. One
/// address holds a bounded number of sessions that have not attested.
#[test]
fn sessions_cost_something_to_hold() {
    let b = start(Settings {
        max_pending_per_client: 3,
        ..Settings::default()
    });
    let c = reqwest::blocking_free::client();
    let sample = json!({"version": "0.4.0", "tee": "sample", "extra-params": {}});
    let (s, v, ck) = auth(&b, &c, sample.clone());
    assert_eq!((s, code(&v).as_str()), (400, "UnsupportedTee"), "{v}");
    assert!(ck.is_none());
    b.register(&id(1), "tee = [\"tdx\"]\n");
    assert_eq!(
        auth(&b, &c, sample.clone()).0,
        400,
        "a TDX policy does not open sample"
    );
    b.register(&id(2), "tee = [\"sample\"]\n");
    for _ in 0..3 {
        assert_eq!(auth(&b, &c, sample.clone()).0, 200);
    }
    let (s, v, _) = auth(&b, &c, sample.clone());
    assert_eq!((s, code(&v).as_str()), (429, "TooManyRequests"), "{v}");
    // A broker restarted on the same folder remembers that sample is accepted.
    let reloaded = blindfold_broker::load(b.dir.path(), None, Settings::default()).unwrap();
    assert_eq!(reloaded.datasets_accepting_sample().unwrap(), vec![id(2)]);
}

/// A database whose audit log an older blindfold chained with plain SHA-256 is not
/// appended to: such a log is not tamper-evident, and mixing chains would hide that.
#[test]
fn a_broker_refuses_an_unkeyed_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    blindfold_broker::init(dir.path(), &[]).unwrap();
    let c = rusqlite::Connection::open(dir.path().join("broker.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE audit(seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL);",
    )
    .unwrap();
    let mut e = audit::Entry::new("register").outcome("granted", "registered");
    e.seq = 1;
    let canon = blindfold_protocol::canonical::jcs(&serde_json::to_value(&e).unwrap()).unwrap();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, [0u8; 32]);
    sha2::Digest::update(&mut h, canon.as_bytes());
    let hash = sha2::Digest::finalize(h).to_vec();
    c.execute(
        "INSERT INTO audit(seq, entry, prev, hash) VALUES (1, ?1, ?2, ?3)",
        rusqlite::params![serde_json::to_string(&e).unwrap(), vec![0u8; 32], hash],
    )
    .unwrap();
    drop(c);
    let err = blindfold_broker::load(dir.path(), None, Settings::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("plain SHA-256"), "{err}");
}

/// What a client chooses is bounded before it is kept: a job name in the session, a
/// reason quoting a malformed body in the audit log.
#[test]
fn client_chosen_strings_are_bounded() {
    let b = start(Settings::default());
    b.register(&id(1), "tee = [\"sample\"]\n");
    let c = reqwest::blocking_free::client();
    for job in [json!("j".repeat(512 << 10)), json!("a b"), json!(5)] {
        let (s, v, ck) = auth(
            &b,
            &c,
            json!({"version": "0.4.0", "tee": "sample", "extra-params": {"job": job}}),
        );
        assert_eq!((s, code(&v).as_str()), (400, "MalformedRequest"));
        assert!(ck.is_none());
        assert!(v["detail"].as_str().unwrap().len() < 1000);
    }
    let (s, _, ck) = auth(
        &b,
        &c,
        json!({"version": "0.4.0", "tee": "sample", "extra-params": {"job": "j".repeat(64)}}),
    );
    assert_eq!(s, 200);
    // A malformed attestation that quotes 512 KiB of the client's text in its error.
    let junk = json!({"tee-evidence": "x".repeat(512 << 10)});
    let (s, v) = c.raw(
        "POST",
        &format!("{}/kbs/v0/attest", b.url),
        &[
            ("cookie", ck.as_deref().unwrap()),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&junk).unwrap(),
    );
    assert_eq!((s, code(&v).as_str()), (400, "MalformedRequest"));
    let conn = rusqlite::Connection::open(b.db_path()).unwrap();
    let longest: i64 = conn
        .query_row("SELECT max(length(entry)) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(longest < 1024, "an audit row of {longest} bytes");
    let last = b.audit().pop().unwrap();
    assert_eq!(last.job.as_deref(), Some("j".repeat(64).as_str()));
}

fn auth(b: &Broker, c: &reqwest::blocking_free::C, body: Value) -> (u16, Value, Option<String>) {
    // Reads the cookie through a raw request.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = c;
    rt.block_on(async {
        let r = ::reqwest::Client::new()
            .post(format!("{}/kbs/v0/auth", b.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        (
            r.status().as_u16(),
            r.json().await.unwrap_or(Value::Null),
            cookie,
        )
    })
}

fn attestation(nonce: &str, kp: &blindfold_protocol::jwe::TeeKeyPair, report_data: &[u8]) -> Value {
    json!({
        "init-data": null,
        "runtime-data": {"nonce": nonce, "tee-pubkey": kp.public()},
        "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64::engine::general_purpose::STANDARD_NO_PAD.encode(report_data)}, "additional_evidence": ""},
    })
}

fn code(v: &Value) -> String {
    v["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn protocol_attacks_and_bad_input() {
    let b = start(Settings {
        session_ttl: Duration::from_secs(2),
        ..Settings::default()
    });
    b.register(&id(1), "tee = [\"sample\"]\n");
    let c = reqwest::blocking_free::client();
    let good = json!({"version": "0.4.0", "tee": "sample", "extra-params": {}});
    // wrong_protocol_version, unknown_tee, malformed.
    let (s, v, _) = auth(
        &b,
        &c,
        json!({"version": "0.3.0", "tee": "sample", "extra-params": {}}),
    );
    assert_eq!((s, code(&v).as_str()), (400, "ProtocolVersion"));
    let (s, v, _) = auth(
        &b,
        &c,
        json!({"version": "0.4.0", "tee": "cca", "extra-params": {}}),
    );
    assert_eq!((s, code(&v).as_str()), (400, "UnsupportedTee"));
    let (s, v) = c.raw(
        "POST",
        &format!("{}/kbs/v0/auth", b.url),
        &[("content-type", "application/json")],
        b"{not json".to_vec(),
    );
    assert_eq!((s, code(&v).as_str()), (400, "MalformedRequest"));
    // oversized body.
    let (s, v) = c.raw(
        "POST",
        &format!("{}/kbs/v0/auth", b.url),
        &[],
        vec![b' '; (1 << 20) + 1],
    );
    assert_eq!((s, code(&v).as_str()), (413, "PayloadTooLarge"));
    // no_session: resource without cookie (what a stock client sends first).
    let (s, v) = c.raw(
        "GET",
        &format!("{}/kbs/v0/resource/blindfold/dataset/{}", b.url, id(1)),
        &[],
        vec![],
    );
    assert_eq!((s, code(&v).as_str()), (401, "TokenNotFound"));
    let (s, _) = c.raw(
        "GET",
        &format!("{}/kbs/v0/resource/other/dataset/{}", b.url, id(1)),
        &[],
        vec![],
    );
    assert_eq!(s, 404);

    let kp = blindfold_protocol::jwe::TeeKeyPair::generate().unwrap();
    let attest = |cookie: &str, body: &Value| {
        c.raw(
            "POST",
            &format!("{}/kbs/v0/attest", b.url),
            &[("cookie", cookie), ("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
    };
    // evidence_for_another_nonce: report data binds another nonce.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    let nonce = ch["nonce"].as_str().unwrap().to_owned();
    let other = blindfold_protocol::report_data_binding("b3RoZXI=", &kp.public(), "").unwrap();
    let (s, v) = attest(ck.as_deref().unwrap(), &attestation(&nonce, &kp, &other));
    assert_eq!((s, code(&v).as_str()), (401, "ReportDataMismatch"));
    // replayed_nonce: the same session cannot attest again, even with good evidence.
    let right = blindfold_protocol::report_data_binding(&nonce, &kp.public(), "").unwrap();
    let (s, v) = attest(ck.as_deref().unwrap(), &attestation(&nonce, &kp, &right));
    assert_eq!((s, code(&v).as_str()), (401, "NonceReplayed"));
    // evidence_for_another_key: binding over key A, runtime data names key B.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    let nonce = ch["nonce"].as_str().unwrap().to_owned();
    let kp2 = blindfold_protocol::jwe::TeeKeyPair::generate().unwrap();
    let bind_a = blindfold_protocol::report_data_binding(&nonce, &kp.public(), "").unwrap();
    let (s, v) = attest(ck.as_deref().unwrap(), &attestation(&nonce, &kp2, &bind_a));
    assert_eq!((s, code(&v).as_str()), (401, "ReportDataMismatch"));
    // report_data_wrong_length: 47 bytes is a rejection, never padded.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    let nonce = ch["nonce"].as_str().unwrap().to_owned();
    let bind = blindfold_protocol::report_data_binding(&nonce, &kp.public(), "").unwrap();
    let (s, v) = attest(
        ck.as_deref().unwrap(),
        &attestation(&nonce, &kp, &bind[..47]),
    );
    assert_eq!((s, code(&v).as_str()), (401, "ReportDataMismatch"));
    // runtime data naming another nonce than the session's.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    let _ = ch;
    let (s, v) = attest(
        ck.as_deref().unwrap(),
        &attestation("c29tZXRoaW5n", &kp, &bind),
    );
    assert_eq!((s, code(&v).as_str()), (401, "ReportDataMismatch"));
    // RSA TEE key.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    let mut a = attestation(ch["nonce"].as_str().unwrap(), &kp, &bind);
    a["runtime-data"]["tee-pubkey"] =
        json!({"kty": "RSA", "alg": "RSA-OAEP-256", "n": "AQAB", "e": "AQAB"});
    let (s, v) = attest(ck.as_deref().unwrap(), &a);
    assert_eq!((s, code(&v).as_str()), (400, "UnsupportedTeeKey"));
    // expired_session.
    let (_, ch, ck) = auth(&b, &c, good.clone());
    std::thread::sleep(Duration::from_millis(2100));
    let nonce = ch["nonce"].as_str().unwrap().to_owned();
    let bind = blindfold_protocol::report_data_binding(&nonce, &kp.public(), "").unwrap();
    let (s, v) = attest(ck.as_deref().unwrap(), &attestation(&nonce, &kp, &bind));
    assert_eq!((s, code(&v).as_str()), (401, "SessionExpired"));
    // Admin API without the token.
    let (s, v) = c.raw(
        "POST",
        &format!("{}/admin/v0/datasets", b.url),
        &[],
        b"{}".to_vec(),
    );
    assert_eq!((s, code(&v).as_str()), (401, "Unauthorized"));
    let (s, v) = c.raw(
        "POST",
        &format!("{}/admin/v0/datasets", b.url),
        &[("authorization", "Bearer nope")],
        b"{}".to_vec(),
    );
    assert_eq!((s, code(&v).as_str()), (401, "Unauthorized"));
    // A bad policy is refused at registration.
    let (s, v) = b.register(&id(2), "tee = [\"cca\"]\n");
    assert_eq!((s, code(&v).as_str()), (400, "MalformedRequest"));
    // Every attest decision was audited; the chain verifies.
    let a = b.audit();
    assert_eq!(
        a.iter()
            .filter(|e| e.event == "attest" && e.outcome == "denied")
            .count(),
        5,
        "{a:#?}"
    );
    assert!(b.verify_audit().is_ok());
}

#[test]
fn rate_limit_answers_429() {
    let b = start(Settings {
        rate_limit: 5.0,
        ..Settings::default()
    });
    let c = reqwest::blocking_free::client();
    let codes: Vec<u16> = (0..30)
        .map(|_| {
            c.raw(
                "GET",
                &format!("{}/kbs/v0/resource/x/y/z", b.url),
                &[],
                vec![],
            )
            .0
        })
        .collect();
    assert!(codes.contains(&429) && codes.contains(&404), "{codes:?}");
}

#[test]
fn audit_chain_detects_edits_and_deletions() {
    let b = start(Settings::default());
    b.register(&id(1), "tee = [\"sample\"]\n");
    for _ in 0..3 {
        b.fetch(&id(1), None, &sample(None)).unwrap();
    }
    let path = b.db_path();
    let c = rusqlite::Connection::open(&path).unwrap();
    let head = b.verify_audit().unwrap();
    assert_eq!(head.seq, 7);
    // Edit an entry's reason.
    let orig: String = c
        .query_row("SELECT entry FROM audit WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    let edited = orig.replace("\"granted\"", "\"denied\"");
    assert_ne!(edited, orig);
    c.execute("UPDATE audit SET entry = ?1 WHERE seq = 3", [edited])
        .unwrap();
    assert_eq!(b.verify_audit().unwrap_err().0, 3);
    c.execute("UPDATE audit SET entry = ?1 WHERE seq = 3", [&orig])
        .unwrap();
    assert!(b.verify_audit().is_ok());
    // Delete an entry in the middle.
    c.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    assert_eq!(b.verify_audit().unwrap_err().0, 4);
}

#[test]
fn state_survives_a_restart() {
    let b = start(Settings::default());
    b.register(&id(1), "tee = [\"sample\"]\nmax_releases = 2\n");
    b.fetch(&id(1), None, &sample(None)).unwrap();
    let dir = b.dir;
    drop(b._rt);
    let b2 = start_in(dir, Settings::default());
    b2.fetch(&id(1), None, &sample(None)).unwrap();
    assert_eq!(
        denied(b2.fetch(&id(1), None, &sample(None))),
        ErrorCode::PolicyDenied,
        "the release count survived"
    );
    assert_eq!(b2.verify_audit().unwrap().seq, 1 + 2 * 3);
}

/// A TDX quote as Trustee's stock client sends it (`{cc_eventlog, quote}`, no
/// collateral) reaches the broker's collateral store through the served endpoints: with
/// an empty store the broker says which platform's collateral it lacks; once the owner
/// added it (as `broker tdx-collateral` does), the quote is checked with it, and today
/// that captured collateral has expired. Both are audited denials.
#[test]
fn tdx_quote_without_collateral_is_checked_with_the_brokers_store() {
    let b = start(Settings::default());
    b.register(&id(1), "tee = [\"tdx\"]\n");
    let c = reqwest::blocking_free::client();
    let kp = blindfold_protocol::jwe::TeeKeyPair::generate().unwrap();
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/evidence");
    let quote = std::fs::read(testdata.join("tdx_quote")).unwrap();
    let try_attest = || {
        let (_, ch, ck) = auth(
            &b,
            &c,
            json!({"version": "0.4.0", "tee": "tdx", "extra-params": {}}),
        );
        let mut a = attestation(ch["nonce"].as_str().unwrap(), &kp, &[]);
        a["tee-evidence"]["primary_evidence"] =
            json!({"cc_eventlog": null, "quote": STANDARD.encode(&quote)});
        let (s, v) = c.raw(
            "POST",
            &format!("{}/kbs/v0/attest", b.url),
            &[
                ("cookie", ck.as_deref().unwrap()),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&a).unwrap(),
        );
        assert_eq!((s, code(&v).as_str()), (401, "EvidenceRejected"), "{v}");
        v["detail"].as_str().unwrap_or_default().to_owned()
    };
    let why = try_attest();
    assert!(
        why.contains("holds none for FMSPC B0C06F000000") && why.contains("broker tdx-collateral"),
        "{why}"
    );
    blindfold_broker::add_tdx_collateral(
        &blindfold_broker::BrokerDir(b.dir.path().to_owned()).tdx_collateral(),
        &std::fs::read(testdata.join("tdx_quote_collateral.json")).unwrap(),
    )
    .unwrap();
    let why = try_attest();
    assert!(
        why.starts_with("quote:") && !why.contains("holds none"),
        "{why}"
    );
    let a = b.audit();
    assert_eq!(
        a.iter()
            .filter(|e| e.event == "attest"
                && e.outcome == "denied"
                && e.tee.as_deref() == Some("tdx"))
            .count(),
        2,
        "{a:#?}"
    );
}

#[test]
fn a_receipt_key_is_certified_on_release_and_the_certificate_opens_nothing() {
    let b = start(Settings::default());
    assert_eq!(b.register(&id(1), "tee = [\"sample\"]\n").0, 200);
    let key = blindfold_attest::ReceiptKey::generate().unwrap();
    let opts = FetchOptions {
        broker: b.url.clone(),
        job: Some("cnn".into()),
        receipt_key: Some(key.public_hex()),
        insecure_http: true,
        ..FetchOptions::default()
    };
    let r = fetch_key(&opts, &id(1), &sample(Some(MEAS))).unwrap();
    let cert = r
        .certificate
        .expect("a certificate for a job that sent a receipt key");
    // Signed by this broker's key, naming this release and its audit entry.
    let jwk = blindfold_broker::public_key_jwk(b.dir.path()).unwrap();
    let broker_key = blindfold_protocol::receipt::broker_key_from_jwk(&jwk).unwrap();
    let claims = blindfold_protocol::receipt::verify_certificate(&cert.jws, &broker_key).unwrap();
    assert_eq!(claims, cert.claims);
    assert_eq!(claims.receipt_key, key.public_hex());
    assert_eq!(
        (claims.dataset_id.as_str(), claims.version),
        (id(1).as_str(), 3)
    );
    assert_eq!(claims.manifest_sha256, "ab".repeat(32));
    assert_eq!(claims.measurement.as_deref(), Some(MEAS));
    assert!(claims.insecure && claims.tee == "sample");
    let entry = b
        .audit()
        .into_iter()
        .find(|e| e.seq == claims.audit_seq)
        .unwrap();
    assert_eq!(
        (entry.event.as_str(), entry.outcome.as_str()),
        ("release", "granted")
    );
    assert_eq!(
        entry.receipt_key.as_deref(),
        Some(key.public_hex().as_str())
    );
    // A job that sends no receipt key gets no certificate (what a stock client sees).
    let plain = b.fetch(&id(1), None, &sample(None)).unwrap();
    assert!(plain.certificate.is_none());
    // The certificate is signed with the key that signs attestation tokens; it is no
    // bearer token for the resource endpoint.
    let c = reqwest::blocking_free::client();
    let auth = format!("Bearer {}", cert.jws);
    let (s, v) = c.raw(
        "GET",
        &format!("{}{}", b.url, blindfold_protocol::resource_path(&id(1))),
        &[("authorization", auth.as_str())],
        vec![],
    );
    assert_eq!(s, 401, "{v}");
    // A receipt key that is not a P-256 point is refused before any session exists.
    for bad in [
        "04".repeat(65),
        "zz".into(),
        key.public_hex().to_uppercase(),
    ] {
        let (s, v, _) = auth_req(
            &b,
            json!({"version": "0.4.0", "tee": "sample", "extra-params": {"receipt-key": bad}}),
        );
        assert_eq!((s, code(&v).as_str()), (400, "MalformedRequest"), "{v}");
    }
}

fn auth_req(b: &Broker, body: Value) -> (u16, Value, Option<String>) {
    auth(b, &reqwest::blocking_free::client(), body)
}

#[test]
fn usage_reports_need_the_certified_key_and_come_in_order() {
    use blindfold_protocol::serve::{UsageReport, USAGE_PATH};
    let b = start(Settings::default());
    assert_eq!(b.register(&id(2), "tee = [\"sample\"]\n[serve]\n").0, 200);
    let key = blindfold_attest::ReceiptKey::generate().unwrap();
    let opts = FetchOptions {
        broker: b.url.clone(),
        job: Some("serve".into()),
        receipt_key: Some(key.public_hex()),
        insecure_http: true,
        ..FetchOptions::default()
    };
    let r = fetch_key(&opts, &id(2), &sample(Some(MEAS))).unwrap();
    let cert = r.certificate.unwrap();
    let seq = cert.claims.audit_seq;
    let report = |n: u64, alice: u64| UsageReport {
        model_id: id(2),
        release_seq: seq,
        report: n,
        total: alice,
        clients: [("alice".to_owned(), alice)].into_iter().collect(),
    };
    let c = reqwest::blocking_free::client();
    let post = |signed: &blindfold_protocol::serve::SignedUsage| {
        c.raw(
            "POST",
            &format!("{}{USAGE_PATH}", b.url),
            &[("content-type", "application/json")],
            serde_json::to_vec(signed).unwrap(),
        )
    };
    let first = key.sign_usage(&report(1, 5), &cert).unwrap();
    let (s, v) = post(&first);
    assert_eq!(s, 200, "{v}");
    // The same report again, or an older one after a newer: refused, not recorded.
    assert_eq!(code(&post(&first).1), "Conflict");
    assert_eq!(post(&key.sign_usage(&report(3, 9), &cert).unwrap()).0, 200);
    assert_eq!(
        code(&post(&key.sign_usage(&report(2, 7), &cert).unwrap()).1),
        "Conflict"
    );
    // Another key with that certificate: refused, as every unauthenticated report is,
    // with one answer that says nothing of which releases exist.
    let other = blindfold_attest::ReceiptKey::generate().unwrap();
    let (s, v) = post(&other.sign_usage(&report(4, 10), &cert).unwrap());
    assert_eq!((s, code(&v).as_str()), (401, "Unauthorized"), "{v}");
    // A report for another model, or another release, than the certificate names.
    let mut wrong = report(4, 10);
    wrong.model_id = id(3);
    assert_eq!(post(&key.sign_usage(&wrong, &cert).unwrap()).0, 401);
    let mut wrong = report(4, 10);
    wrong.release_seq = 1;
    assert_eq!(post(&key.sign_usage(&wrong, &cert).unwrap()).0, 401);
    // A certificate edited or not this broker's: refused.
    let mut forged = key.sign_usage(&report(4, 10), &cert).unwrap();
    forged.certificate.push('A');
    assert_eq!(post(&forged).0, 401);
    // An edited payload: unsigned.
    let mut edited = key.sign_usage(&report(4, 10), &cert).unwrap();
    edited.payload = STANDARD.encode(serde_json::to_vec(&report(4, 1)).unwrap());
    assert_eq!(post(&edited).0, 401);
    // Signed, but a total that is not the sum of the counts: malformed.
    let mut wrong = report(4, 10);
    wrong.total = 11;
    assert_eq!(post(&key.sign_usage(&wrong, &cert).unwrap()).0, 400);
    // Two reports recorded, in the chain, counts only.
    let usage: Vec<_> = b
        .audit()
        .into_iter()
        .filter(|e| e.event == "usage")
        .collect();
    assert_eq!(usage.len(), 2);
    assert_eq!(usage[1].usage.as_ref().unwrap().total, 9);
    assert_eq!(usage[1].measurement.as_deref(), Some(MEAS));
    assert!(b.verify_audit().is_ok());
    // A host that put its own key into a job's request gets a release entry naming it,
    // but not the certificate (encrypted to the attested job): its reports are refused.
    let host_key = blindfold_attest::ReceiptKey::generate().unwrap();
    let host_release = fetch_key(
        &FetchOptions {
            receipt_key: Some(host_key.public_hex()),
            ..opts.clone()
        },
        &id(2),
        &sample(Some(MEAS)),
    )
    .unwrap();
    let host_seq = host_release.certificate.as_ref().unwrap().claims.audit_seq;
    let mut r = report(1, 1);
    r.release_seq = host_seq;
    // With the certificate of another release (the only one it could have seen).
    let (s, v) = post(&host_key.sign_usage(&r, &cert).unwrap());
    assert_eq!((s, code(&v).as_str()), (401, "Unauthorized"), "{v}");
    // A dataset (no [serve] table) does not take usage reports, even from a job with a
    // certified key.
    assert_eq!(b.register(&id(4), "tee = [\"sample\"]\n").0, 200);
    let ds = fetch_key(&opts, &id(4), &sample(Some(MEAS))).unwrap();
    let ds_cert = ds.certificate.unwrap();
    let ds_report = UsageReport {
        model_id: id(4),
        release_seq: ds_cert.claims.audit_seq,
        report: 1,
        total: 0,
        clients: Default::default(),
    };
    let (s, v) = post(&key.sign_usage(&ds_report, &ds_cert).unwrap());
    assert_eq!((s, code(&v).as_str()), (401, "PolicyDenied"), "{v}");
}
