//! IDX files (the MNIST family): an images file and, optionally, its labels file, plain
//! or gzip. A folder imports every `<prefix>-images-idx<N>-ubyte[.gz]` with its
//! `<prefix>-labels-idx1-ubyte[.gz]`; the prefix names the split (`t10k` becomes `test`).
//!
//! IDX stores multi-byte elements big-endian; records are little-endian (§3), so they
//! are swapped on the way in and back on the way out: `open` rebuilds the uncompressed
//! files byte for byte.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use blindfold_format::{DType, Schema};
use serde_json::json;

use super::{file_name, split_name, swap_bytes, Import, ImportOptions, SplitSource};
use crate::error::{Error, Result};

fn dtype_of(code: u8) -> Option<DType> {
    Some(match code {
        0x08 => DType::U8,
        0x09 => DType::I8,
        0x0B => DType::I16,
        0x0C => DType::I32,
        0x0D => DType::F32,
        0x0E => DType::F64,
        _ => return None,
    })
}

/// The IDX type code of `d`, if IDX has one.
pub fn code_of(d: DType) -> Option<u8> {
    Some(match d {
        DType::U8 => 0x08,
        DType::I8 => 0x09,
        DType::I16 => 0x0B,
        DType::I32 => 0x0C,
        DType::F32 => 0x0D,
        DType::F64 => 0x0E,
        _ => return None,
    })
}

/// A parsed IDX file: element type, dimensions, data converted to little-endian.
pub struct Idx {
    /// Element type.
    pub dtype: DType,
    /// Dimensions; the first counts items.
    pub dims: Vec<u32>,
    /// Elements, little-endian.
    pub data: Vec<u8>,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::BadInput(format!("{}: not valid gzip: {e}", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX header: element type, dimensions (the first counts items), its own length
/// and the data bytes it promises.
struct Header {
    dtype: DType,
    dims: Vec<u32>,
    len: usize,
    data_bytes: u64,
}

/// Parses the header at the front of `bytes` (which may end there); `what` names the
/// file in errors. `Ok(None)`: `bytes` is too short to hold the whole header.
fn parse_header(bytes: &[u8], what: &str) -> Result<Option<Header>> {
    let bad = |m: &str| Error::BadInput(format!("{what}: not an IDX file: {m}"));
    if bytes.len() < 4 {
        return Ok(None);
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic"));
    }
    let dtype = dtype_of(bytes[2])
        .ok_or_else(|| bad(&format!("unknown element type 0x{:02x}", bytes[2])))?;
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 1 + blindfold_format::MAX_DIMS {
        return Err(bad("bad number of dimensions"));
    }
    let len = 4 + 4 * ndim;
    if bytes.len() < len {
        return Ok(None);
    }
    let dims: Vec<u32> = bytes[4..len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let elems = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| bad("too large"))?;
    let data_bytes = elems
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| bad("too large"))?;
    if dims[1..].contains(&0) {
        return Err(bad("a dimension is zero"));
    }
    Ok(Some(Header {
        dtype,
        dims,
        len,
        data_bytes,
    }))
}

fn check_data_len(h: &Header, have: u64, what: &str) -> Result<()> {
    if have != h.data_bytes {
        return Err(Error::BadInput(format!(
            "{what}: not an IDX file: header promises {} data bytes, file has {have}",
            h.data_bytes
        )));
    }
    Ok(())
}

/// Parses IDX bytes; `what` names the file in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Idx> {
    let h = parse_header(bytes, what)?
        .ok_or_else(|| Error::BadInput(format!("{what}: not an IDX file: truncated header")))?;
    check_data_len(&h, (bytes.len() - h.len) as u64, what)?;
    let mut data = bytes[h.len..].to_vec();
    swap_bytes(&mut data, h.dtype.size());
    Ok(Idx {
        dtype: h.dtype,
        dims: h.dims,
        data,
    })
}

/// An IDX images file opened for streaming: its header read, the reader at its data.
/// Plain files are checked against the header's size at once; gzip ones as they are
/// read (the last read also checks that nothing follows).
fn open_stream(path: &Path) -> Result<(Header, Box<dyn Read + Send>, bool)> {
    let what = path.display().to_string();
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut raw = std::io::BufReader::with_capacity(1 << 20, f);
    let gz = std::io::BufRead::fill_buf(&mut raw)
        .map_err(|e| Error::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let mut r: Box<dyn Read + Send> = if gz {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    };
    let mut head = vec![0u8; 4];
    let truncated = || Error::BadInput(format!("{what}: not an IDX file: truncated header"));
    let read = |r: &mut Box<dyn Read + Send>, buf: &mut [u8]| {
        r.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => truncated(),
            _ if gz => Error::BadInput(format!("{what}: not valid gzip: {e}")),
            _ => Error::io(path, e),
        })
    };
    read(&mut r, &mut head)?;
    parse_header(&head, &what)?; // magic, type and rank before reading more
    head.resize(4 + 4 * head[3] as usize, 0);
    read(&mut r, &mut head[4..])?;
    let h = parse_header(&head, &what)?.ok_or_else(truncated)?;
    if !gz {
        check_data_len(&h, size - h.len as u64, &what)?;
    }
    Ok((h, r, gz))
}

/// Streams an IDX images file's records (converted to little-endian), each followed by
/// its label from the labels file (small, read whole). Memory: one read buffer.
struct IdxStream {
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    gz: bool,
    elem_size: usize,
    feature_size: usize,
    labels: Option<Vec<u8>>,
    label_size: usize,
    next: usize,
    total: usize,
}

impl IdxStream {
    fn io(&self, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::BadInput(format!(
                "{}: ends before the records its header promises (or changed while it was read)",
                self.path.display()
            )),
            _ if self.gz => {
                Error::BadInput(format!("{}: not valid gzip: {e}", self.path.display()))
            }
            _ => Error::io(&self.path, e),
        }
    }
}

impl super::RecordSource for IdxStream {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()> {
        let (fs, ls) = (self.feature_size, self.label_size);
        let n = buf.len() / (fs + ls);
        if self.next + n > self.total {
            return Err(Error::Bug("read past the last record".into()));
        }
        if ls == 0 {
            let r = self.reader.read_exact(buf);
            r.map_err(|e| self.io(e))?;
            swap_bytes(buf, self.elem_size);
        } else {
            for (k, rec) in buf.chunks_exact_mut(fs + ls).enumerate() {
                let r = self.reader.read_exact(&mut rec[..fs]);
                r.map_err(|e| self.io(e))?;
                swap_bytes(&mut rec[..fs], self.elem_size);
                let i = self.next + k;
                if let Some(l) = &self.labels {
                    rec[fs..].copy_from_slice(&l[i * ls..(i + 1) * ls]);
                }
            }
        }
        self.next += n;
        if self.next == self.total {
            let mut one = [0u8; 1];
            let r = self.reader.read(&mut one);
            if r.map_err(|e| self.io(e))? != 0 {
                return Err(Error::BadInput(format!(
                    "{}: more data than its header promises",
                    self.path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Finds image/label pairs in a folder, sorted with `train` first.
fn pairs_in(dir: &Path) -> Result<Vec<(String, PathBuf, Option<PathBuf>)>> {
    let mut images = vec![];
    let mut labels = vec![];
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let base = name.strip_suffix(".gz").unwrap_or(name);
        if let Some((prefix, _)) = base.split_once("-images-idx") {
            images.push((prefix.to_owned(), p.clone()));
        } else if let Some(prefix) = base.strip_suffix("-labels-idx1-ubyte") {
            labels.push((prefix.to_owned(), p.clone()));
        }
    }
    if images.is_empty() {
        return Err(Error::BadInput(format!(
            "{}: no IDX images files (<prefix>-images-idx3-ubyte[.gz]) in this folder",
            dir.display()
        )));
    }
    images.sort_by_key(|(p, _)| (p != "train", p.clone()));
    Ok(images
        .into_iter()
        .map(|(prefix, img)| {
            let lab = labels
                .iter()
                .find(|(p, _)| *p == prefix)
                .map(|(_, l)| l.clone());
            (prefix, img, lab)
        })
        .collect())
}

/// Imports a folder of IDX pairs, or one images file (with `--labels`).
pub fn import(input: &Path, opts: &ImportOptions) -> Result<Import> {
    let pairs = if input.is_dir() {
        if opts.labels.is_some() {
            return Err(Error::BadInput(
                "--labels goes with an images file, not a folder".into(),
            ));
        }
        pairs_in(input)?
    } else {
        let name = file_name(input)?;
        let prefix = name
            .split_once("-images-idx")
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        vec![(prefix, input.to_owned(), opts.labels.clone())]
    };
    let mut schema: Option<Schema> = None;
    let mut splits = vec![];
    let mut meta_splits = serde_json::Map::new();
    for (prefix, img_path, lab_path) in pairs {
        let split = match (&opts.split, input.is_dir()) {
            (Some(s), false) => s.clone(),
            _ => split_name(&prefix),
        };
        let (img, reader, gz) = open_stream(&img_path)?;
        let n = img.dims[0];
        let lab = match &lab_path {
            Some(lp) => {
                let l = parse(&read_maybe_gz(lp)?, &lp.display().to_string())?;
                if l.dims.len() != 1 || l.dims[0] != n {
                    return Err(Error::BadInput(format!(
                        "{}: {} labels for {} images in {}",
                        lp.display(),
                        l.dims[0],
                        n,
                        img_path.display()
                    )));
                }
                if matches!(l.dtype, DType::F32 | DType::F64) {
                    return Err(Error::BadInput(format!(
                        "{}: labels must be integers",
                        lp.display()
                    )));
                }
                Some(l)
            }
            None => None,
        };
        let s = Schema {
            dtype: img.dtype,
            shape: img.dims[1..].to_vec(),
            label: lab.as_ref().map(|l| l.dtype),
        };
        s.validate(&blindfold_format::Object::Unnamed)
            .map_err(|e| Error::BadInput(format!("{}: {e}", img_path.display())))?;
        match &schema {
            None => schema = Some(s.clone()),
            Some(prev) if *prev != s => {
                return Err(Error::BadInput(format!(
                    "{}: records differ in shape or type from the other splits",
                    img_path.display()
                )))
            }
            Some(_) => {}
        }
        if splits.iter().any(|x: &SplitSource| x.name == split) {
            return Err(Error::BadInput(format!(
                "two inputs map to split {split:?}"
            )));
        }
        meta_splits.insert(
            split.clone(),
            json!({
                "images": strip_gz(&file_name(&img_path)?),
                "labels": lab_path.as_deref().map(|p| file_name(p).map(|n| strip_gz(&n))).transpose()?,
            }),
        );
        splits.push(SplitSource {
            name: split,
            records: n as u64,
            source: Box::new(IdxStream {
                path: img_path.clone(),
                reader,
                gz,
                elem_size: img.dtype.size(),
                feature_size: s.feature_size(),
                labels: lab.map(|l| l.data),
                label_size: s.label.map_or(0, DType::size),
                next: 0,
                total: n as usize,
            }),
        });
    }
    Ok(Import {
        schema: schema.expect("at least one pair"),
        splits,
        metadata: json!({ "importer": "idx", "splits": meta_splits }),
    })
}

fn strip_gz(name: &str) -> String {
    name.strip_suffix(".gz").unwrap_or(name).to_owned()
}
