//! `blindfold predict`: a client of a prediction service that checks the service's
//! evidence against the caller's expectations before it sends any input, then talks
//! only to the TLS key that evidence binds (docs/serving.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_job::{Failure, Fault};
use blindfold_protocol::serve::{service_binding, spki_sha256, ServiceInfo, MAX_BATCH};
use blindfold_verify::expect::Expectation;
use blindfold_zone::data::{Dataset, Splits};
use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};

#[derive(Args)]
pub struct PredictArgs {
    /// The service: https://HOST:PORT (as `blindfold serve` printed it).
    #[arg(long, value_name = "URL")]
    service: String,
    /// What the service must prove before it gets any input: a TOML file with `model`
    /// (the sealed model's id), optionally `version` and `receipt_sha256`, and the TEE
    /// rules of a broker policy (`tee`, `measurements`, `[snp]`, `[tdx]`). A service
    /// that fails any of them gets nothing, and the error names the field.
    #[arg(long, value_name = "POLICY")]
    expect: PathBuf,
    /// Records to predict: CSV, .npy or IDX (as `seal` reads them).
    input: PathBuf,
    /// Labels file for a single IDX images file or .npy (then the output shows them).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Split of INPUT (for a folder of IDX files: `train` or `test`).
    #[arg(long, value_name = "NAME", default_value = "data")]
    split: String,
    /// Predict only the first N records.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Records per request (at most 256).
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: usize,
    /// A file holding your API key (else $BLINDFOLD_API_KEY).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Print one JSON object per record instead of a table.
    #[arg(long)]
    json: bool,
}

/// The TLS keys this client saw, and the one it talks to once the evidence checks out.
#[derive(Debug, Default)]
struct Pin {
    seen: Option<[u8; 32]>,
    pinned: Option<[u8; 32]>,
}

/// Accepts any certificate until the service's key is pinned (only the nonce is sent
/// before), then only certificates with that public key. Handshake signatures are
/// always checked, so a peer must hold the private key of the certificate it shows.
#[derive(Debug)]
struct PinningVerifier {
    pin: Arc<Mutex<Pin>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = spki_sha256(end_entity).map_err(rustls::Error::General)?;
        let mut p = self.pin.lock().expect("pin lock");
        match (p.pinned, p.seen) {
            (Some(k), _) if k == spki => Ok(ServerCertVerified::assertion()),
            (Some(_), _) => Err(rustls::Error::General(
                "the service's TLS key is not the one its evidence binds".into(),
            )),
            // Before the pin, one handshake only: the one that carries the evidence. A
            // second (a redirect, a new connection) could put another key in `seen`.
            (None, Some(_)) => Err(rustls::Error::General(
                "a second TLS connection before the service's evidence was checked".into(),
            )),
            (None, None) => {
                p.seen = Some(spki);
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A service whose evidence checked out, reached only through its attested TLS key.
pub struct Attested {
    client: reqwest::Client,
    base: String,
    /// What the service said about itself (covered by its evidence).
    pub info: ServiceInfo,
    /// The verified claims.
    pub claims: blindfold_verify::Claims,
}

fn io(url: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Fault::Io, format!("{url}: {e}"))
}

/// An HTTP client whose TLS keys are checked by `pin`.
fn client_with(pin: Arc<Mutex<Pin>>) -> Result<reqwest::Client, Failure> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = PinningVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(Failure::bug)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // A resumed session skips the certificate check: every connection shows its key.
    tls.resumption = rustls::client::Resumption::disabled();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        // A redirect would be a second connection, to a host of the server's choice.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(Failure::bug)
}

/// An HTTP client that reaches only the TLS key `spki_sha256` (a service whose key is
/// known otherwise: the benchmark's plaintext baseline).
pub fn pinned_client(spki_sha256: [u8; 32]) -> Result<reqwest::Client, Failure> {
    client_with(Arc::new(Mutex::new(Pin {
        seen: None,
        pinned: Some(spki_sha256),
    })))
}

/// Checks the service at `base` against `expect` and pins its TLS key.
pub async fn attest(base: &str, expect: &Expectation) -> Result<Attested, Failure> {
    let base = base.trim_end_matches('/').to_owned();
    if !base.starts_with("https://") {
        return Err(Failure::bad_input(format!(
            "--service {base}: an https:// URL (the evidence binds the service's TLS key)"
        )));
    }
    // A service makes one report at a time and answers `503 busy` to the others: try
    // again a few times, each time on a new client (one connection before the check).
    let mut attempt = 0u32;
    let (client, pin, nonce, body) = loop {
        let pin = Arc::new(Mutex::new(Pin::default()));
        let client = client_with(pin.clone())?;
        let mut nonce = [0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Failure::bug("no randomness"))?;
        let url = format!("{base}/v1/attestation?nonce={}", hex::encode(nonce));
        let r = client
            .get(&url)
            .send()
            .await
            .map_err(|e| io(&base, error_chain(&e)))?;
        let status = r.status();
        let body: Value = read_json(r).await.map_err(|e| io(&base, e))?;
        if status.as_u16() == 503 && body["error"] == "busy" && attempt < 8 {
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5))).await;
            continue;
        }
        if !status.is_success() {
            return Err(Failure::new(
                Fault::Denied,
                format!(
                    "{base}: the service gave no evidence (HTTP {status}): {}",
                    body["detail"]
                ),
            ));
        }
        break (client, pin, nonce, body);
    };
    let seen = pin
        .lock()
        .expect("pin lock")
        .seen
        .ok_or_else(|| Failure::bug("no TLS key was seen"))?;
    let (Some(tee), Some(info_json), Some(evidence)) = (
        body["tee"].as_str(),
        body["info"].as_str(),
        body.get("evidence"),
    ) else {
        return Err(Failure::new(
            Fault::Integrity,
            format!("{base}: the attestation answer lacks tee, info or evidence"),
        ));
    };
    let verifier = blindfold_verify::for_tee(tee).map_err(|e| {
        Failure::new(
            Fault::Denied,
            format!("tee: the service attests with {tee:?}: {e}"),
        )
    })?;
    let binding = service_binding(info_json.as_bytes(), &seen, &nonce);
    let claims = verifier.verify(evidence, &binding).map_err(|e| match e {
        blindfold_verify::Rejection::ReportData(_) => Failure::new(
            Fault::Integrity,
            "report_data: the evidence does not bind this connection's TLS key, this nonce and the service's description (a host in the middle, or a replay)",
        ),
        other => Failure::new(Fault::Integrity, format!("evidence: {other}")),
    })?;
    let info: ServiceInfo = serde_json::from_str(info_json)
        .map_err(|e| Failure::new(Fault::Integrity, format!("info: {e}")))?;
    expect.check(&claims, &info).map_err(|m| {
        Failure::new(
            Fault::Denied,
            format!("the service does not meet the expectation: {m}"),
        )
    })?;
    // Everything from here goes through a new client that accepts only the attested
    // key: a new connection pool, no session to resume, nothing left of the first one.
    drop(client);
    Ok(Attested {
        client: pinned_client(seen)?,
        base,
        info,
        claims,
    })
}

/// Largest answer read from a service (a hostile one could send without end).
const MAX_ANSWER: usize = 16 << 20;

/// A JSON body of at most [`MAX_ANSWER`] bytes.
async fn read_json(mut r: reqwest::Response) -> Result<Value, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if buf.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("an answer over {MAX_ANSWER} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// A reqwest error with its causes (a TLS refusal says why).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Attested {
    /// The HTTP client, which reaches only the attested TLS key.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Predictions for `inputs` (features as the model saw them), as the service sent
    /// them.
    pub async fn predict(&self, key: &str, inputs: &[&[f32]]) -> Result<Value, Failure> {
        let r = self
            .client
            .post(format!("{}/v1/predict", self.base))
            .bearer_auth(key)
            .json(&json!({ "inputs": inputs }))
            .send()
            .await
            .map_err(|e| io(&self.base, error_chain(&e)))?;
        let status = r.status();
        let body: Value = read_json(r).await.map_err(|e| io(&self.base, e))?;
        if status.is_success() {
            return Ok(body);
        }
        let fault = match status.as_u16() {
            401 | 403 | 429 => Fault::Denied,
            400..=499 => Fault::BadInput,
            _ => Fault::Io,
        };
        Err(Failure::new(
            fault,
            format!(
                "{}: HTTP {status}: {}: {}",
                self.base,
                body["error"].as_str().unwrap_or("?"),
                body["detail"].as_str().unwrap_or("")
            ),
        ))
    }
}

fn api_key(a: &PredictArgs) -> Result<zeroize::Zeroizing<String>, Failure> {
    let key = match &a.api_key_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Failure::bad_input(format!("{}: {e}", p.display())))?,
        None => std::env::var("BLINDFOLD_API_KEY").map_err(|_| {
            Failure::bad_input("give your API key with --api-key-file FILE or $BLINDFOLD_API_KEY")
        })?,
    };
    Ok(zeroize::Zeroizing::new(key.trim().to_owned()))
}

/// Runs `blindfold predict`.
pub fn run(a: &PredictArgs) -> Result<(), Failure> {
    if a.batch == 0 || a.batch > MAX_BATCH {
        return Err(Failure::bad_input(format!("--batch: 1 to {MAX_BATCH}")));
    }
    let text = std::fs::read_to_string(&a.expect)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", a.expect.display())))?;
    let expect = Expectation::parse(&text)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", a.expect.display())))?;
    let key = api_key(a)?;
    let imp = import(
        &a.input,
        Format::Auto,
        &ImportOptions {
            labels: a.labels.clone(),
            split: Some(a.split.clone()).filter(|_| !a.input.is_dir()),
            ..ImportOptions::default()
        },
    )?;
    let data = Dataset::from_import(
        imp,
        &Splits {
            train: a.split.clone(),
            test: String::new(),
        },
        &blindfold_dataset::NoProgress,
    )?;
    let count = a.limit.unwrap_or(usize::MAX).min(data.train.count);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Fault::Io, e.to_string()))?;
    rt.block_on(async {
        let svc = attest(&a.service, &expect).await?;
        if data.input_shape() != svc.info.input {
            return Err(Failure::bad_input(format!(
                "the model takes {:?} inputs; {} has {:?}",
                svc.info.input,
                a.input.display(),
                data.input_shape()
            )));
        }
        if svc.claims.insecure {
            eprintln!(
                "warning: the service attests with the sample TEE: its evidence proves nothing"
            );
        }
        eprintln!(
            "verified {}: TLS key bound to its evidence; model {} v{} ({}); TEE {}{}",
            a.service,
            svc.info.model_id,
            svc.info.version,
            svc.info.model_name,
            svc.claims.tee,
            svc.claims
                .measurement
                .as_deref()
                .map(|m| format!(", measurement {m}"))
                .unwrap_or_default()
        );
        let width: usize = svc.info.input.iter().product();
        let mut start = 0;
        if !a.json {
            println!("record\tpredicted");
        }
        while start < count {
            let n = a.batch.min(count - start);
            let x = data.train.features(&data.schema, start, n);
            let rows: Vec<&[f32]> = x.chunks(width).collect();
            let answer = svc.predict(&key, &rows).await?;
            let preds = answer["predictions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if preds.len() != n {
                return Err(Failure::new(
                    Fault::Integrity,
                    format!("the service answered {} of {n} records", preds.len()),
                ));
            }
            for (i, p) in preds.iter().enumerate() {
                let r = start + i;
                if a.json {
                    let mut o = json!({ "record": r, "receipt_sha256": answer["receipt_sha256"] });
                    if let (Some(o), Some(p)) = (o.as_object_mut(), p.as_object()) {
                        o.extend(p.clone());
                    }
                    println!("{o}");
                } else {
                    let v = p
                        .get("label")
                        .or_else(|| p.get("value"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    println!("{r}\t{v}");
                }
            }
            start += n;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> CertificateDer<'static> {
        rcgen::generate_simple_self_signed(vec!["x".into()])
            .unwrap()
            .cert
            .der()
            .clone()
    }

    fn check(v: &PinningVerifier, c: &CertificateDer<'_>) -> bool {
        v.verify_server_cert(
            c,
            &[],
            &ServerName::try_from("x").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
    }

    fn verifier(pin: Pin) -> PinningVerifier {
        PinningVerifier {
            pin: Arc::new(Mutex::new(pin)),
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms,
        }
    }

    #[test]
    fn one_connection_before_the_pin_and_only_the_pinned_key_after() {
        let (a, b) = (cert(), cert());
        let v = verifier(Pin::default());
        assert!(check(&v, &a), "the first connection is the one checked");
        assert!(
            !check(&v, &a),
            "no second connection before the evidence is checked"
        );
        assert!(!check(&v, &b));
        assert_eq!(
            v.pin.lock().unwrap().seen,
            Some(spki_sha256(&a).unwrap()),
            "the key seen is the first connection's"
        );
        let pinned = verifier(Pin {
            seen: None,
            pinned: Some(spki_sha256(&a).unwrap()),
        });
        assert!(check(&pinned, &a));
        assert!(check(&pinned, &a), "the pinned key, on any connection");
        assert!(!check(&pinned, &b), "any other key is refused");
    }
}
