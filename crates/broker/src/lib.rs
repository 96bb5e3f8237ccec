//! The key broker: runs on the data owner's premises and releases a dataset's key only
//! to a training job that proves, by remote attestation, that it runs the expected code
//! in a trusted execution environment, under the owner's per-dataset policy, recording
//! every decision in a hash-chained audit log (docs/broker-protocol.md).
//!
//! The broker holds dataset keys wrapped under its own master key. It has no code that
//! reads sealed data: it depends on neither the owner's tools nor the trainer.
#![forbid(unsafe_code)]

pub mod audit;
#[cfg(feature = "client")]
pub mod client;
pub mod db;
mod error;
pub mod fuzz;
pub mod server;
mod session;

/// The evidence verifiers, one per TEE (shared with prediction clients:
/// `blindfold-verify`).
pub use blindfold_verify as verifier;
/// The per-dataset policy (shared with prediction clients: `blindfold-verify`).
pub use blindfold_verify::policy;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{Error, PolicyError, Result};
pub use server::{AppState, Registration, Settings};

/// Files of a broker folder.
pub struct BrokerDir(pub PathBuf);

impl BrokerDir {
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// The admin token file (for the owner's CLI on the same premises).
    pub fn admin_token(&self) -> PathBuf {
        self.file("admin.token")
    }
    /// The TLS certificate (PEM), to pin in clients.
    pub fn cert(&self) -> PathBuf {
        self.file("tls-cert.pem")
    }
    fn key_pem(&self) -> PathBuf {
        self.file("tls-key.pem")
    }
    /// The default database.
    pub fn db(&self) -> PathBuf {
        self.file("broker.db")
    }
    /// The owner's TDX quote collateral, one file per platform (`broker tdx-collateral`).
    pub fn tdx_collateral(&self) -> PathBuf {
        self.file("tdx-collateral")
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Writes `data` to `path` (0600) through a synced temporary file in the same folder
/// and a rename, so that readers see the old file or the new one, never a part.
pub(crate) fn write_replacing(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(random::<8>().map_err(|_| std::io::Error::other("random"))?)
    ));
    let written = write_private(&tmp, data).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| Error::Internal("the random generator failed".into()))?;
    Ok(b)
}

/// Creates a broker folder: master key, token-signing key, admin token, and a
/// self-signed TLS certificate for `names` (plus localhost and 127.0.0.1). Returns the
/// admin token. Refuses to touch an existing folder's keys.
pub fn init(dir: &Path, names: &[String]) -> Result<String> {
    let d = BrokerDir(dir.to_owned());
    if d.file("master.key").exists() {
        return Err(Error::BadInput(format!(
            "{} already holds a broker (keys are never overwritten)",
            dir.display()
        )));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
    }
    let put = |name: &str, data: &[u8]| {
        let p = d.file(name);
        write_private(&p, data).map_err(|e| Error::io(p, e))
    };
    put("master.key", hex::encode(random::<32>()?).as_bytes())?;
    let token_key = loop {
        let b = random::<32>()?;
        if p256::SecretKey::from_slice(&b).is_ok() {
            break b;
        }
    };
    put("token.key", hex::encode(token_key).as_bytes())?;
    let admin = hex::encode(random::<32>()?);
    put("admin.token", admin.as_bytes())?;
    use sha2::Digest;
    put(
        "admin.sha256",
        hex::encode(sha2::Sha256::digest(admin.as_bytes())).as_bytes(),
    )?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(sans)
        .map_err(|e| Error::BadInput(format!("TLS certificate: {e}")))?;
    put("tls-key.pem", ck.signing_key.serialize_pem().as_bytes())?;
    fs::write(d.cert(), ck.cert.pem()).map_err(|e| Error::io(d.cert(), e))?;
    Ok(admin)
}

fn read_hex32(p: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let t = zeroize::Zeroizing::new(fs::read_to_string(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::BadInput(format!(
            "{}: missing (is this a broker folder? create one with `blindfold broker init`)",
            p.display()
        )),
        _ => Error::io(p, e),
    })?);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(t.trim(), &mut out[..])
        .map_err(|_| Error::BadInput(format!("{}: not 32 bytes of hex", p.display())))?;
    Ok(out)
}

/// The broker's public signing key as a JWK: what `blindfold receipt verify` checks a
/// training receipt's release certificate with. The matching private key
/// (DIR/token.key) also signs the broker's attestation tokens; a certificate carries a
/// `typ` no token has.
pub fn public_key_jwk(dir: &Path) -> Result<String> {
    let token = read_hex32(&BrokerDir(dir.to_owned()).file("token.key"))?;
    let key = p256::ecdsa::SigningKey::from_slice(&token[..])
        .map_err(|_| Error::BadInput("token.key is not a P-256 secret key".into()))?;
    Ok(blindfold_protocol::receipt::broker_key_to_jwk(
        key.verifying_key(),
    ))
}

/// The key of the audit chain's MACs, derived from the folder's master key (for
/// `broker audit --verify` on the broker's host).
pub fn audit_key(dir: &Path) -> Result<audit::AuditKey> {
    let master = read_hex32(&BrokerDir(dir.to_owned()).file("master.key"))?;
    Ok(audit::AuditKey::derive(&master))
}

/// What [`add_tdx_collateral`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCollateral {
    /// The file written.
    pub path: PathBuf,
    /// Platform FMSPC (upper-case hex).
    pub fmspc: String,
    /// `processor` or `platform`.
    pub ca: String,
    /// The TCB info's `nextUpdate`: after it, quotes checked with this collateral are
    /// refused until newer collateral is added.
    pub next_update: String,
}

/// Adds TDX quote collateral (dcap-qvl's `QuoteCollateralV3` JSON, as fetched from
/// Intel PCS or a PCCS) to the broker's store `dir`, replacing the one for the same
/// platform. The file is checked for form only (its signatures are checked, with the
/// quote, at each verification), written to a temporary file, synced, and renamed.
#[cfg(feature = "tdx")]
pub fn add_tdx_collateral(dir: &Path, json: &[u8]) -> Result<StoredCollateral> {
    let info = verifier::tdx::check_collateral(json).map_err(Error::BadInput)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = verifier::tdx::store_file(dir, &info.fmspc, &info.ca);
    write_replacing(&path, json).map_err(|e| Error::io(&path, e))?;
    Ok(StoredCollateral {
        path,
        fmspc: info.fmspc,
        ca: info.ca,
        next_update: info.next_update,
    })
}

/// Opens a broker folder's state: keys and database.
pub fn load(dir: &Path, db: Option<&Path>, settings: Settings) -> Result<Arc<AppState>> {
    let d = BrokerDir(dir.to_owned());
    let master = read_hex32(&d.file("master.key"))?;
    let token = read_hex32(&d.file("token.key"))?;
    let admin = read_hex32(&d.file("admin.sha256"))?;
    let db_path = db.unwrap_or(&d.db()).to_owned();
    let db = db::Db::open(&db_path, audit::AuditKey::derive(&master))?;
    if audit::unkeyed(&db.reader()?)? {
        return Err(Error::BadInput(format!(
            "{}: its audit log was chained with plain SHA-256 by an older blindfold, which anyone who can write the file can rewrite; this broker will not append to it. Keep the file as an archive, move it away, start the broker on a new database and register the datasets again (a dataset revoked there stays revoked only if you do not register it again)",
            db_path.display()
        )));
    }
    let state = AppState::new(db, *master, *token, *admin, settings)?;
    #[cfg(feature = "tdx")]
    let state = state.with_verifier(
        "tdx",
        Box::new(verifier::tdx::TdxVerifier::new().with_collateral_store(&d.tdx_collateral())),
    );
    Ok(state)
}

/// Serves on `listener` until the process ends. With `tls`, HTTPS with the folder's
/// certificate; without, plain HTTP (`--insecure-http`, for tests only).
pub async fn serve(
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    tls: Option<&BrokerDir>,
) -> Result<()> {
    let serve_err = |e: std::io::Error| Error::Serve(e.to_string());
    listener.set_nonblocking(true).map_err(serve_err)?;
    let app = server::router(state).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            let l = tokio::net::TcpListener::from_std(listener).map_err(serve_err)?;
            axum::serve(l, app).await.map_err(serve_err)
        }
        Some(d) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(d.cert(), d.key_pem())
                .await
                .map_err(|e| Error::BadInput(format!("TLS key or certificate: {e}")))?;
            axum_server::from_tcp_rustls(listener, cfg)
                .serve(app)
                .await
                .map_err(serve_err)
        }
    }
}
