//! The key broker: runs on the data owner's premises and releases a dataset's key only
//! to a training job that proves, by remote attestation, that it runs the expected code
//! in a trusted execution environment, under the owner's per-dataset policy, recording
//! every decision in a hash-chained audit log (docs/broker-protocol.md).
//!
//! The broker holds dataset keys wrapped under its own master key. It has no code that
//! reads sealed data: it depends on neither the owner's tools nor the trainer.
#![forbid(unsafe_code)]

pub mod audit;
pub mod db;
pub mod fuzz;
pub mod policy;
pub mod server;
pub mod verifier;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        hex::encode(random::<8>()?)
    ));
    let written = write_private(&tmp, data).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| std::io::Error::other("random"))?;
    Ok(b)
}

/// Creates a broker folder: master key, token-signing key, admin token, and a
/// self-signed TLS certificate for `names` (plus localhost and 127.0.0.1). Returns the
/// admin token. Refuses to touch an existing folder's keys.
pub fn init(dir: &Path, names: &[String]) -> Result<String, String> {
    let d = BrokerDir(dir.to_owned());
    if d.file("master.key").exists() {
        return Err(format!(
            "{} already holds a broker (keys are never overwritten)",
            dir.display()
        ));
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    }
    let io = |e: std::io::Error| e.to_string();
    write_private(
        &d.file("master.key"),
        hex::encode(random::<32>().map_err(io)?).as_bytes(),
    )
    .map_err(io)?;
    let token_key = loop {
        let b = random::<32>().map_err(io)?;
        if p256::SecretKey::from_slice(&b).is_ok() {
            break b;
        }
    };
    write_private(&d.file("token.key"), hex::encode(token_key).as_bytes()).map_err(io)?;
    let admin = hex::encode(random::<32>().map_err(io)?);
    write_private(&d.admin_token(), admin.as_bytes()).map_err(io)?;
    use sha2::Digest;
    write_private(
        &d.file("admin.sha256"),
        hex::encode(sha2::Sha256::digest(admin.as_bytes())).as_bytes(),
    )
    .map_err(io)?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(sans).map_err(|e| e.to_string())?;
    write_private(&d.key_pem(), ck.signing_key.serialize_pem().as_bytes()).map_err(io)?;
    fs::write(d.cert(), ck.cert.pem()).map_err(io)?;
    Ok(admin)
}

fn read_hex32(p: &Path) -> Result<[u8; 32], String> {
    let t = fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    hex::decode(t.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("{}: not 32 bytes of hex", p.display()))
}

/// Opens a broker folder's state: keys and database.
pub fn load(dir: &Path, db: Option<&Path>, settings: Settings) -> Result<Arc<AppState>, String> {
    let d = BrokerDir(dir.to_owned());
    let master = read_hex32(&d.file("master.key"))?;
    let token = read_hex32(&d.file("token.key"))?;
    let admin = read_hex32(&d.file("admin.sha256"))?;
    let db = db::Db::open(db.unwrap_or(&d.db())).map_err(|e| e.to_string())?;
    let state = AppState::new(db, master, token, admin, settings)?;
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
) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let app = server::router(state).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            axum::serve(l, app).await.map_err(|e| e.to_string())
        }
        Some(d) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(d.cert(), d.key_pem())
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            axum_server::from_tcp_rustls(listener, cfg)
                .serve(app)
                .await
                .map_err(|e| e.to_string())
        }
    }
}
