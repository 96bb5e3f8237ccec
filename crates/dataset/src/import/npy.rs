//! NumPy `.npy` (format versions 1–3): the first axis counts records, the rest is the
//! record shape. Little-endian or byte-order-free dtypes, C order only. Labels come
//! from an optional 1-D `.npy` (`--labels`): integers are classes, floats (`f4`, `f8`)
//! real values for regression. `open` writes the files back with
//! their original headers, byte for byte.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use blindfold_format::{DType, Schema};
use serde_json::json;

use super::{file_name, Import, ImportOptions, RecordSource, SplitSource};
use crate::error::{Error, Result};

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: DType,
    /// Array shape.
    pub shape: Vec<u64>,
    /// The header bytes as found (magic to the end of padding).
    pub raw: Vec<u8>,
}

fn descr_dtype(descr: &str) -> Option<DType> {
    let mut chars = descr.chars();
    let order = chars.next()?;
    let d = match chars.as_str() {
        "u1" => DType::U8,
        "i1" => DType::I8,
        "u2" => DType::U16,
        "i2" => DType::I16,
        "u4" => DType::U32,
        "i4" => DType::I32,
        "u8" => DType::U64,
        "i8" => DType::I64,
        "f4" => DType::F32,
        "f8" => DType::F64,
        _ => return None,
    };
    match order {
        '<' | '=' => Some(d),
        '|' | '>' if d.size() == 1 => Some(d),
        _ => None,
    }
}

fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("'{key}':");
    let start = dict.find(&k)? + k.len();
    let rest = dict[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// Reads a `.npy` header from `r`.
pub fn read_header(r: &mut impl Read, what: &str) -> Result<NpyHeader> {
    let bad = |m: &str| Error::BadInput(format!("{what}: not a supported .npy file: {m}"));
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|_| bad("too short"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let (len, lenbytes) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| bad("too short"))?;
            (u16::from_le_bytes(b) as usize, b.to_vec())
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| bad("too short"))?;
            (u32::from_le_bytes(b) as usize, b.to_vec())
        }
        v => return Err(bad(&format!("format version {v}"))),
    };
    if len > 1 << 20 {
        return Err(bad("header too long"));
    }
    let mut dict = vec![0u8; len];
    r.read_exact(&mut dict)
        .map_err(|_| bad("truncated header"))?;
    let text = std::str::from_utf8(&dict).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(text, "descr")
        .ok_or_else(|| bad("no descr"))?
        .trim_matches('\'');
    let dtype = descr_dtype(descr).ok_or_else(|| {
        bad(&format!(
            "dtype {descr:?} (supported: little-endian u1..u8, i1..i8, f4, f8)"
        ))
    })?;
    if dict_value(text, "fortran_order") != Some("False") {
        return Err(bad("Fortran order"));
    }
    let shape_s = dict_value(text, "shape").ok_or_else(|| bad("no shape"))?;
    let shape: Vec<u64> = shape_s
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("shape"))?;
    if shape.is_empty() {
        return Err(bad("a 0-d array has no records"));
    }
    let mut raw = pre.to_vec();
    raw.extend_from_slice(&lenbytes);
    raw.extend_from_slice(&dict);
    Ok(NpyHeader { dtype, shape, raw })
}

struct NpySource {
    data: BufReader<fs::File>,
    labels: Option<BufReader<fs::File>>,
    feature_size: usize,
    label_size: usize,
    scratch: Vec<u8>,
    path: PathBuf,
}

impl RecordSource for NpySource {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()> {
        let path = self.path.clone();
        let io = move |e: std::io::Error| {
            Error::BadInput(format!(
                "{}: {e} (did the file change while sealing?)",
                path.display()
            ))
        };
        let Some(labels) = &mut self.labels else {
            return self.data.read_exact(buf).map_err(io);
        };
        let rs = self.feature_size + self.label_size;
        let n = buf.len() / rs;
        self.scratch.resize(n * self.feature_size, 0);
        self.data.read_exact(&mut self.scratch).map_err(&io)?;
        let mut lab = vec![0u8; n * self.label_size];
        labels.read_exact(&mut lab).map_err(&io)?;
        for (k, rec) in buf.chunks_exact_mut(rs).enumerate() {
            rec[..self.feature_size]
                .copy_from_slice(&self.scratch[k * self.feature_size..(k + 1) * self.feature_size]);
            rec[self.feature_size..]
                .copy_from_slice(&lab[k * self.label_size..(k + 1) * self.label_size]);
        }
        Ok(())
    }
}

fn open_npy(path: &Path) -> Result<(NpyHeader, BufReader<fs::File>, u64)> {
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let h = read_header(&mut r, &path.display().to_string())?;
    let elems = h.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let want = elems
        .and_then(|e| e.checked_mul(h.dtype.size() as u64))
        .and_then(|b| b.checked_add(h.raw.len() as u64));
    if want != Some(size) {
        return Err(Error::BadInput(format!(
            "{}: the header's shape does not match the file size ({size} bytes)",
            path.display()
        )));
    }
    Ok((h, r, size))
}

/// Real-valued labels (regression targets) must be finite `f32` values: checked here,
/// before anything is sealed, not when a job trains.
fn check_real_labels(path: &Path, dtype: DType, count: u64) -> Result<()> {
    use std::io::Read;
    let (_, mut r, _) = open_npy(path)?;
    let size = dtype.size();
    let mut buf = vec![0u8; size * 8192];
    let mut at = 0u64;
    while at < count {
        let n = (count - at).min(8192) as usize;
        r.read_exact(&mut buf[..n * size])
            .map_err(|e| Error::io(path, e))?;
        for (i, v) in buf[..n * size].chunks_exact(size).enumerate() {
            let finite = match dtype {
                DType::F32 => f32::from_le_bytes(v.try_into().expect("4 bytes")).is_finite(),
                _ => (f64::from_le_bytes(v.try_into().expect("8 bytes")) as f32).is_finite(),
            };
            if !finite {
                return Err(Error::BadInput(format!(
                    "{}: label {} is not a finite f32 (labels that are real values are regression targets)",
                    path.display(),
                    at + i as u64
                )));
            }
        }
        at += n as u64;
    }
    Ok(())
}

/// Imports a `.npy` file, with optional labels.
pub fn import(input: &Path, opts: &ImportOptions) -> Result<Import> {
    let (h, data, _) = open_npy(input)?;
    let shape: Vec<u32> = h.shape[1..]
        .iter()
        .map(|&d| u32::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            Error::BadInput(format!(
                "{}: a record dimension is zero or too large",
                input.display()
            ))
        })?;
    let (labels, label_meta) = match &opts.labels {
        Some(lp) => {
            let (lh, lr, _) = open_npy(lp)?;
            if lh.shape != [h.shape[0]] {
                return Err(Error::BadInput(format!(
                    "{}: labels must be a 1-D array of {} items, found shape {:?}",
                    lp.display(),
                    h.shape[0],
                    lh.shape
                )));
            }
            if matches!(lh.dtype, DType::F32 | DType::F64) {
                check_real_labels(lp, lh.dtype, h.shape[0])?;
            }
            let m = json!({ "file": file_name(lp)?, "header": hex::encode(&lh.raw) });
            (Some((lh.dtype, lr)), Some(m))
        }
        None => (None, None),
    };
    let schema = Schema {
        dtype: h.dtype,
        shape,
        label: labels.as_ref().map(|(d, _)| *d),
    };
    schema
        .validate(&blindfold_format::Object::Unnamed)
        .map_err(|e| Error::BadInput(format!("{}: {e}", input.display())))?;
    let split = opts.split.clone().unwrap_or_else(|| "data".into());
    let metadata = json!({
        "importer": "npy",
        "split": split,
        "file": file_name(input)?,
        "header": hex::encode(&h.raw),
        "labels": label_meta,
    });
    Ok(Import {
        splits: vec![SplitSource {
            name: split,
            records: h.shape[0],
            source: Box::new(NpySource {
                data,
                feature_size: schema.feature_size(),
                label_size: schema.label.map_or(0, DType::size),
                labels: labels.map(|(_, r)| r),
                scratch: vec![],
                path: input.to_owned(),
            }),
        }],
        schema,
        metadata,
    })
}
