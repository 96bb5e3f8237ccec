//! `blindfold receipt`: checking a training receipt (`docs/receipts.md`) offline, with
//! nothing but the broker's public key: no key store, no broker connection.

use std::path::{Path, PathBuf};

use crate::fault::{Failure, Fault};
use blindfold_protocol::receipt::{self, Verified, MAX_RECEIPT};
use blindfold_store::Store;
use clap::{Args, Subcommand};

/// Training receipts.
#[derive(Subcommand)]
pub enum ReceiptCmd {
    /// Check a training receipt: that the broker whose public key you hold released the
    /// dataset key for this training, to an attested job, and that this job signed what
    /// the receipt says about the model.
    ///
    /// Checks, in order: the broker's release certificate (its signature with
    /// --broker-key); every fact the certificate states (dataset, version, manifest,
    /// TEE type and measurement, job, model spec, audit entry, receipt key) against the
    /// receipt's statement, naming the first that differs; the statement's signature
    /// with the receipt key the broker certified; with --outputs, the sealed outputs'
    /// SHA-256 against the receipt's subjects. Any failure exits 4 and names the field.
    ///
    /// A receipt from the `sample` TEE is signed like any other but proves nothing
    /// about where the job ran: it is refused unless --danger-accept-sample.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The receipt (receipt.json, written beside a job's sealed outputs).
    receipt: PathBuf,
    /// The broker's public key, a JWK (`blindfold broker public-key --dir DIR`).
    #[arg(long, value_name = "FILE")]
    broker_key: PathBuf,
    /// Also check the sealed outputs at MODEL_DEST (a folder or s3:// URL) against the
    /// receipt's subjects.
    #[arg(long, value_name = "MODEL_DEST")]
    outputs: Option<String>,
    /// Refuse the receipt unless the TEE's measurement is this one (hex).
    #[arg(long, value_name = "HEX")]
    expect_measurement: Option<String>,
    /// Accept a receipt from the sample TEE (no hardware root of trust: anyone could
    /// have produced its evidence, so it proves nothing about where the job ran).
    #[arg(long)]
    danger_accept_sample: bool,
    /// Print what was verified as one JSON line on standard output.
    #[arg(long)]
    json: bool,
}

fn refused(e: receipt::Refused) -> Failure {
    Failure::new(Fault::Integrity, e.to_string())
}

/// Reads at most `max` bytes of `p` (a larger file is refused unread past that).
fn read_limited(p: &Path, max: usize) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let fail = |e: std::io::Error| {
        let fault = if e.kind() == std::io::ErrorKind::NotFound {
            Fault::BadInput
        } else {
            Fault::Io
        };
        Failure::new(fault, format!("{}: {e}", p.display()))
    };
    let mut b = Vec::new();
    std::fs::File::open(p)
        .map_err(fail)?
        .take(max as u64 + 1)
        .read_to_end(&mut b)
        .map_err(fail)?;
    if b.len() > max {
        return Err(Failure::bad_input(format!(
            "{}: larger than {max} bytes",
            p.display()
        )));
    }
    Ok(b)
}

/// Runs `blindfold receipt`.
pub fn run(cmd: &ReceiptCmd) -> Result<(), Failure> {
    let ReceiptCmd::Verify(a) = cmd;
    let jwk = String::from_utf8(read_limited(&a.broker_key, 4096)?)
        .map_err(|_| Failure::bad_input(format!("{}: not text", a.broker_key.display())))?;
    let broker = receipt::broker_key_from_jwk(&jwk)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", a.broker_key.display())))?;
    let bytes = read_limited(&a.receipt, MAX_RECEIPT)?;
    let v = receipt::verify(&bytes, &broker).map_err(refused)?;
    if let Some(want) = &a.expect_measurement {
        let got = v.claims.measurement.as_deref().unwrap_or("");
        if !got.eq_ignore_ascii_case(want.trim()) {
            return Err(refused(receipt::Refused {
                field: "predicate.tee.measurement".into(),
                why: format!("the broker certified {got:?}, you expect {want:?}"),
            }));
        }
    }
    if v.claims.insecure && !a.danger_accept_sample {
        return Err(refused(receipt::Refused {
            field: "predicate.tee.type".into(),
            why: "the receipt is genuine but its job ran in the sample TEE: no hardware \
                  root of trust, so it proves nothing about where or how the model was \
                  trained (--danger-accept-sample to accept it anyway)"
                .into(),
        }));
    }
    if let Some(dest) = &a.outputs {
        check_outputs(&v, dest)?;
    }
    report(&v, a);
    Ok(())
}

/// Checks that the objects at `dest` are the receipt's subjects, byte for byte.
fn check_outputs(v: &Verified, dest: &str) -> Result<(), Failure> {
    let store = Store::open(dest, false)?;
    for (i, s) in v.subjects.iter().enumerate() {
        let bytes = store
            .get(&s.name)
            .map_err(|e| Failure::new(Fault::Integrity, format!("{dest}/{}: {e}", s.name)))?;
        if blindfold_format::sha256(&bytes) != s.sha256 {
            return Err(refused(receipt::Refused {
                field: format!("subject[{i}].digest.sha256"),
                why: format!(
                    "{dest}/{} is not the object the job signed for (replaced or edited)",
                    s.name
                ),
            }));
        }
    }
    Ok(())
}

fn report(v: &Verified, a: &VerifyArgs) {
    let c = &v.claims;
    let p = &v.predicate;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    eprintln!(
        "receipt verified: the broker certified this job's receipt key when it released the key (audit entry {})",
        c.audit_seq
    );
    eprintln!(
        "  dataset   {} version {} (manifest sha256 {})",
        c.dataset_id, c.version, c.manifest_sha256
    );
    if c.insecure {
        eprintln!("  tee       sample: NO HARDWARE ROOT OF TRUST, this receipt proves nothing about where the job ran");
    } else {
        eprintln!(
            "  tee       {}, measurement {}",
            c.tee,
            c.measurement.as_deref().unwrap_or("-")
        );
    }
    eprintln!(
        "  job       {}; {} model {} (spec sha256 {})",
        c.job.as_deref().unwrap_or("-"),
        s(&p["framework"]),
        s(&p["model"]["name"]),
        c.model.as_deref().unwrap_or("-")
    );
    for sub in &v.subjects {
        eprintln!(
            "  subject   {} sha256 {}",
            sub.name,
            hex::encode(sub.sha256)
        );
    }
    if let Some(d) = &a.outputs {
        eprintln!("  outputs   {d}: every subject present, byte for byte");
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "verified": true,
                "certified": c,
                "subjects": v.subjects.iter().map(|s| serde_json::json!({
                    "name": s.name, "sha256": hex::encode(s.sha256)
                })).collect::<Vec<_>>(),
                "predicate": p,
                "outputs_checked": a.outputs.is_some(),
            })
        );
    }
}
