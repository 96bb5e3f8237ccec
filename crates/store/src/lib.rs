//! Where sealed bytes live: a local folder or an S3-compatible object store.
//!
//! This crate moves ciphertext only. It never sees a key and has no dependency on the
//! format or on any crate that handles plaintext. The API is synchronous: an internal
//! Tokio runtime drives `object_store`, so callers on plain threads need not be async.
//!
//! Locations:
//! - a plain path, or `file:///abs/path`: a local folder (created when writing);
//! - `s3://bucket/prefix`: an S3-compatible store, configured from the usual
//!   `AWS_*` environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`);
//! - `memory://`: in process memory, for tests.
#![forbid(unsafe_code)]

use std::ops::Range;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{
    path::Path as ObjPath, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use tokio::runtime::Runtime;

/// Size of one multipart part (S3 needs at least 5 MiB but for the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploaded at once by a writer.
const PART_CONCURRENCY: usize = 4;

/// A storage error. None of these carries object contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("{location}: no object {path:?}")]
    NotFound {
        /// The store.
        location: String,
        /// The object path.
        path: String,
    },
    /// The location string is not one this crate understands.
    #[error("bad storage location {0:?}: {1}")]
    BadLocation(String, String),
    /// The backend failed (I/O error, network, permissions, ...).
    #[error("{location}: {op} {path:?} failed: {source}")]
    Backend {
        /// The store.
        location: String,
        /// What was attempted.
        op: &'static str,
        /// The object path.
        path: String,
        /// The backend's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The internal runtime could not be started.
    #[error("could not start the storage runtime: {0}")]
    Runtime(std::io::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// One storage location: a local folder or an object-store prefix.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    rt: Arc<Runtime>,
    location: String,
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

fn runtime() -> Result<Arc<Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blindfold-store")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(Error::Runtime)
}

impl Store {
    /// Opens a location. A local folder is created when `create` is true, and must exist
    /// otherwise.
    pub fn open(location: &str, create: bool) -> Result<Store> {
        let bad = |why: &str| Error::BadLocation(location.to_owned(), why.to_owned());
        let rt = runtime()?;
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Store {
                inner,
                rt,
                location: location.to_owned(),
                local_root: None,
            });
        }
        if location == "memory://" {
            return Ok(Store {
                inner: Arc::new(object_store::memory::InMemory::new()),
                rt,
                location: location.to_owned(),
                local_root: None,
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(bad("supported schemes are file://, s3:// and memory://"));
        }
        let path = std::path::PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        if path.as_os_str().is_empty() {
            return Err(bad("empty path"));
        }
        if create {
            std::fs::create_dir_all(&path).map_err(|e| bad(&e.to_string()))?;
        } else if !path.is_dir() {
            return Err(bad("no such folder"));
        }
        let root = path.canonicalize().map_err(|e| bad(&e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Store {
            inner: Arc::new(fs),
            rt,
            location: location.to_owned(),
            local_root: Some(root),
        })
    }

    /// The location as given.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder behind a local store.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    fn err(&self, op: &'static str, path: &str, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                location: self.location.clone(),
                path: path.to_owned(),
            },
            source => Error::Backend {
                location: self.location.clone(),
                op,
                path: path.to_owned(),
                source: Box::new(source),
            },
        }
    }

    /// The whole object.
    pub fn get(&self, path: &str) -> Result<Vec<u8>> {
        let p = ObjPath::from(path);
        self.rt
            .block_on(async {
                let r = self.inner.get(&p).await?;
                r.bytes().await
            })
            .map(Vec::from)
            .map_err(|e| self.err("read", path, e))
    }

    /// Bytes `range` of the object. A range past the end is an error.
    pub fn get_range(&self, path: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let p = ObjPath::from(path);
        self.rt
            .block_on(self.inner.get_range(&p, range))
            .map(Vec::from)
            .map_err(|e| self.err("read range of", path, e))
    }

    /// Reads bytes `range` of the object into `buf` (replacing its contents), reusing its
    /// allocation. On a local folder this is one positional read.
    pub fn get_range_into(&self, path: &str, range: Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        let Some(root) = &self.local_root else {
            *buf = self.get_range(path, range)?;
            return Ok(());
        };
        use std::os::unix::fs::FileExt;
        let len = (range.end - range.start) as usize;
        buf.clear();
        buf.resize(len, 0);
        let f = std::fs::File::open(root.join(path))
            .map_err(|e| self.io_err("read range of", path, e))?;
        f.read_exact_at(buf, range.start)
            .map_err(|e| self.io_err("read range of", path, e))
    }

    fn io_err(&self, op: &'static str, path: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound {
                location: self.location.clone(),
                path: path.to_owned(),
            };
        }
        Error::Backend {
            location: self.location.clone(),
            op,
            path: path.to_owned(),
            source: Box::new(object_store::Error::Generic {
                store: "local",
                source: Box::new(e),
            }),
        }
    }

    /// The object's size, or `None` when it does not exist.
    pub fn size(&self, path: &str) -> Result<Option<u64>> {
        let p = ObjPath::from(path);
        match self.rt.block_on(self.inner.head(&p)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("stat", path, e)),
        }
    }

    /// Writes a whole object atomically (readers see the old object or the new one) and
    /// durably (on a local folder, the file and its folder are synced).
    pub fn put(&self, path: &str, data: Vec<u8>) -> Result<()> {
        let p = ObjPath::from(path);
        self.rt
            .block_on(self.inner.put(&p, PutPayload::from(data)))
            .map_err(|e| self.err("write", path, e))?;
        self.sync(path)
    }

    /// On a local folder, flushes an object and its folder to disk (object stores make
    /// writes durable themselves; there this does nothing).
    pub fn sync(&self, path: &str) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(path);
        let io = |e: std::io::Error| self.io_err("sync", path, e);
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub fn delete(&self, path: &str) -> Result<()> {
        let p = ObjPath::from(path);
        match self.rt.block_on(self.inner.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", path, e)),
        }
    }

    /// Objects under `prefix`, with their sizes, sorted by path.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = ObjPath::from(prefix);
        let mut v: Vec<(String, u64)> = self
            .rt
            .block_on(self.inner.list(Some(&p)).try_collect::<Vec<_>>())
            .map_err(|e| self.err("list", prefix, e))?
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Whether `path` is an upload in progress, or one a killed process left behind
    /// (a local folder's temporary file; an S3 multipart upload is not an object).
    pub fn is_partial_upload(path: &str) -> bool {
        path.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(PARTIAL_UPLOAD_PREFIX))
    }

    /// A streaming writer for a large object. Nothing is visible at `path` until
    /// [`ObjectWriter::finish`]; dropping the writer unfinished aborts the upload.
    pub fn writer(&self, path: &str) -> Result<ObjectWriter> {
        if let Some(root) = &self.local_root {
            let target = root.join(path);
            let dir = target
                .parent()
                .expect("object paths have a folder")
                .to_owned();
            std::fs::create_dir_all(&dir).map_err(|e| self.io_err("start writing", path, e))?;
            let tmp = tempfile::Builder::new()
                .prefix(PARTIAL_UPLOAD_PREFIX)
                .tempfile_in(&dir)
                .map_err(|e| self.io_err("start writing", path, e))?;
            return Ok(ObjectWriter {
                store: self.clone(),
                path: path.to_owned(),
                inner: None,
                local: Some((std::io::BufWriter::with_capacity(1 << 20, tmp), target)),
                written: 0,
            });
        }
        let p = ObjPath::from(path);
        let upload = self
            .rt
            .block_on(self.inner.put_multipart(&p))
            .map_err(|e| self.err("start writing", path, e))?;
        Ok(ObjectWriter {
            store: self.clone(),
            path: path.to_owned(),
            inner: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            local: None,
            written: 0,
        })
    }
}

/// The name prefix of a local upload's temporary file, beside its target.
const PARTIAL_UPLOAD_PREFIX: &str = ".blindfold-upload-";

/// A streaming upload; see [`Store::writer`].
pub struct ObjectWriter {
    store: Store,
    path: String,
    inner: Option<WriteMultipart>,
    /// Local folder: a temporary file beside the target, renamed on finish.
    local: Option<(
        std::io::BufWriter<tempfile::NamedTempFile>,
        std::path::PathBuf,
    )>,
    written: u64,
}

impl ObjectWriter {
    /// Appends bytes. Blocks while too many parts are in flight.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Some((tmp, _)) = &mut self.local {
            use std::io::Write;
            tmp.write_all(data)
                .map_err(|e| self.store.io_err("write", &self.path, e))?;
            self.written += data.len() as u64;
            return Ok(());
        }
        let w = self.inner.as_mut().expect("writer used after finish");
        {
            let _enter = self.store.rt.enter();
            w.write(data);
        }
        self.written += data.len() as u64;
        self.store
            .rt
            .block_on(w.wait_for_capacity(PART_CONCURRENCY))
            .map_err(|e| self.store.err("write", &self.path, e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the upload; the object appears at its path in one step. On a local
    /// folder it is not yet durable: call [`Store::sync`] before publishing anything that
    /// refers to it (deferring the flush lets several objects be written back at once).
    pub fn finish(mut self) -> Result<()> {
        if let Some((w, target)) = self.local.take() {
            let tmp = w
                .into_inner()
                .map_err(|e| self.store.io_err("write", &self.path, e.into_error()))?;
            tmp.persist(&target)
                .map_err(|e| self.store.io_err("finish writing", &self.path, e.error))?;
            return Ok(());
        }
        let w = self.inner.take().expect("writer used after finish");
        {
            let _enter = self.store.rt.enter();
            self.store
                .rt
                .block_on(w.finish())
                .map_err(|e| self.store.err("finish writing", &self.path, e))?;
        }
        self.store.sync(&self.path)
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if let Some(w) = self.inner.take() {
            let _enter = self.store.rt.enter();
            let _ = self.store.rt.block_on(w.abort());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(store: &Store) {
        assert_eq!(store.size("a/b").unwrap(), None);
        store.put("a/b", b"hello".to_vec()).unwrap();
        assert_eq!(store.get("a/b").unwrap(), b"hello");
        assert_eq!(store.get_range("a/b", 1..3).unwrap(), b"el");
        assert_eq!(store.size("a/b").unwrap(), Some(5));
        let mut w = store.writer("a/big").unwrap();
        let part: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
        for _ in 0..4 {
            w.write(&part).unwrap();
        }
        assert_eq!(
            store.size("a/big").unwrap(),
            None,
            "invisible before finish"
        );
        w.finish().unwrap();
        let all = store.get("a/big").unwrap();
        assert_eq!(all.len(), 12 << 20);
        assert_eq!(&all[(3 << 20) + 7..(3 << 20) + 9], &part[7..9]);
        let aborted = {
            let mut w = store.writer("a/aborted").unwrap();
            w.write(&part).unwrap();
            w
        };
        drop(aborted);
        assert_eq!(
            store.size("a/aborted").unwrap(),
            None,
            "aborted upload left an object"
        );
        let names: Vec<_> = store
            .list("a")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["a/b".to_string(), "a/big".to_string()]);
        store.delete("a/b").unwrap();
        store.delete("a/b").unwrap();
        assert!(matches!(store.get("a/b"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("x").to_str().unwrap(), true).unwrap();
        check(&store);
        // Nothing but the finished objects is left in the folder (aborted uploads and
        // temporary files are gone).
        let mut left: Vec<_> = walk(dir.path());
        left.sort();
        assert_eq!(left, vec!["x/a/big".to_string()]);
    }

    #[test]
    fn memory() {
        check(&Store::open("memory://", false).unwrap());
    }

    #[test]
    fn bad_locations() {
        assert!(matches!(
            Store::open("ftp://x", false),
            Err(Error::BadLocation(..))
        ));
        assert!(matches!(
            Store::open("/nonexistent/blindfold", false),
            Err(Error::BadLocation(..))
        ));
        assert!(matches!(
            Store::open("s3://", false),
            Err(Error::BadLocation(..))
        ));
    }

    fn walk(root: &std::path::Path) -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out
    }
}
