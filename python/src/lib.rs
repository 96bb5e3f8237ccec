//! `blindfold._native`: the PyTorch bridge's Rust half, inside the trusted zone.
//!
//! Rust does everything that touches keys and ciphertext: attestation to the owner's
//! broker (`blindfold-attest`), the sealed format and its checks (`blindfold-dataset`),
//! decryption into wiped memory ([`Records`]), and sealing the trained weights back to
//! the owner. The Python package (`python/blindfold/`) only hands those buffers to
//! PyTorch. There is no second implementation of the format or the protocol.
#![deny(unsafe_code)]

mod buffer;
mod fault;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_dataset::{
    check_output_location, write_job_outputs, JobOutputs, NoProgress, OutputSealer, SealedDataset,
};
use blindfold_format::Schema;
use blindfold_store::Store;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use zeroize::Zeroizing;

pub use buffer::Records;
use fault::Fault;

/// The content type of a model the bridge seals: safetensors, PyTorch's names and layout.
pub const TORCH_CONTENT_TYPE: &str = blindfold_dataset::SAFETENSORS_CONTENT_TYPE;

fn schema_dict<'py>(py: Python<'py>, s: &Schema) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("dtype", s.dtype.name())?;
    d.set_item("shape", s.shape.clone())?;
    d.set_item("label", s.label.map(|l| l.name()))?;
    Ok(d)
}

/// Splits records (features then label, back to back) into two [`Records`]: features
/// contiguous, labels contiguous, so each gets a typed, aligned view.
struct Split {
    feature_size: usize,
    label_size: usize,
    features: Records,
    labels: Option<Records>,
    done: usize,
}

impl Split {
    fn new(schema: &Schema, count: usize) -> Result<Split, Fault> {
        let feature_size = schema.feature_size();
        let label_size = schema.label.map_or(0, |l| l.size());
        let total = |size: usize| {
            size.checked_mul(count)
                .ok_or_else(|| Fault::BadInput("the split is too large for memory".into()))
        };
        Ok(Split {
            feature_size,
            label_size,
            features: Records::zeroed(total(feature_size)?),
            labels: if label_size > 0 {
                Some(Records::zeroed(total(label_size)?))
            } else {
                None
            },
            done: 0,
        })
    }

    /// Takes whole records, in order.
    fn push(&mut self, records: &[u8]) -> Result<(), Fault> {
        let (fs, ls) = (self.feature_size, self.label_size);
        if !records.len().is_multiple_of(fs + ls) {
            return Err(Fault::Bug("a chunk of records ends inside a record".into()));
        }
        let n = records.len() / (fs + ls);
        let feats = self
            .features
            .bytes_mut()
            .get_mut(self.done * fs..(self.done + n) * fs)
            .ok_or_else(|| Fault::Bug("more records than the manifest says".into()))?;
        for (dst, r) in feats
            .chunks_exact_mut(fs.max(1))
            .zip(records.chunks_exact(fs + ls))
        {
            dst.copy_from_slice(&r[..fs]);
        }
        if let Some(labels) = &mut self.labels {
            let dst = &mut labels.bytes_mut()[self.done * ls..(self.done + n) * ls];
            for (d, r) in dst.chunks_exact_mut(ls).zip(records.chunks_exact(fs + ls)) {
                d.copy_from_slice(&r[fs..]);
            }
        }
        self.done += n;
        Ok(())
    }

    fn finish(self, count: usize) -> Result<(Records, Option<Records>), Fault> {
        if self.done != count {
            return Err(Fault::Bug(format!(
                "{} records read, {count} expected",
                self.done
            )));
        }
        Ok((self.features, self.labels))
    }
}

/// A sealed dataset whose key the broker released to this process: its manifest
/// authenticated and checked to be the version the owner registered.
///
/// Fork-aware: a forked process (a DataLoader worker) inherits this object, but not the
/// threads of its storage connection; it reads through a connection of its own, and
/// leaves the inherited one alone (dropping it would wait for threads that are not
/// there).
#[pyclass(module = "blindfold._native", frozen)]
pub struct Sealed {
    /// Opened in process `pid`. `None` only while dropping.
    ds: Option<Arc<SealedDataset>>,
    pid: u32,
    /// The connection of a forked process: (its pid, the dataset over it).
    forked: Mutex<Option<(u32, Arc<SealedDataset>)>>,
    /// The receipt key made before attesting and the broker's certificate of it, when
    /// the broker issued one: what `seal_outputs` signs the training receipt with. Taken
    /// by the first receipt: one release, one receipt.
    receipt: Mutex<Option<(blindfold_attest::ReceiptKey, blindfold_attest::Certificate)>>,
}

impl Drop for Sealed {
    fn drop(&mut self) {
        let here = std::process::id();
        if here != self.pid {
            // The storage runtime's threads were the parent's; the child exits soon.
            std::mem::forget(self.ds.take());
        }
        if let Ok(f) = self.forked.get_mut() {
            if f.as_ref().is_some_and(|(pid, _)| *pid != here) {
                std::mem::forget(f.take());
            }
        }
    }
}

#[pymethods]
impl Sealed {
    /// Dataset id (hex).
    #[getter]
    fn dataset_id(&self) -> String {
        self.opened().manifest().dataset_id.to_hex()
    }

    /// The manifest version the broker released.
    #[getter]
    fn version(&self) -> u64 {
        self.opened().manifest().version
    }

    /// SHA-256 of the sealed manifest (hex).
    #[getter]
    fn manifest_sha256(&self) -> String {
        hex::encode(self.opened().manifest_sha256())
    }

    /// `{"dtype": ..., "shape": [...], "label": ... or None}`.
    fn schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        schema_dict(py, &self.opened().manifest().schema)
    }

    /// `[(name, records), ...]`.
    fn splits(&self) -> Vec<(String, u64)> {
        self.opened()
            .manifest()
            .splits
            .iter()
            .map(|s| (s.name.clone(), s.records))
            .collect()
    }

    /// The shards of a split as `[(first_record, records), ...]`.
    fn shards(&self, split: &str) -> PyResult<Vec<(u64, u64)>> {
        let s = self.split(split)?;
        Ok(s.shards
            .iter()
            .map(|e| (e.first_record, e.records))
            .collect())
    }

    /// Decrypts records `[start, start + count)` of `split` (all of them by default),
    /// every chunk authenticated first. Returns `(features, labels or None)`. The GIL is
    /// released while decrypting.
    #[pyo3(signature = (split, start=0, count=None))]
    fn read(
        &self,
        py: Python<'_>,
        split: &str,
        start: u64,
        count: Option<u64>,
    ) -> PyResult<(Records, Option<Records>)> {
        let s = self.split(split)?;
        let schema = &self.opened().manifest().schema;
        let count = count.unwrap_or(s.records.saturating_sub(start));
        // The range first: nothing is allocated for records the split does not have.
        if start.checked_add(count).is_none_or(|end| end > s.records) {
            return Err(Fault::BadInput(format!(
                "records {start}..{start}+{count} of split {split:?}: it has {}",
                s.records
            ))
            .into());
        }
        let whole = start == 0 && count == s.records;
        let n = usize::try_from(count).map_err(|_| Fault::BadInput("too many records".into()))?;
        let ds = self.readable()?;
        let out = py.detach(|| -> Result<_, Fault> {
            let mut out = Split::new(schema, n)?;
            if whole {
                ds.for_each_chunk(s, &NoProgress, |plain| out.push(plain))?;
            } else {
                let bytes = ds.read_records(split, start, count)?;
                out.push(&bytes)?;
            }
            out.finish(n)
        })?;
        Ok(out)
    }

    /// Seals a trained model (safetensors bytes made from `tensors`) and its metrics to
    /// the dataset's owner, authenticated by the dataset key, and writes them to `out`;
    /// then, when the broker certified this process's receipt key, the training
    /// receipt (`receipt.json`, `docs/receipts.md`) with `hyperparameters_json`.
    #[pyo3(signature = (out, tensors, metrics_json, hyperparameters_json=None))]
    fn seal_outputs(
        &self,
        py: Python<'_>,
        out: &str,
        tensors: Vec<TensorIn>,
        metrics_json: &str,
        hyperparameters_json: Option<&str>,
    ) -> PyResult<Vec<String>> {
        let hyperparameters: serde_json::Value = match hyperparameters_json {
            None => serde_json::json!({}),
            Some(h) => serde_json::from_str(h)
                .map_err(|e| Fault::BadInput(format!("hyperparameters: {e}")))?,
        };
        let facts = serde_json::json!({
            "dataset_id": self.dataset_id(),
            "version": self.version(),
            "manifest_sha256": self.manifest_sha256(),
        });
        let ds = self.readable()?;
        let tensor_count = tensors.len();
        let (written, metrics_sha256) = seal_model(
            py,
            &OutputSealer::Dataset(&ds),
            out,
            tensors,
            metrics_json,
            facts,
        )?;
        let mut locations = written.locations;
        let receipt = self
            .receipt
            .lock()
            .map_err(|_| Fault::Bug("receipt lock poisoned".into()))?
            .take();
        if let Some((key, cert)) = &receipt {
            use blindfold_protocol::receipt::{Training, RECEIPT_OBJECT};
            let training = Training {
                framework: "pytorch".into(),
                model: serde_json::json!({"format": "safetensors", "tensors": tensor_count}),
                hyperparameters,
                metrics_sha256,
            };
            let signed = key
                .sign_receipt(cert, &written.sealed, &training)
                .map_err(Fault::from)?;
            let store = Store::open(out, true).map_err(Fault::from)?;
            py.detach(|| store.put(RECEIPT_OBJECT, signed))
                .map_err(Fault::from)?;
            locations.push(format!("{}/{RECEIPT_OBJECT}", store.location()));
        }
        Ok(locations)
    }
}

impl Sealed {
    fn new(
        ds: SealedDataset,
        receipt: Option<(blindfold_attest::ReceiptKey, blindfold_attest::Certificate)>,
    ) -> Sealed {
        Sealed {
            ds: Some(Arc::new(ds)),
            pid: std::process::id(),
            forked: Mutex::new(None),
            receipt: Mutex::new(receipt),
        }
    }

    /// The dataset as opened (manifest, key).
    fn opened(&self) -> &SealedDataset {
        self.ds.as_deref().expect("only None while dropping")
    }

    /// The dataset over a storage connection that works in this process.
    fn readable(&self) -> Result<Arc<SealedDataset>, Fault> {
        let here = std::process::id();
        let ds = self.ds.as_ref().expect("only None while dropping");
        if here == self.pid {
            return Ok(ds.clone());
        }
        let mut f = self
            .forked
            .lock()
            .map_err(|_| Fault::Bug("a reader panicked".into()))?;
        match &*f {
            Some((pid, d)) if *pid == here => Ok(d.clone()),
            _ => {
                let d = Arc::new(ds.reconnect()?);
                // A connection of the process this one forked from: its threads are
                // not here either, so it is left alone rather than dropped.
                if let Some(old) = f.replace((here, d.clone())) {
                    std::mem::forget(old);
                }
                Ok(d)
            }
        }
    }

    fn split(&self, name: &str) -> Result<&blindfold_format::Split, Fault> {
        self.opened().manifest().split(name).ok_or_else(|| {
            Fault::BadInput(format!(
                "the dataset has no split {name:?} (it has: {})",
                self.splits()
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// A tensor as Python hands it over: name, dtype name (`float32`, ...), shape, bytes.
type TensorIn = (String, String, Vec<usize>, pyo3::buffer::PyBuffer<u8>);
/// The same, its bytes copied into wiped memory.
type TensorOwned = (String, safetensors::Dtype, Vec<usize>, Zeroizing<Vec<u8>>);

/// Makes safetensors bytes from the model's tensors, seals them and the metrics, writes
/// both and the clear configuration.
fn seal_model(
    py: Python<'_>,
    sealer: &OutputSealer<'_>,
    out: &str,
    tensors: Vec<TensorIn>,
    metrics_json: &str,
    facts: serde_json::Value,
) -> PyResult<(blindfold_dataset::Written, [u8; 32])> {
    let metrics: serde_json::Value =
        serde_json::from_str(metrics_json).map_err(|e| Fault::BadInput(format!("metrics: {e}")))?;
    let store = Store::open(out, true).map_err(Fault::from)?;
    check_output_location(&store).map_err(Fault::from)?;
    // Each tensor's bytes, copied once into wiped memory.
    let mut owned: Vec<TensorOwned> = Vec::new();
    for (name, dtype, shape, buf) in tensors {
        let dt = dtype_of(&dtype).ok_or_else(|| {
            Fault::BadInput(format!(
                "tensor {name:?}: dtype {dtype} has no safetensors form"
            ))
        })?;
        owned.push((name, dt, shape, Zeroizing::new(buf.to_vec(py)?)));
    }
    let model = py.detach(|| -> Result<_, Fault> {
        let views = owned
            .iter()
            .map(|(name, dt, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Fault::BadInput(format!("tensor {name:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let meta =
            std::collections::HashMap::from([("framework".to_owned(), "pytorch".to_owned())]);
        safetensors::tensor::serialize(views, Some(meta))
            .map(Zeroizing::new)
            .map_err(|e| Fault::Bug(format!("safetensors: {e}")))
    })?;
    let digest = blindfold_format::sha256(&model);
    let run: [u8; 16] = blindfold_format::random_bytes().map_err(|e| Fault::Bug(e.to_string()))?;
    let info = serde_json::json!({"framework": "pytorch", "run": hex::encode(run)});
    // Random bytes inside the sealed metrics, so that the digest a training receipt
    // publishes confirms no guess of them (docs/receipts.md).
    let salt: [u8; 32] = blindfold_format::random_bytes().map_err(|e| Fault::Bug(e.to_string()))?;
    let metrics = Zeroizing::new(
        serde_json::to_vec_pretty(&serde_json::json!({
            "salt": hex::encode(salt),
            "framework": "pytorch",
            "metrics": metrics,
            "weights_sha256": hex::encode(digest),
            "data": facts,
        }))
        .map_err(|e| Fault::Bug(e.to_string()))?,
    );
    let config = serde_json::to_vec_pretty(&serde_json::json!({
        "framework": "pytorch",
        "data": facts,
    }))
    .map_err(|e| Fault::Bug(e.to_string()))?;
    let o = JobOutputs {
        content_type: TORCH_CONTENT_TYPE,
        info,
        model: &model,
        metrics: &metrics,
        config: &config,
    };
    let metrics_sha256 = blindfold_format::sha256(&metrics);
    let written = py
        .detach(|| write_job_outputs(&store, sealer, &o))
        .map_err(Fault::from)?;
    Ok((written, metrics_sha256))
}

fn dtype_of(name: &str) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match name {
        "float64" => D::F64,
        "float32" => D::F32,
        "float16" => D::F16,
        "bfloat16" => D::BF16,
        "int64" => D::I64,
        "int32" => D::I32,
        "int16" => D::I16,
        "int8" => D::I8,
        "uint8" => D::U8,
        "bool" => D::BOOL,
        _ => return None,
    })
}

/// Attests to the broker, receives the dataset's key, and opens the sealed dataset at
/// `dest`, checked against the manifest version and digest the owner registered.
///
/// Hardens the process first (no core dumps, no ptrace by the same user).
#[pyfunction]
#[pyo3(signature = (dest, broker, job=None, tee="tsm", ca_cert=None, measurement=None, insecure_http=false))]
#[allow(clippy::too_many_arguments)]
fn attest(
    py: Python<'_>,
    dest: &str,
    broker: &str,
    job: Option<String>,
    tee: &str,
    ca_cert: Option<PathBuf>,
    measurement: Option<String>,
    insecure_http: bool,
) -> PyResult<Sealed> {
    blindfold_attest::harden_process()
        .map_err(|e| Fault::Bug(format!("cannot disable core dumps and ptrace: {e}")))?;
    let ca_cert_pem = ca_cert
        .map(|p| std::fs::read(&p).map_err(|e| Fault::BadInput(format!("{}: {e}", p.display()))))
        .transpose()?;
    let evidence = match tee {
        "sample" => EvidenceSource::InsecureSample { measurement },
        "tsm" => EvidenceSource::detect(std::path::Path::new(
            blindfold_attest::evidence::TSM_ROOT,
        ))
        .map_err(Fault::from)?,
        other => {
            return Err(Fault::BadInput(format!(
                "tee {other:?}: use \"tsm\" (SEV-SNP or TDX via configfs-tsm) or \"sample\" (no hardware root of trust)"
            ))
            .into())
        }
    };
    // A key made here for the training receipt: the broker certifies it with the
    // release; its private half never leaves this process.
    let receipt_key = blindfold_attest::ReceiptKey::generate().map_err(Fault::from)?;
    let opts = FetchOptions {
        broker: broker.to_owned(),
        ca_cert_pem,
        job,
        model: None,
        receipt_key: Some(receipt_key.public_hex()),
        insecure_http,
    };
    let (ds, certificate) = py.detach(|| -> Result<_, Fault> {
        let store = Store::open(dest, false)?;
        let claimed = blindfold_dataset::claimed_id(&store)?;
        let mut released = blindfold_attest::fetch_key(&opts, &claimed.to_hex(), &evidence)?;
        if released.dataset_id != claimed.to_hex() {
            return Err(Fault::Integrity(
                "the broker released the key of another dataset".into(),
            ));
        }
        // The manifest must be the one the owner registered: an older one is a
        // rollback, another one of the same version a fork.
        let certificate = released.certificate.take();
        let ds = SealedDataset::open_registered(
            store,
            &released.key,
            released.version,
            released.manifest_sha256,
        )?;
        Ok((ds, certificate))
    })?;
    Ok(Sealed::new(ds, certificate.map(|c| (receipt_key, c))))
}

/// The plaintext baseline: one split of the owner's files, through the same importers
/// as `blindfold seal`, so records are byte-identical to the sealed ones. A single
/// file (CSV, .npy, IDX images) is one split, named `split`. Returns
/// `(schema, features, labels or None)`.
#[pyfunction]
#[pyo3(signature = (input, split, labels=None, label_column=None))]
fn read_plain<'py>(
    py: Python<'py>,
    input: PathBuf,
    split: &str,
    labels: Option<PathBuf>,
    label_column: Option<String>,
) -> PyResult<(Bound<'py, PyDict>, Records, Option<Records>)> {
    // A single file is one split: it takes the name asked for, as `seal --split` does.
    let opts = ImportOptions {
        labels,
        label_column,
        split: (!input.is_dir()).then(|| split.to_owned()),
    };
    let (schema, f, l) = py.detach(|| -> Result<_, Fault> {
        let mut imp = import(&input, Format::Auto, &opts)?;
        let names: Vec<String> = imp.splits.iter().map(|s| s.name.clone()).collect();
        let src = imp
            .splits
            .iter_mut()
            .find(|s| s.name == split)
            .ok_or_else(|| {
                Fault::BadInput(format!(
                    "the input has no split {split:?} (it has: {})",
                    names.join(", ")
                ))
            })?;
        let n =
            usize::try_from(src.records).map_err(|_| Fault::BadInput("too many records".into()))?;
        let size = imp
            .schema
            .record_size()
            .checked_mul(n)
            .ok_or_else(|| Fault::BadInput("the split is too large for memory".into()))?;
        let mut bytes = Zeroizing::new(vec![0u8; size]);
        src.source.read_records(&mut bytes)?;
        let mut out = Split::new(&imp.schema, n)?;
        out.push(&bytes)?;
        let (f, l) = out.finish(n)?;
        Ok((imp.schema.clone(), f, l))
    })?;
    Ok((schema_dict(py, &schema)?, f, l))
}

/// Seals a model trained on the plaintext baseline to the owner's X25519 public key
/// (hex, `blindfold keys show`). Nothing authenticates such an output: the owner opens
/// it only with `--danger-unauthenticated`.
#[pyfunction]
fn seal_plain_outputs(
    py: Python<'_>,
    owner_key: &str,
    out: &str,
    tensors: Vec<TensorIn>,
    metrics_json: &str,
    input: &str,
) -> PyResult<Vec<String>> {
    let key: [u8; 32] = hex::decode(owner_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| Fault::BadInput("owner_key: not 64 hex digits".into()))?;
    seal_model(
        py,
        &OutputSealer::Baseline(key),
        out,
        tensors,
        metrics_json,
        serde_json::json!({ "plaintext_input": input }),
    )
    .map(|(written, _)| written.locations)
}

/// The native half of the `blindfold` Python package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Sealed>()?;
    m.add_class::<Records>()?;
    m.add_function(wrap_pyfunction!(attest, m)?)?;
    m.add_function(wrap_pyfunction!(read_plain, m)?)?;
    m.add_function(wrap_pyfunction!(seal_plain_outputs, m)?)?;
    m.add("BlindfoldError", py.get_type::<fault::BlindfoldError>())?;
    m.add("IntegrityError", py.get_type::<fault::IntegrityError>())?;
    m.add("PolicyDenied", py.get_type::<fault::PolicyDenied>())?;
    m.add("BadInput", py.get_type::<fault::BadInput>())?;
    m.add("StorageError", py.get_type::<fault::StorageError>())?;
    m.add("InternalError", py.get_type::<fault::InternalError>())?;
    m.add("TORCH_CONTENT_TYPE", TORCH_CONTENT_TYPE)?;
    Ok(())
}
