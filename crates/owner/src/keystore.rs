//! The owner's key store in `$BLINDFOLD_HOME` (default `~/.blindfold`).
//!
//! Layout (every file 0600, folders 0700, written to a temporary name, synced, renamed):
//! - `keystore.json`: the master key (raw, or wrapped under Argon2id of a passphrase) and
//!   the owner's HPKE identity (X25519) whose secret half is wrapped under the master key;
//! - `datasets/<dataset id>.json`: each dataset's key wrapped under the master key, with
//!   the latest manifest version and digest the owner published and every version this
//!   key store sealed (rollback detection, and which outputs the owner accepts).
//!
//! Wrapping is AES-256-GCM (aws-lc-rs) with a random nonce and associated data naming
//! what is wrapped. A dataset record's associated data also covers a digest of every
//! field of the record (id, suite, versions, digests, location), so editing one (lowering
//! the version, say) makes the key fail to unwrap: the record is refused as damaged.
//! The identity's public key is not trusted as stored: it is recomputed from the
//! identity's secret key, and a file naming another public key is refused.
//!
//! Not detected: replacing a record (or the whole store) by an older copy of itself,
//! which is authentic. Back the key store up, and keep it where only the owner writes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead;
use blindfold_format::{DatasetId, DatasetKey, Suite};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const KEYSTORE_FILE: &str = "keystore.json";
const DATASETS_DIR: &str = "datasets";
const AAD_MASTER: &[u8] = b"blindfold/v1/keystore/master";
const AAD_IDENTITY: &[u8] = b"blindfold/v1/keystore/identity";
const AAD_DATASET: &[u8] = b"blindfold/v2/keystore/dataset/";
/// Format of a dataset record. Version 1 records did not authenticate their fields.
const RECORD_FORMAT: u32 = 2;

/// Argon2id cost for passphrase-protected key stores (64 MiB, 3 passes, 1 lane).
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;

/// The key-store folder: `$BLINDFOLD_HOME`, else `~/.blindfold`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("BLINDFOLD_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".blindfold")
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeystoreFile {
    format: u32,
    master: MasterJson,
    identity: IdentityJson,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kdf", rename_all = "lowercase", deny_unknown_fields)]
enum MasterJson {
    /// No passphrase: the master key is stored as is (protected by file permissions).
    None { key: String },
    /// Master key wrapped under Argon2id(passphrase).
    Argon2id {
        m_kib: u32,
        t: u32,
        p: u32,
        salt: String,
        nonce: String,
        wrapped: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityJson {
    kem: String,
    public: String,
    nonce: String,
    wrapped_secret: String,
}

/// A manifest version this key store sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Manifest version.
    pub version: u64,
    /// SHA-256 of that manifest (hex).
    pub manifest_sha256: String,
}

/// What the key store records about one sealed dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatasetRecord {
    /// Record format ([`RECORD_FORMAT`]).
    pub format: u32,
    /// Dataset id (hex).
    pub dataset_id: String,
    /// Suite name.
    pub suite: String,
    /// Nonce of the wrapped key (hex).
    pub nonce: String,
    /// The dataset key wrapped under the master key (hex).
    pub wrapped_key: String,
    /// Latest manifest version the owner published.
    pub version: u64,
    /// SHA-256 of that manifest (hex).
    pub manifest_sha256: String,
    /// Where it was sealed to, as given.
    pub location: String,
    /// Every version this key store sealed, oldest first. The last may be newer than
    /// `version`: sealed, but its manifest not yet confirmed written (a crash between
    /// the two); the owner's tools accept it when they find it in storage.
    pub history: Vec<Published>,
}

impl DatasetRecord {
    /// The associated data of the wrapped key: the label, the dataset id, and the
    /// SHA-256 of every other field in a fixed order.
    fn aad(&self, id: &DatasetId) -> Vec<u8> {
        #[derive(Serialize)]
        struct Fields<'a> {
            format: u32,
            dataset_id: &'a str,
            suite: &'a str,
            version: u64,
            manifest_sha256: &'a str,
            location: &'a str,
            history: &'a [Published],
        }
        let fields = serde_json::to_vec(&Fields {
            format: self.format,
            dataset_id: &self.dataset_id,
            suite: &self.suite,
            version: self.version,
            manifest_sha256: &self.manifest_sha256,
            location: &self.location,
            history: &self.history,
        })
        .expect("serializable");
        let mut aad = AAD_DATASET.to_vec();
        aad.extend_from_slice(&id.0);
        aad.extend_from_slice(&blindfold_format::sha256(&fields));
        aad
    }

    /// Whether this key store sealed `version` with manifest `digest`.
    pub fn published(&self, version: u64, digest: &[u8; 32]) -> bool {
        let d = hex::encode(digest);
        self.history
            .iter()
            .any(|p| p.version == version && p.manifest_sha256 == d)
    }
}

/// What [`KeyStore::upgrade_records`] did with one record.
#[derive(Debug)]
pub struct Upgraded {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// The version now recorded, or why the record was left alone.
    pub outcome: std::result::Result<u64, String>,
}

/// A held [`KeyStore::lock_dataset`]: released when dropped.
#[derive(Debug)]
pub struct DatasetLock(#[allow(dead_code)] fs::File);

/// An unlocked key store.
pub struct KeyStore {
    home: PathBuf,
    master: aead::LessSafeKey,
    identity_public: Vec<u8>,
    /// The identity's secret key, wrapped under the master key: (nonce, wrapped), hex.
    identity_wrapped: (String, String),
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStore({})", self.home.display())
    }
}

fn rand_bytes<const N: usize>() -> Result<[u8; N]> {
    blindfold_format::random_bytes().map_err(|e| Error::Bug(e.to_string()))
}

fn aes_key(raw: &[u8]) -> Result<aead::LessSafeKey> {
    aead::UnboundKey::new(&aead::AES_256_GCM, raw)
        .map(aead::LessSafeKey::new)
        .map_err(|_| Error::Bug("AES key".into()))
}

fn wrap(key: &aead::LessSafeKey, aad: &[u8], secret: &[u8]) -> Result<(String, String)> {
    let nonce: [u8; 12] = rand_bytes()?;
    let mut buf = secret.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| Error::Bug("wrap".into()))?;
    Ok((hex::encode(nonce), hex::encode(buf)))
}

fn unwrap(
    key: &aead::LessSafeKey,
    aad: &[u8],
    nonce: &str,
    wrapped: &str,
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; 12] = hex::decode(nonce).ok()?.try_into().ok()?;
    let mut buf = Zeroizing::new(hex::decode(wrapped).ok()?);
    let n = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf[..],
        )
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

/// The X25519 public key of an HPKE identity's secret key.
fn public_of(sk: &[u8]) -> Result<Vec<u8>> {
    use hpke::{Deserializable, Kem, Serializable};
    let sk = <hpke::kem::X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(sk)
        .map_err(|_| Error::KeyStore("the identity's secret key is malformed".into()))?;
    Ok(<hpke::kem::X25519HkdfSha256 as Kem>::sk_to_pk(&sk)
        .to_bytes()
        .to_vec())
}

fn argon2_key(
    passphrase: &[u8],
    salt: &[u8],
    m_kib: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(m_kib, t, p, Some(32))
        .map_err(|e| Error::KeyStore(format!("Argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| Error::KeyStore(format!("Argon2: {e}")))?;
    Ok(out)
}

/// Writes `data` to `path` with mode 0600: temporary name, fsync, rename, fsync folder.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Bug("path without parent".into()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(private_perms())
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(data).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn private_perms() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o600)
}

#[cfg(not(unix))]
fn private_perms() -> fs::Permissions {
    fs::metadata(".").map(|m| m.permissions()).expect("cwd")
}

fn create_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

impl KeyStore {
    /// Creates a key store in `home`. Refuses to touch an existing one.
    pub fn init(home: &Path, passphrase: Option<&[u8]>) -> Result<KeyStore> {
        let file = home.join(KEYSTORE_FILE);
        if file.exists() {
            return Err(Error::BadInput(format!(
                "a key store already exists at {}: keys are never overwritten (move it away first if you really mean to start over)",
                file.display()
            )));
        }
        create_private_dir(home)?;
        create_private_dir(&home.join(DATASETS_DIR))?;
        let raw_master: Zeroizing<[u8; 32]> = Zeroizing::new(rand_bytes()?);
        let master_json = match passphrase {
            None => MasterJson::None {
                key: hex::encode(&raw_master[..]),
            },
            Some(p) => {
                if p.is_empty() {
                    return Err(Error::BadInput("the passphrase is empty".into()));
                }
                let salt: [u8; 16] = rand_bytes()?;
                let kek = argon2_key(p, &salt, ARGON2_M_KIB, ARGON2_T, 1)?;
                let (nonce, wrapped) = wrap(&aes_key(&kek[..])?, AAD_MASTER, &raw_master[..])?;
                MasterJson::Argon2id {
                    m_kib: ARGON2_M_KIB,
                    t: ARGON2_T,
                    p: 1,
                    salt: hex::encode(salt),
                    nonce,
                    wrapped,
                }
            }
        };
        let master = aes_key(&raw_master[..])?;
        use hpke::{Kem, Serializable};
        // RFC 9180 DeriveKeyPair from 32 bytes of OS randomness.
        let ikm: Zeroizing<[u8; 32]> = Zeroizing::new(rand_bytes()?);
        let (sk, pk) = hpke::kem::X25519HkdfSha256::derive_keypair(&ikm[..]);
        let sk_bytes = Zeroizing::new(sk.to_bytes().to_vec());
        let (nonce, wrapped_secret) = wrap(&master, AAD_IDENTITY, &sk_bytes)?;
        let identity_public = pk.to_bytes().to_vec();
        let ks = KeystoreFile {
            format: 1,
            master: master_json,
            identity: IdentityJson {
                kem: "X25519-HKDF-SHA256".into(),
                public: hex::encode(&identity_public),
                nonce,
                wrapped_secret,
            },
        };
        let json = serde_json::to_vec_pretty(&ks).map_err(|e| Error::Bug(e.to_string()))?;
        write_private(&file, &json)?;
        Ok(KeyStore {
            home: home.to_owned(),
            master,
            identity_public,
            identity_wrapped: (ks.identity.nonce, ks.identity.wrapped_secret),
        })
    }

    /// Opens and unlocks the key store in `home`.
    pub fn open(home: &Path, passphrase: Option<&[u8]>) -> Result<KeyStore> {
        let file = home.join(KEYSTORE_FILE);
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::KeyStore(format!(
                    "no key store at {} (create one with `blindfold keys init`, or set BLINDFOLD_HOME)",
                    home.display()
                )))
            }
            Err(e) => return Err(Error::io(&file, e)),
        };
        let ks: KeystoreFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::KeyStore(format!("{} is malformed: {e}", file.display())))?;
        if ks.format != 1 {
            return Err(Error::KeyStore(format!(
                "{}: unsupported format {}",
                file.display(),
                ks.format
            )));
        }
        let raw: Zeroizing<Vec<u8>> = match &ks.master {
            MasterJson::None { key } => Zeroizing::new(
                hex::decode(key).map_err(|_| Error::KeyStore("master key is not hex".into()))?,
            ),
            MasterJson::Argon2id {
                m_kib,
                t,
                p,
                salt,
                nonce,
                wrapped,
            } => {
                let pass = passphrase.ok_or_else(|| {
                    Error::KeyStore(
                        "the key store is passphrase-protected: set BLINDFOLD_PASSPHRASE or pass --passphrase-file".into(),
                    )
                })?;
                let salt =
                    hex::decode(salt).map_err(|_| Error::KeyStore("salt is not hex".into()))?;
                let kek = argon2_key(pass, &salt, *m_kib, *t, *p)?;
                unwrap(&aes_key(&kek[..])?, AAD_MASTER, nonce, wrapped).ok_or_else(|| {
                    Error::KeyStore("wrong passphrase (or a damaged key store)".into())
                })?
            }
        };
        if raw.len() != 32 {
            return Err(Error::KeyStore("master key has the wrong length".into()));
        }
        let master = aes_key(&raw)?;
        // The identity must unwrap (a damaged file or a mixed-up master key shows now),
        // and its public key is recomputed from the secret: the stored one is only
        // accepted if it is that key (an edited one would send every model elsewhere).
        let sk = unwrap(
            &master,
            AAD_IDENTITY,
            &ks.identity.nonce,
            &ks.identity.wrapped_secret,
        )
        .ok_or_else(|| {
            Error::KeyStore("the identity key does not unwrap: damaged key store".into())
        })?;
        let identity_public = public_of(&sk)?;
        if hex::decode(&ks.identity.public).ok().as_deref() != Some(&identity_public[..]) {
            return Err(Error::KeyStore(format!(
                "{}: the identity's public key is not the one of its secret key: the file was edited",
                file.display()
            )));
        }
        Ok(KeyStore {
            home: home.to_owned(),
            master,
            identity_public,
            identity_wrapped: (ks.identity.nonce, ks.identity.wrapped_secret),
        })
    }

    /// The folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Opens a sealed output (a trained model, metrics) that a job encrypted to the
    /// owner's public key. The identity's secret key is unwrapped only for this call.
    ///
    /// An output that names a source dataset opens only with that dataset's key from
    /// this key store (only a holder of the dataset key could have made it), and must
    /// name a version and manifest this key store sealed. One that names no source (the
    /// plaintext baseline's) is unauthenticated: anyone who knows the owner's public key
    /// could have written it; it is refused unless `danger_unauthenticated`.
    pub fn open_output(
        &self,
        bytes: &[u8],
        name: &str,
        danger_unauthenticated: bool,
    ) -> Result<(blindfold_format::OutputHeader, Zeroizing<Vec<u8>>)> {
        let header = blindfold_format::output_header_unverified(bytes, name)
            .map_err(|e| Error::sealed(name, e))?;
        let sk = unwrap(
            &self.master,
            AAD_IDENTITY,
            &self.identity_wrapped.0,
            &self.identity_wrapped.1,
        )
        .ok_or_else(|| {
            Error::KeyStore("the identity key does not unwrap: damaged key store".into())
        })?;
        let Some(src) = &header.source else {
            if !danger_unauthenticated {
                return Err(Error::Unauthenticated(format!(
                    "{name} names no sealed dataset: it is not authenticated (anyone who knows your public key could have written it, as the plaintext baseline does)"
                )));
            }
            return blindfold_format::open_output(&sk, None, bytes, name)
                .map_err(|e| Error::sealed(name, e));
        };
        let id = DatasetId::from_hex(&src.dataset_id).ok_or_else(|| {
            Error::sealed(
                name,
                blindfold_format::Error::Malformed {
                    object: blindfold_format::Object::Output(name.into()),
                    what: "source dataset_id".into(),
                },
            )
        })?;
        let (rec, key) = self.dataset(&id)?;
        let opened = blindfold_format::open_output(&sk, Some(&key), bytes, name)
            .map_err(|e| Error::sealed(name, e))?;
        let digest: Option<[u8; 32]> = hex::decode(&src.manifest_sha256)
            .ok()
            .and_then(|d| d.try_into().ok());
        if !digest.is_some_and(|d| rec.published(src.version, &d)) {
            return Err(Error::RolledBack {
                location: name.into(),
                what: format!(
                    "made from version {} of dataset {id} with a manifest this key store never sealed",
                    src.version
                ),
            });
        }
        Ok(opened)
    }

    /// The owner's HPKE public key (X25519, 32 bytes): sealed models are encrypted to it.
    pub fn identity_public(&self) -> &[u8] {
        &self.identity_public
    }

    fn record_path(&self, id: &DatasetId) -> PathBuf {
        self.home
            .join(DATASETS_DIR)
            .join(format!("{}.json", id.to_hex()))
    }

    /// Records a new dataset's key. Refuses to replace an existing record.
    pub fn add_dataset(
        &self,
        id: &DatasetId,
        suite: Suite,
        key: &DatasetKey,
        version: u64,
        manifest_sha256: &[u8; 32],
        location: &str,
    ) -> Result<()> {
        let path = self.record_path(id);
        if path.exists() {
            return Err(Error::Bug(format!(
                "dataset id {id} already in the key store"
            )));
        }
        let digest = hex::encode(manifest_sha256);
        let rec = DatasetRecord {
            format: RECORD_FORMAT,
            dataset_id: id.to_hex(),
            suite: suite.name().into(),
            nonce: String::new(),
            wrapped_key: String::new(),
            version,
            manifest_sha256: digest.clone(),
            location: location.into(),
            history: vec![Published {
                version,
                manifest_sha256: digest,
            }],
        };
        self.write_record(rec, key)
    }

    /// Wraps `key` under the master key with the record's fields as associated data,
    /// and writes the record.
    fn write_record(&self, mut rec: DatasetRecord, key: &DatasetKey) -> Result<()> {
        let id =
            DatasetId::from_hex(&rec.dataset_id).ok_or_else(|| Error::Bug("record id".into()))?;
        rec.format = RECORD_FORMAT;
        let (nonce, wrapped_key) = wrap(&self.master, &rec.aad(&id), key.expose_secret())?;
        rec.nonce = nonce;
        rec.wrapped_key = wrapped_key;
        let json = serde_json::to_vec_pretty(&rec).map_err(|e| Error::Bug(e.to_string()))?;
        write_private(&self.record_path(&id), &json)
    }

    /// Removes a dataset record (used to undo a seal that failed before publishing).
    pub fn remove_dataset(&self, id: &DatasetId) -> Result<()> {
        let p = self.record_path(id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// The record and unwrapped key of a dataset. A record whose fields were edited
    /// does not unwrap, and is refused.
    pub fn dataset(&self, id: &DatasetId) -> Result<(DatasetRecord, DatasetKey)> {
        let p = self.record_path(id);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::KeyStore(format!(
                    "no key for dataset {id} in {} (it was sealed with another key store)",
                    self.home.display()
                )))
            }
            Err(e) => return Err(Error::io(p, e)),
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::KeyStore(format!("{} is malformed: {e}", p.display())))?;
        if v.get("format").and_then(|f| f.as_u64()) != Some(RECORD_FORMAT as u64) {
            return Err(Error::KeyStore(format!(
                "{} was written by an older blindfold, whose records did not authenticate their version and digest: run `blindfold keys upgrade`",
                p.display()
            )));
        }
        let rec: DatasetRecord = serde_json::from_value(v)
            .map_err(|e| Error::KeyStore(format!("{} is malformed: {e}", p.display())))?;
        if rec.dataset_id != id.to_hex() {
            return Err(Error::KeyStore(format!(
                "{} names another dataset",
                p.display()
            )));
        }
        let raw = unwrap(&self.master, &rec.aad(id), &rec.nonce, &rec.wrapped_key).ok_or_else(
            || {
                Error::KeyStore(format!(
                    "{}: the key does not unwrap with the record's fields: the record was edited or damaged",
                    p.display()
                ))
            },
        )?;
        let key = DatasetKey::from_slice(&raw)
            .map_err(|_| Error::KeyStore("dataset key has the wrong length".into()))?;
        Ok((rec, key))
    }

    /// Records that this key store sealed `version` with manifest `manifest_sha256`,
    /// before that manifest is written: a crash between the two leaves a version the
    /// owner's tools still recognise.
    pub fn add_version(
        &self,
        id: &DatasetId,
        version: u64,
        manifest_sha256: &[u8; 32],
    ) -> Result<()> {
        let (mut rec, key) = self.dataset(id)?;
        if version <= rec.version {
            return Err(Error::Bug(format!(
                "version {version} is not newer than the recorded {}",
                rec.version
            )));
        }
        // At most one version waits to be confirmed: one left by a crash (or an earlier
        // attempt) whose manifest was never made the latest goes, so that no output can
        // name a manifest that was perhaps never written.
        let latest = rec.version;
        rec.history.retain(|p| p.version <= latest);
        rec.history.push(Published {
            version,
            manifest_sha256: hex::encode(manifest_sha256),
        });
        self.write_record(rec, &key)
    }

    /// Holds the dataset's record for one writer (`seal --update`) until the returned
    /// guard is dropped; a second writer waits. An advisory lock on
    /// `datasets/<id>.lock`, released by the system if the process dies.
    pub fn lock_dataset(&self, id: &DatasetId) -> Result<DatasetLock> {
        let path = self
            .home
            .join(DATASETS_DIR)
            .join(format!("{}.lock", id.to_hex()));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.lock().map_err(|e| Error::io(&path, e))?;
        Ok(DatasetLock(f))
    }

    /// Makes a version this key store sealed the latest (its manifest is in storage).
    pub fn set_version(
        &self,
        id: &DatasetId,
        version: u64,
        manifest_sha256: &[u8; 32],
    ) -> Result<()> {
        let (mut rec, key) = self.dataset(id)?;
        if !rec.published(version, manifest_sha256) {
            return Err(Error::Bug(format!(
                "version {version} was not sealed by this key store"
            )));
        }
        rec.version = version;
        rec.manifest_sha256 = hex::encode(manifest_sha256);
        self.write_record(rec, &key)
    }

    /// Rewrites the dataset records an older blindfold wrote (format 1: their version,
    /// digest and location were not authenticated) in the current format. A record is
    /// rewritten only if the manifest at its location opens with its key and is exactly
    /// the version and digest it records: the authenticated manifest vouches for the
    /// fields the record could not. Others are left as they were, with the reason.
    pub fn upgrade_records(&self) -> Result<Vec<Upgraded>> {
        let mut out = vec![];
        for p in self.record_files()? {
            let bytes = fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::KeyStore(format!("{} is malformed: {e}", p.display())))?;
            let id_hex = v
                .get("dataset_id")
                .and_then(|i| i.as_str())
                .unwrap_or_default()
                .to_owned();
            if v.get("format").and_then(|f| f.as_u64()) == Some(RECORD_FORMAT as u64) {
                out.push(Upgraded {
                    dataset_id: id_hex,
                    outcome: Err("already current".into()),
                });
                continue;
            }
            let outcome = self.upgrade_one(&v, &id_hex);
            out.push(Upgraded {
                dataset_id: id_hex,
                outcome,
            });
        }
        Ok(out)
    }

    fn upgrade_one(&self, v: &serde_json::Value, id_hex: &str) -> std::result::Result<u64, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct V1 {
            dataset_id: String,
            suite: String,
            nonce: String,
            wrapped_key: String,
            version: u64,
            manifest_sha256: String,
            location: String,
        }
        let r: V1 = serde_json::from_value(v.clone()).map_err(|e| format!("not a record: {e}"))?;
        let id = DatasetId::from_hex(id_hex).ok_or("bad dataset id")?;
        let mut aad = b"blindfold/v1/keystore/dataset/".to_vec();
        aad.extend_from_slice(&id.0);
        let raw = unwrap(&self.master, &aad, &r.nonce, &r.wrapped_key)
            .ok_or("its key does not unwrap")?;
        let key = DatasetKey::from_slice(&raw).map_err(|_| "its key has the wrong length")?;
        let digest: [u8; 32] = hex::decode(&r.manifest_sha256)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or("its manifest digest is not 32 bytes of hex")?;
        let store = blindfold_store::Store::open(&r.location, false)
            .map_err(|e| format!("{}: {e}", r.location))?;
        blindfold_dataset::SealedDataset::open_with_key(
            store,
            key.clone(),
            Some(blindfold_dataset::Expected {
                version: r.version,
                manifest_sha256: digest,
            }),
        )
        .map_err(|e| format!("the manifest at {} does not confirm it: {e}", r.location))?;
        let rec = DatasetRecord {
            format: RECORD_FORMAT,
            dataset_id: r.dataset_id,
            suite: r.suite,
            nonce: String::new(),
            wrapped_key: String::new(),
            version: r.version,
            manifest_sha256: r.manifest_sha256.clone(),
            location: r.location,
            history: vec![Published {
                version: r.version,
                manifest_sha256: r.manifest_sha256,
            }],
        };
        self.write_record(rec, &key).map_err(|e| e.to_string())?;
        Ok(r.version)
    }

    /// Every dataset record, sorted by id.
    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let mut out = vec![];
        for p in self.record_files()? {
            let Some(id) = p
                .file_stem()
                .and_then(|n| n.to_str())
                .and_then(DatasetId::from_hex)
            else {
                continue;
            };
            out.push(self.dataset(&id)?.0);
        }
        out.sort_by(|a, b| a.dataset_id.cmp(&b.dataset_id));
        Ok(out)
    }

    /// The `*.json` files of the records folder, sorted (none if it does not exist).
    fn record_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.home.join(DATASETS_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut paths = vec![];
        for e in rd {
            let p = e.map_err(|e| Error::io(&dir, e))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                paths.push(p);
            }
        }
        paths.sort();
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_open_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("ks");
        let ks = KeyStore::init(&home, None).unwrap();
        assert_eq!(ks.identity_public().len(), 32);
        assert!(matches!(
            KeyStore::init(&home, None),
            Err(Error::BadInput(_))
        ));
        let id = DatasetId::generate().unwrap();
        let key = DatasetKey::generate().unwrap();
        ks.add_dataset(&id, Suite::Aes256Gcm, &key, 1, &[7; 32], "x")
            .unwrap();
        let ks2 = KeyStore::open(&home, None).unwrap();
        let (rec, k2) = ks2.dataset(&id).unwrap();
        assert_eq!(k2.expose_secret(), key.expose_secret());
        assert_eq!(rec.version, 1);
        assert!(
            ks2.set_version(&id, 2, &[8; 32]).is_err(),
            "not sealed here"
        );
        // A version sealed but never confirmed is replaced by the next attempt's.
        ks2.add_version(&id, 2, &[9; 32]).unwrap();
        ks2.add_version(&id, 2, &[8; 32]).unwrap();
        assert_eq!(ks2.datasets().unwrap()[0].version, 1);
        assert_eq!(ks2.datasets().unwrap()[0].history.len(), 2);
        assert!(!ks2.datasets().unwrap()[0].published(2, &[9; 32]));
        ks2.set_version(&id, 2, &[8; 32]).unwrap();
        let rec = &ks2.datasets().unwrap()[0];
        assert_eq!(rec.version, 2);
        assert!(rec.published(1, &[7; 32]) && rec.published(2, &[8; 32]));
        assert!(!rec.published(2, &[7; 32]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [home.join(KEYSTORE_FILE), ks.record_path(&id)] {
                assert_eq!(
                    fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                    0o600,
                    "{f:?}"
                );
            }
            assert_eq!(
                fs::metadata(&home).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        // A wrapped key moved to another record does not unwrap.
        let other = DatasetId::generate().unwrap();
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(ks.record_path(&id)).unwrap()).unwrap();
        v["dataset_id"] = other.to_hex().into();
        fs::write(ks.record_path(&other), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(ks.dataset(&other), Err(Error::KeyStore(_))));
    }

    /// Every field of a dataset record is authenticated under the master key: lowering
    /// the version, changing the digest, the history or the location makes the record
    /// refused (before, only the wrapped key was checked).
    #[test]
    fn edited_record_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(dir.path(), None).unwrap();
        let id = DatasetId::generate().unwrap();
        let key = DatasetKey::generate().unwrap();
        ks.add_dataset(&id, Suite::Aes256Gcm, &key, 1, &[7; 32], "sealed")
            .unwrap();
        ks.add_version(&id, 2, &[8; 32]).unwrap();
        ks.set_version(&id, 2, &[8; 32]).unwrap();
        let path = ks.record_path(&id);
        let orig = fs::read(&path).unwrap();
        let edits: [(&str, serde_json::Value); 5] = [
            ("version", 1.into()),
            ("manifest_sha256", "07".repeat(32).into()),
            ("location", "elsewhere".into()),
            ("suite", "chacha20-poly1305".into()),
            (
                "history",
                serde_json::json!([{"version": 1, "manifest_sha256": "07".repeat(32)}]),
            ),
        ];
        for (field, value) in edits {
            let mut v: serde_json::Value = serde_json::from_slice(&orig).unwrap();
            v[field] = value;
            fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            let e = ks.dataset(&id).unwrap_err();
            assert!(
                matches!(&e, Error::KeyStore(m) if m.contains("edited")),
                "{field}: {e}"
            );
        }
        fs::write(&path, &orig).unwrap();
        assert_eq!(ks.dataset(&id).unwrap().0.version, 2);
        // A record of the format before fields were authenticated is refused, not trusted.
        let mut v: serde_json::Value = serde_json::from_slice(&orig).unwrap();
        v.as_object_mut().unwrap().remove("format");
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(
            matches!(ks.dataset(&id), Err(Error::KeyStore(m)) if m.contains("older blindfold"))
        );
    }

    /// A record of the format before fields were authenticated is rewritten only when
    /// the manifest in storage, opened with its key, is exactly what it records.
    #[test]
    fn old_records_are_upgraded_when_storage_confirms_them() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("ks");
        let ks = KeyStore::init(&home, None).unwrap();
        let input = dir.path().join("data.bin");
        fs::write(&input, b"some records to seal").unwrap();
        let mut reports = vec![];
        for name in ["a", "b"] {
            let imp = blindfold_dataset::import::import(
                &input,
                blindfold_dataset::import::Format::Raw,
                &blindfold_dataset::import::ImportOptions::default(),
            )
            .unwrap();
            let dest = dir.path().join(name);
            let store = blindfold_store::Store::open(dest.to_str().unwrap(), true).unwrap();
            reports.push(
                crate::seal::seal(
                    &ks,
                    imp,
                    &store,
                    &Default::default(),
                    &blindfold_dataset::NoProgress,
                )
                .unwrap(),
            );
        }
        // Rewrite both records as an older blindfold wrote them; b's records a wrong
        // version, which storage will not confirm.
        for (r, version) in reports.iter().zip([1u64, 7]) {
            let (rec, key) = ks.dataset(&r.dataset_id).unwrap();
            let mut aad = b"blindfold/v1/keystore/dataset/".to_vec();
            aad.extend_from_slice(&r.dataset_id.0);
            let (nonce, wrapped) = wrap(&ks.master, &aad, key.expose_secret()).unwrap();
            let v1 = serde_json::json!({
                "dataset_id": rec.dataset_id, "suite": rec.suite, "nonce": nonce,
                "wrapped_key": wrapped, "version": version,
                "manifest_sha256": rec.manifest_sha256, "location": rec.location,
            });
            fs::write(
                ks.record_path(&r.dataset_id),
                serde_json::to_vec(&v1).unwrap(),
            )
            .unwrap();
            assert!(ks.dataset(&r.dataset_id).is_err());
        }
        let done = ks.upgrade_records().unwrap();
        assert_eq!(done.len(), 2);
        let a = done
            .iter()
            .find(|u| u.dataset_id == reports[0].dataset_id.to_hex())
            .unwrap();
        assert_eq!(a.outcome, Ok(1));
        let b = done
            .iter()
            .find(|u| u.dataset_id == reports[1].dataset_id.to_hex())
            .unwrap();
        assert!(
            b.outcome.as_ref().unwrap_err().contains("does not confirm"),
            "{b:?}"
        );
        assert_eq!(ks.dataset(&reports[0].dataset_id).unwrap().0.version, 1);
        assert!(ks.dataset(&reports[1].dataset_id).is_err());
        // Running it again changes nothing.
        let again = ks.upgrade_records().unwrap();
        assert!(again.iter().all(|u| u.outcome.is_err()));
    }

    /// One writer at a time holds a dataset's record.
    #[test]
    fn a_dataset_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(dir.path(), None).unwrap();
        let id = DatasetId::generate().unwrap();
        let held = ks.lock_dataset(&id).unwrap();
        let path = dir
            .path()
            .join(DATASETS_DIR)
            .join(format!("{}.lock", id.to_hex()));
        let other = fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err(), "a second writer must wait");
        drop(held);
        other.try_lock().unwrap();
    }

    /// The identity's public key is recomputed from its secret: an edited keystore.json
    /// cannot redirect sealed models to another key.
    #[test]
    fn an_edited_identity_public_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(dir.path(), None).unwrap();
        let file = dir.path().join(KEYSTORE_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(v["identity"]["public"], hex::encode(ks.identity_public()));
        let (_, other) = <hpke::kem::X25519HkdfSha256 as hpke::Kem>::derive_keypair(&[9; 32]);
        v["identity"]["public"] = hex::encode(hpke::Serializable::to_bytes(&other)).into();
        fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = KeyStore::open(dir.path(), None).unwrap_err();
        assert!(
            matches!(&e, Error::KeyStore(m) if m.contains("was edited")),
            "{e}"
        );
    }

    #[test]
    fn passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::init(dir.path(), Some(b"correct horse")).unwrap();
        let pk = ks.identity_public().to_vec();
        assert!(
            matches!(KeyStore::open(dir.path(), None), Err(Error::KeyStore(m)) if m.contains("passphrase-protected"))
        );
        assert!(
            matches!(KeyStore::open(dir.path(), Some(b"wrong")), Err(Error::KeyStore(m)) if m.contains("wrong passphrase"))
        );
        assert_eq!(
            KeyStore::open(dir.path(), Some(b"correct horse"))
                .unwrap()
                .identity_public(),
            &pk[..]
        );
    }
}
