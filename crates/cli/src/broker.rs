//! `blindfold broker ...`: run the key broker, register datasets with it, read its audit
//! log, and fetch a key the way a training job does.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_attest::FetchOptions;
use blindfold_broker::{BrokerDir, Registration, Settings};
use blindfold_job::EvidenceArgs;
use clap::{Args, Subcommand};

use crate::fault::{Failure, Fault};

#[derive(Subcommand)]
pub enum BrokerCmd {
    /// Create a broker folder: master key, token-signing key, admin token (printed once and
    /// kept in DIR/admin.token, 0600), and a self-signed TLS certificate (DIR/tls-cert.pem,
    /// to give to clients) for localhost, 127.0.0.1 and every --san.
    Init {
        /// The broker's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses for the TLS certificate.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Serve the KBS attestation endpoints and the admin API over HTTPS.
    Serve {
        /// The broker's folder (from `broker init`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
        listen: String,
        /// SQLite database (default DIR/broker.db).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Serve plain HTTP: anyone on the network path sees the admin token. Tests only.
        #[arg(long)]
        insecure_http: bool,
        /// Requests per second allowed per client address.
        #[arg(long, default_value_t = 5000.0)]
        rate_limit: f64,
    },
    /// Register a sealed dataset (owner side): sends its key, manifest digest and version,
    /// and the policy to the broker's admin API.
    Register {
        /// The sealed dataset.
        dest: String,
        /// The policy (TOML; see docs/broker-protocol.md §4).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Write a sealed dataset's release object to standard output, for a stock Trustee
    /// KBS to serve (owner side).
    ///
    /// The object is exactly what `broker serve` releases to an attested job
    /// (docs/broker-protocol.md §2): dataset id, the dataset key in the clear, manifest
    /// digest and version. Pipe it straight into the KBS admin client, e.g.
    ///
    ///   blindfold broker export-kbs-resource DEST | kbs-client --url URL config
    ///     --admin-token-file TOKEN set-resource --path blindfold/dataset/ID
    ///     --resource-file /dev/stdin > /dev/null
    ///
    /// (Trustee's kbs-client prints the resource it set, key included, on its standard
    /// output: hence `> /dev/null`.) The KBS's own resource policy then decides who gets
    /// the key: blindfold's policy, release count, revocation and audit log do not apply.
    /// Refuses to write to a terminal.
    #[command(verbatim_doc_comment)]
    ExportKbsResource {
        /// The sealed dataset.
        dest: String,
    },
    /// Stop all further releases of a dataset at once.
    Revoke {
        /// Dataset id (hex).
        dataset: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add Intel TDX quote collateral to the broker's store (on the broker's host).
    ///
    /// Collateral (TCB info, QE identity and CRLs, all signed by Intel) lets the broker
    /// verify TDX quotes that arrive without any, as Trustee's stock client sends them.
    /// Fetch it for each platform (FMSPC) your jobs run on from Intel PCS or your PCCS,
    /// in dcap-qvl's QuoteCollateralV3 JSON form, and add it again before the
    /// `nextUpdate` printed here: after that, quotes from that platform are refused.
    /// Each file replaces the one for the same FMSPC and PCK CA; a running broker uses
    /// it from the next attestation on. The store's collateral wins over any a client
    /// carries, so a client cannot pick an older one.
    TdxCollateral {
        /// The broker's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Collateral files (JSON).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the audit log (on the broker's host); with --verify, check its chain.
    ///
    /// Each entry's MAC is keyed with a key derived from DIR/master.key, so the check
    /// needs the broker's folder: someone who can write the database but not read that
    /// key cannot rewrite an entry and recompute the chain.
    Audit {
        /// The broker's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// SQLite database (default DIR/broker.db).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Check the chain; exit 4 if any entry was edited, inserted or deleted, or the
        /// chain recomputed without the broker's key.
        #[arg(long)]
        verify: bool,
    },
    /// Print the broker's public key (a JWK), which verifies the release certificates in
    /// training receipts (`blindfold receipt verify --broker-key FILE`). Not secret:
    /// publish it to whoever should check your models' receipts.
    PublicKey {
        /// The broker's folder.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Fetch a dataset key as a training job does (attest, then receive the key encrypted
    /// to an ephemeral key). Prints what was released, never the key.
    FetchKey(FetchArgs),
}

#[derive(Args)]
pub struct AdminArgs {
    /// Broker URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", value_name = "URL")]
    broker: String,
    /// The broker's folder, for its admin token and certificate (when on this machine).
    #[arg(long, value_name = "DIR")]
    broker_dir: Option<PathBuf>,
    /// Admin token file (default BROKER_DIR/admin.token).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// The broker's TLS certificate (default BROKER_DIR/tls-cert.pem).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Accept an http:// broker URL (a test broker on loopback): the admin token and
    /// the dataset key cross the network in the clear.
    #[arg(long)]
    insecure_http: bool,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Broker URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", value_name = "URL")]
    broker: String,
    /// Dataset id (hex).
    #[arg(long, value_name = "ID")]
    dataset: String,
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Job name, checked by the policy.
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Declare this model (built in, or a spec file): its SHA-256 is checked by a
    /// policy that lists `models`.
    #[arg(long, value_name = "NAME|SPEC.toml")]
    model: Option<String>,
    /// The broker's TLS certificate to trust.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Accept an http:// broker URL (a test broker on loopback): nothing authenticates
    /// the broker, and its replies cross the network in the clear.
    #[arg(long)]
    insecure_http: bool,
}

fn read(p: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(p).map_err(|e| Failure::bad_input(format!("{}: {e}", p.display())))
}

fn admin_parts(a: &AdminArgs) -> Result<(String, Option<Vec<u8>>), Failure> {
    let tok_file = a.admin_token_file.clone().or_else(|| {
        a.broker_dir
            .as_ref()
            .map(|d| BrokerDir(d.clone()).admin_token())
    });
    let tok_file = tok_file.ok_or_else(|| {
        Failure::bad_input("the admin API needs --broker-dir or --admin-token-file")
    })?;
    let token = String::from_utf8(read(&tok_file)?)
        .map_err(|_| Failure::bad_input("admin token is not text"))?
        .trim()
        .to_owned();
    let ca = match a
        .ca_cert
        .clone()
        .or_else(|| a.broker_dir.as_ref().map(|d| BrokerDir(d.clone()).cert()))
    {
        Some(p) if a.broker.starts_with("https://") => Some(read(&p)?),
        _ => None,
    };
    Ok((token, ca))
}

/// The admin API client these arguments name.
fn admin_client(a: &AdminArgs) -> Result<blindfold_broker::client::AdminClient, Failure> {
    let (token, ca) = admin_parts(a)?;
    Ok(blindfold_broker::client::AdminClient::new(
        &a.broker,
        &token,
        ca.as_deref(),
        a.insecure_http,
    )?)
}

/// A sealed dataset's release object: what the broker hands an attested job (dataset
/// id, key, manifest digest and version), for `register` and `export-kbs-resource`.
fn release_object(
    ks: &blindfold_owner::KeyStore,
    dest: &str,
) -> Result<blindfold_owner::Release, Failure> {
    let ds = blindfold_owner::open(ks, blindfold_store::Store::open(dest, false)?)?;
    Ok(blindfold_owner::release(&ds))
}

/// The wire form of a release object (key in base64, digest in hex), as the broker and a
/// stock KBS serve it.
fn wire_release(r: &blindfold_owner::Release) -> blindfold_protocol::Release {
    blindfold_protocol::Release {
        dataset_id: r.dataset_id.clone(),
        key: STANDARD.encode(&r.key[..]),
        manifest_sha256: hex::encode(r.manifest_sha256),
        version: r.version,
        certificate: None,
        serve: None,
    }
}

/// What `register` sends the broker's admin API: the release object and the policy
/// (TOML). The key string moves, it is not copied: both types wipe it on drop. (The
/// admin client's JSON request body is a copy this code cannot wipe: reqwest owns it.)
pub(crate) fn registration(r: &blindfold_owner::Release, policy: String) -> Registration {
    let mut w = wire_release(r);
    Registration {
        dataset_id: std::mem::take(&mut w.dataset_id),
        key: std::mem::take(&mut w.key),
        manifest_sha256: std::mem::take(&mut w.manifest_sha256),
        version: w.version,
        policy,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::bug)
}

pub fn run(
    cmd: BrokerCmd,
    keystore: impl FnOnce() -> Result<blindfold_owner::KeyStore, Failure>,
) -> Result<(), Failure> {
    match cmd {
        BrokerCmd::Init { dir, sans } => {
            let token = blindfold_broker::init(&dir, &sans)?;
            println!("created broker folder {}", dir.display());
            println!(
                "admin token (also in {}): {token}",
                BrokerDir(dir.clone()).admin_token().display()
            );
            println!(
                "TLS certificate for clients: {}",
                BrokerDir(dir).cert().display()
            );
        }
        BrokerCmd::Serve {
            dir,
            listen,
            db,
            insecure_http,
            rate_limit,
        } => {
            let settings = Settings {
                rate_limit,
                ..Settings::default()
            };
            let state = blindfold_broker::load(&dir, db.as_deref(), settings)?;
            let l = std::net::TcpListener::bind(&listen)
                .map_err(|e| Failure::bad_input(format!("listen on {listen}: {e}")))?;
            if insecure_http {
                eprintln!("WARNING: --insecure-http: the admin token and all traffic cross the network in the clear");
            }
            let sample = state.datasets_accepting_sample()?;
            if !sample.is_empty() {
                eprintln!(
                    "WARNING: {} registered dataset(s) accept the `sample` TEE, which has no hardware root of trust (every such release is marked in the audit log): {}",
                    sample.len(),
                    sample.join(", ")
                );
            }
            eprintln!(
                "broker listening on {}://{}",
                if insecure_http { "http" } else { "https" },
                l.local_addr().map_err(Failure::bug)?
            );
            let d = BrokerDir(dir);
            runtime()?.block_on(blindfold_broker::serve(
                state,
                l,
                (!insecure_http).then_some(&d),
            ))?;
        }
        BrokerCmd::Register {
            dest,
            policy,
            admin,
        } => {
            let text = String::from_utf8(read(&policy)?)
                .map_err(|_| Failure::bad_input("policy is not UTF-8"))?;
            let p = blindfold_broker::policy::Policy::parse(&text)?;
            let rel = release_object(&keystore()?, &dest)?;
            let (id, version) = (rel.dataset_id.clone(), rel.version);
            let reg = registration(&rel, text);
            drop(rel);
            admin_client(&admin)?.register(&reg)?;
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
            println!(
                "registered dataset {id} version {version} with {}",
                admin.broker
            );
        }
        BrokerCmd::ExportKbsResource { dest } => {
            use std::io::{IsTerminal, Write};
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                return Err(Failure::bad_input(
                    "refusing to print a dataset key to a terminal: pipe it into the KBS admin client (see --help)",
                ));
            }
            let release = wire_release(&release_object(&keystore()?, &dest)?);
            let (id, version) = (release.dataset_id.clone(), release.version);
            let bytes = release.to_json().map_err(Failure::bug)?;
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| Failure::new(Fault::Io, format!("standard output: {e}")))?;
            let path = blindfold_protocol::resource_path(&id);
            eprintln!(
                "release object for dataset {id} version {version}; KBS resource path: {}",
                path.trim_start_matches("/kbs/v0/resource/")
            );
        }
        BrokerCmd::Revoke { dataset, admin } => {
            admin_client(&admin)?.revoke(&dataset)?;
            println!("revoked {dataset}");
        }
        BrokerCmd::TdxCollateral { dir, files } => {
            let d = BrokerDir(dir);
            if !d.cert().exists() {
                return Err(Failure::bad_input(format!(
                    "{} is not a broker folder (create one with `blindfold broker init`)",
                    d.0.display()
                )));
            }
            for f in files {
                let stored = blindfold_broker::add_tdx_collateral(&d.tdx_collateral(), &read(&f)?)
                    .map_err(|e| {
                        let e = Failure::from(e);
                        Failure::new(e.fault, format!("{}: {e}", f.display()))
                    })?;
                println!(
                    "stored TDX collateral for FMSPC {} ({} CA) as {}; TCB info valid until {}",
                    stored.fmspc,
                    stored.ca,
                    stored.path.display(),
                    stored.next_update
                );
            }
        }
        BrokerCmd::PublicKey { dir } => {
            println!("{}", blindfold_broker::public_key_jwk(&dir)?);
        }
        BrokerCmd::Audit { dir, db, verify } => {
            let path = db.unwrap_or_else(|| BrokerDir(dir.clone()).db());
            if !path.exists() {
                return Err(Failure::bad_input(format!(
                    "{}: no broker database",
                    path.display()
                )));
            }
            let c = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| Failure::new(Fault::Io, format!("{}: {e}", path.display())))?;
            let db_err =
                |e: blindfold_broker::db::DbError| Failure::from(blindfold_broker::Error::from(e));
            // Checked before anything is printed: entries after a break are not to be
            // shown as if they were the log.
            let head = if verify {
                let key = blindfold_broker::audit_key(&dir)?;
                match blindfold_broker::audit::verify(&c, &key).map_err(db_err)? {
                    Ok(h) => Some(h),
                    Err((seq, why)) => {
                        let e = Failure::from(blindfold_broker::Error::AuditBroken { seq, why });
                        return Err(Failure::new(e.fault, format!("{}: {e}", path.display())));
                    }
                }
            } else {
                None
            };
            let entries = blindfold_broker::audit::entries(&c).map_err(db_err)?;
            for e in &entries {
                println!("{}", serde_json::to_string(e).map_err(Failure::bug)?);
            }
            if let Some(h) = head {
                eprintln!("audit chain intact: {} entries, head {} (keep this head elsewhere to detect a deleted tail)", h.seq, hex::encode(h.hash));
            }
        }
        BrokerCmd::FetchKey(a) => {
            let ev = a.evidence.source()?;
            let ca = a.ca_cert.as_deref().map(read).transpose()?;
            let opts = FetchOptions {
                broker: a.broker.clone(),
                ca_cert_pem: ca,
                job: a.job.clone(),
                model: a
                    .model
                    .as_deref()
                    .map(blindfold_zone::spec::Spec::load)
                    .transpose()?
                    .map(|s| s.sha256_hex()),
                receipt_key: None,
                insecure_http: a.insecure_http,
            };
            let r = blindfold_attest::fetch_key(&opts, &a.dataset, &ev)?;
            println!("released: dataset {} version {} manifest sha256 {} (key: 32 bytes, held in memory only)", r.dataset_id, r.version, hex::encode(r.manifest_sha256));
        }
    }
    Ok(())
}
