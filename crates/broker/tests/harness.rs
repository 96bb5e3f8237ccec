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
    assert_eq!(b.register(&id(2), "tee = [\"snp\"]\n").0, 200);
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
    b.register(&id(1), "tee = [\"snp\", \"tdx\"]\n");
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
    let c = rusqlite::Connection::open(b.db_path()).unwrap();
    assert!(audit::verify(&c).unwrap().is_ok());
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
    let conn = rusqlite::Connection::open(b.db_path()).unwrap();
    assert!(audit::verify(&conn).unwrap().is_ok());
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
    let head = audit::verify(&c).unwrap().unwrap();
    assert_eq!(head.seq, 7);
    // Edit an entry's reason.
    let orig: String = c
        .query_row("SELECT entry FROM audit WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    let edited = orig.replace("\"granted\"", "\"denied\"");
    assert_ne!(edited, orig);
    c.execute("UPDATE audit SET entry = ?1 WHERE seq = 3", [edited])
        .unwrap();
    assert_eq!(audit::verify(&c).unwrap().unwrap_err().0, 3);
    c.execute("UPDATE audit SET entry = ?1 WHERE seq = 3", [&orig])
        .unwrap();
    assert!(audit::verify(&c).unwrap().is_ok());
    // Delete an entry in the middle.
    c.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    assert_eq!(audit::verify(&c).unwrap().unwrap_err().0, 4);
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
    let c = rusqlite::Connection::open(b2.db_path()).unwrap();
    assert_eq!(audit::verify(&c).unwrap().unwrap().seq, 1 + 2 * 3);
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
    blindfold_broker::verifier::tdx::add_collateral(
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
