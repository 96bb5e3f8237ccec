//! Exporters: a sealed dataset's records back into the original files (`blindfold
//! open`), written through an [`OutputSet`] so that all files appear or none. Only the
//! owner writes plaintext to files: the trusted zone's crates cannot reach this module.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use blindfold_format::{DType, Schema};
use serde_json::Value;

use crate::error::{Error, Result};

mod csv;
mod idx;
mod npy;
mod raw;

/// Receives the records of each split, in order, and writes the original files.
pub trait Exporter {
    /// Starts a split.
    fn begin_split(&mut self, out: &mut OutputSet, split: &str, records: u64) -> Result<()>;
    /// Writes the next records of the current split.
    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()>;
    /// Ends the current split.
    fn end_split(&mut self, out: &mut OutputSet) -> Result<()>;
}

/// The exporter for a sealed dataset's metadata.
pub fn exporter(metadata: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    let importer = metadata
        .get("importer")
        .and_then(Value::as_str)
        .unwrap_or("");
    match importer {
        "raw" => raw::exporter(metadata, schema),
        "idx" => idx::exporter(metadata, schema),
        "npy" => npy::exporter(metadata, schema),
        "csv" => csv::exporter(metadata, schema),
        other => Err(Error::BadInput(format!(
            "this dataset was sealed by an importer this build does not know ({other:?})"
        ))),
    }
}

pub(crate) fn meta_str<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadInput(format!("sealed metadata lacks {key:?}")))
}

/// A set of output files, written under temporary names and put in place together by
/// [`OutputSet::commit`]: all of them or, on an error, none (files they replaced are
/// put back). Dropped without a commit, it deletes them.
///
/// Into a folder that does not exist yet, the files are written in a staging folder
/// beside it, renamed to the folder's name in one step: even a crash leaves either no
/// folder or the whole set (and perhaps a `.blindfold-tmp-*` staging folder). Into an
/// existing folder the files are renamed one by one; an error undoes the ones done,
/// but a crash in between can leave some in place.
pub struct OutputSet {
    dir: PathBuf,
    /// The staging folder, when `dir` did not exist.
    staging: Option<tempfile::TempDir>,
    force: bool,
    files: Vec<(
        tempfile::NamedTempFile,
        std::io::BufWriter<fs::File>,
        PathBuf,
    )>,
    /// Per file: bytes written since its writeback was last started, and the helper
    /// that starts it.
    flushers: Vec<(u64, Flusher)>,
}

/// Bytes written between two starts of writeback.
const FLUSH_EVERY: u64 = 64 << 20;

/// A helper thread that syncs a file's data to disk each time it is told to, so that
/// writeback runs while the file is still being written and the sync at commit has
/// little left to wait for (the owner's `open` of a large dataset is disk-bound).
/// Its errors are ignored: the sync at commit reports them.
struct Flusher {
    tx: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn new(f: fs::File) -> Flusher {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                let _ = f.sync_data();
            }
        });
        Flusher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn kick(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }

    /// Stops the helper after its current sync.
    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

impl OutputSet {
    /// Output into `dir` (created if missing). Existing files are only replaced when
    /// `force` is set.
    pub fn new(dir: &Path, force: bool) -> Result<Self> {
        let staging = if dir.exists() {
            None
        } else {
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            Some(
                tempfile::Builder::new()
                    .prefix(".blindfold-tmp-")
                    .tempdir_in(parent)
                    .map_err(|e| Error::io(parent, e))?,
            )
        };
        Ok(OutputSet {
            dir: dir.to_owned(),
            staging,
            force,
            files: vec![],
            flushers: vec![],
        })
    }

    /// Creates an output file named `name` (a plain file name); returns its handle.
    pub fn create(&mut self, name: &str) -> Result<usize> {
        if name.is_empty()
            || name.contains('/')
            || name.contains('\\')
            || name == "."
            || name == ".."
        {
            return Err(Error::BadInput(format!(
                "refusing to write a file named {name:?}"
            )));
        }
        let target = self.dir.join(name);
        if target.is_dir() {
            return Err(Error::BadInput(format!(
                "{} is a folder; refusing to replace it",
                target.display()
            )));
        }
        if !self.force && target.exists() {
            return Err(Error::OutputExists(target.display().to_string()));
        }
        if self.files.iter().any(|(_, _, t)| *t == target) {
            return Err(Error::BadInput(format!("two outputs named {name:?}")));
        }
        let tmp_dir = self
            .staging
            .as_ref()
            .map_or(self.dir.clone(), |s| s.path().to_owned());
        let tmp = tempfile::Builder::new()
            .prefix(".blindfold-tmp-")
            .tempfile_in(&tmp_dir)
            .map_err(|e| Error::io(&tmp_dir, e))?;
        let f = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        let for_flusher = f.try_clone().map_err(|e| Error::io(tmp.path(), e))?;
        self.flushers.push((0, Flusher::new(for_flusher)));
        self.files
            .push((tmp, std::io::BufWriter::with_capacity(1 << 20, f), target));
        Ok(self.files.len() - 1)
    }

    /// Appends to output `h`.
    pub fn write(&mut self, h: usize, data: &[u8]) -> Result<()> {
        let (_, w, t) = &mut self.files[h];
        w.write_all(data).map_err(|e| Error::io(t.clone(), e))?;
        let (since, flusher) = &mut self.flushers[h];
        *since += data.len() as u64;
        if *since >= FLUSH_EVERY {
            *since = 0;
            flusher.kick();
        }
        Ok(())
    }

    /// Flushes, syncs and puts every file in place, all or none; returns their paths.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        for (_, f) in &mut self.flushers {
            f.stop();
        }
        for (_, w, t) in &mut self.files {
            w.flush().map_err(|e| Error::io(t.clone(), e))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| Error::io(t.clone(), e))?;
        }
        let files: Vec<_> = self.files.drain(..).collect();
        let out: Vec<PathBuf> = files.iter().map(|(_, _, t)| t.clone()).collect();
        if let Some(staging) = self.staging.take() {
            // Every file under its own name inside the staging folder, then the folder
            // renamed into place: one step.
            for (tmp, _, target) in files {
                let name = target.file_name().expect("checked in create");
                tmp.persist(staging.path().join(name))
                    .map_err(|e| Error::io(&target, e.error))?;
            }
            sync_dir(staging.path());
            let staged = staging.keep();
            if let Err(e) = fs::rename(&staged, &self.dir) {
                let _ = fs::remove_dir_all(&staged);
                return Err(Error::io(&self.dir, e));
            }
        } else {
            // One by one, keeping what each replaced until all are in place.
            let mut done: Vec<(PathBuf, Option<PathBuf>)> = vec![];
            for (tmp, _, target) in files {
                match self.put_in_place(tmp, &target) {
                    Ok(backup) => done.push((target, backup)),
                    Err(e) => {
                        for (t, backup) in done.into_iter().rev() {
                            let _ = fs::remove_file(&t);
                            if let Some(b) = backup {
                                let _ = fs::rename(b, &t);
                            }
                        }
                        sync_dir(&self.dir);
                        return Err(e);
                    }
                }
            }
            for (_, backup) in done {
                if let Some(b) = backup {
                    let _ = fs::remove_file(b);
                }
            }
        }
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent);
        }
        sync_dir(&self.dir);
        Ok(out)
    }

    /// Renames `tmp` to `target`, first moving a file already there (with `force`) to
    /// a backup name, which it returns.
    fn put_in_place(&self, tmp: tempfile::NamedTempFile, target: &Path) -> Result<Option<PathBuf>> {
        let backup = if target.exists() {
            let b = tempfile::Builder::new()
                .prefix(".blindfold-old-")
                .tempfile_in(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?
                .into_temp_path()
                .keep()
                .map_err(|e| Error::io(&self.dir, e.error))?;
            fs::rename(target, &b).map_err(|e| Error::io(target, e))?;
            Some(b)
        } else {
            None
        };
        if let Err(e) = tmp.persist(target) {
            if let Some(b) = &backup {
                let _ = fs::rename(b, target);
            }
            return Err(Error::io(target, e.error));
        }
        Ok(backup)
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The little-endian bytes of one element of `dtype` formatted as text (CSV export).
pub(crate) fn format_element(dtype: DType, b: &[u8]) -> String {
    macro_rules! le {
        ($t:ty) => {
            <$t>::from_le_bytes(b.try_into().expect("element size")).to_string()
        };
    }
    match dtype {
        DType::U8 => le!(u8),
        DType::I8 => le!(i8),
        DType::U16 => le!(u16),
        DType::I16 => le!(i16),
        DType::U32 => le!(u32),
        DType::I32 => le!(i32),
        DType::U64 => le!(u64),
        DType::I64 => le!(i64),
        DType::F32 => le!(f32),
        DType::F64 => le!(f64),
    }
}

#[cfg(test)]
mod output_set_tests {
    use super::*;

    fn names(dir: &Path, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        v.sort();
        v
    }

    /// A commit that fails on its second file leaves the folder as it was: the first
    /// file, already renamed into place, is taken back and the file it replaced
    /// restored (before, it stayed: a partial output).
    #[test]
    fn a_failed_commit_leaves_no_partial_output() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("out");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a"), b"old a").unwrap();
        let mut set = OutputSet::new(&dir, true).unwrap();
        let a = set.create("a").unwrap();
        set.write(a, b"new a").unwrap();
        let before = names(&dir, ".blindfold-tmp-");
        let b = set.create("b").unwrap();
        set.write(b, b"new b").unwrap();
        // b's temporary file vanishes before the commit: its rename fails.
        let b_tmp: Vec<_> = names(&dir, ".blindfold-tmp-")
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        assert_eq!(b_tmp.len(), 1);
        fs::remove_file(dir.join(&b_tmp[0])).unwrap();
        assert!(set.commit().is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"old a");
        assert!(!dir.join("b").exists());
        assert_eq!(
            names(&dir, ""),
            vec!["a".to_string()],
            "nothing else is left"
        );
    }

    /// Into a folder that does not exist, the set appears whole or not at all.
    #[test]
    fn a_new_folder_appears_with_every_file_at_once() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("new");
        let mut set = OutputSet::new(&dir, false).unwrap();
        for n in ["x", "y"] {
            let h = set.create(n).unwrap();
            set.write(h, n.as_bytes()).unwrap();
            assert!(!dir.exists(), "nothing visible before the commit");
        }
        let files = set.commit().unwrap();
        assert_eq!(files, vec![dir.join("x"), dir.join("y")]);
        assert_eq!(names(&dir, ""), vec!["x".to_string(), "y".to_string()]);
        assert_eq!(
            names(d.path(), ""),
            vec!["new".to_string()],
            "no staging folder left"
        );
        // Dropped without a commit, a set leaves nothing behind.
        let other = d.path().join("other");
        let mut set = OutputSet::new(&other, false).unwrap();
        let h = set.create("z").unwrap();
        set.write(h, b"z").unwrap();
        drop(set);
        assert_eq!(names(d.path(), ""), vec!["new".to_string()]);
        // A folder in the way of a file is refused up front.
        let mut set = OutputSet::new(d.path(), true).unwrap();
        assert!(matches!(set.create("new"), Err(Error::BadInput(_))));
    }
}
