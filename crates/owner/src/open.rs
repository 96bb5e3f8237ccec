//! A sealed dataset as the owner opens it: with the key its key store holds, at a
//! version the key store sealed; its records back into files; its release object.

use std::path::{Path, PathBuf};

use blindfold_dataset::{claimed_id, Expected, Progress, SealedDataset};
use blindfold_store::Store;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::export::{exporter, OutputSet};
use crate::keystore::KeyStore;

/// Opens the dataset at `store` with the key the owner's key store holds for it, and
/// checks the manifest against what the key store recorded: the latest version, or a
/// newer one this key store sealed whose manifest it had not yet confirmed written (then
/// the record advances). Anything else is refused: an older version (rollback), another
/// manifest of a version (fork), or a version this key store never sealed (one made by
/// another holder of the dataset key, a training job say).
pub fn open(ks: &KeyStore, store: Store) -> Result<SealedDataset> {
    let id = claimed_id(&store)?;
    let (rec, key) = ks.dataset(&id)?;
    let recorded = Expected {
        version: rec.version,
        manifest_sha256: hex::decode(&rec.manifest_sha256)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::KeyStore("damaged record: manifest digest".into()))?,
    };
    let ds = SealedDataset::open_with_key(store, key, None)?;
    let (version, digest) = (ds.manifest().version, ds.manifest_sha256());
    if version > rec.version && rec.published(version, &digest) {
        ks.set_version(&id, version, &digest)?;
    } else if let Some(what) = recorded.mismatch(version, &digest) {
        return Err(Error::RolledBack {
            location: ds.store().location().to_owned(),
            what,
        });
    }
    Ok(ds)
}

/// Decrypts the whole dataset into the original files under `dir`. Files appear only
/// once every chunk has been verified; on any error none is left behind.
pub fn open_to_dir(
    ds: &SealedDataset,
    dir: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    let meta = ds.metadata()?;
    let m = ds.manifest();
    let mut exp = exporter(&meta, &m.schema)?;
    let mut out = OutputSet::new(dir, force)?;
    let total: u64 = m.total_records() * m.schema.record_size() as u64;
    progress.begin("opening", total);
    for split in &m.splits {
        exp.begin_split(&mut out, &split.name, split.records)?;
        ds.for_each_chunk(split, progress, |pt| exp.records(&mut out, pt))?;
        exp.end_split(&mut out)?;
    }
    let files = out.commit()?;
    progress.end();
    Ok(files)
}

/// What the owner hands the key broker at registration (and a stock KBS): the key, and
/// the manifest digest and version a job must see.
pub struct Release {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// The dataset key.
    pub key: Zeroizing<[u8; 32]>,
    /// SHA-256 of the manifest.
    pub manifest_sha256: [u8; 32],
    /// Manifest version.
    pub version: u64,
}

/// The release object of a dataset the owner opened.
pub fn release(ds: &SealedDataset) -> Release {
    Release {
        dataset_id: ds.manifest().dataset_id.to_hex(),
        key: Zeroizing::new(*ds.key().expose_secret()),
        manifest_sha256: ds.manifest_sha256(),
        version: ds.manifest().version,
    }
}
