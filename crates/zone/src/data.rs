//! Training data inside the trusted zone: records decrypted into zeroizing memory, and
//! the batch pipeline that shuffles by record index and prepares each batch on a
//! helper thread ahead of the training step.
//!
//! A sealed dataset and its plaintext original go through the same [`Dataset`]: only
//! how the record bytes arrive differs (decrypted chunk by chunk, or read from the
//! owner's files for the baseline), so both give the same batches in the same order.

use std::sync::mpsc;

use blindfold_dataset::import::Import;
use blindfold_dataset::{Progress, SealedDataset};
use blindfold_format::{DType, Schema};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Most plaintext bytes a split may take in the zone's memory (the whole training split
/// is held decrypted; see `docs/threat-model.md`).
pub const MAX_SPLIT_BYTES: u64 = 8 << 30;

/// One split's records, decrypted, in the trusted zone's memory only.
pub struct SplitRecords {
    /// Split name.
    pub name: String,
    /// Record bytes, back to back; wiped on drop.
    bytes: Zeroizing<Vec<u8>>,
    /// Number of records.
    pub count: usize,
}

impl SplitRecords {
    /// The records, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for SplitRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SplitRecords({}, {} records)", self.name, self.count)
    }
}

/// What a model is trained and tested on.
#[derive(Debug)]
pub struct Dataset {
    /// Schema of every record.
    pub schema: Schema,
    /// Training records.
    pub train: SplitRecords,
    /// Validation records, held out of the training split ([`Dataset::hold_out`]).
    pub validation: Option<SplitRecords>,
    /// Test records, when the dataset has the test split (or one was held out).
    pub test: Option<SplitRecords>,
    /// Number of classes: the largest training label plus one (1 when the labels are
    /// not classes).
    pub classes: usize,
    /// Why the labels cannot be a classifier's (real values, negative, too many, a
    /// test label the training split never uses), if so: a regression head may still
    /// train on them.
    class_problem: Option<String>,
}

/// Which splits to use.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training split name.
    pub train: String,
    /// Test split name; absent from the dataset is allowed (no test accuracy then).
    pub test: String,
}

impl Default for Splits {
    fn default() -> Self {
        Splits {
            train: "train".into(),
            test: "test".into(),
        }
    }
}

fn check_schema(schema: &Schema) -> Result<DType> {
    let label = schema.label.ok_or_else(|| {
        Error::BadInput(
            "the dataset's records carry no label: nothing to train a classifier on".into(),
        )
    })?;
    if schema.elements() == 0 {
        return Err(Error::BadInput("records have no features".into()));
    }
    Ok(label)
}

fn split_size(schema: &Schema, name: &str, records: u64) -> Result<usize> {
    let bytes = records
        .checked_mul(schema.record_size() as u64)
        .filter(|&b| b <= MAX_SPLIT_BYTES)
        .ok_or_else(|| {
            Error::BadInput(format!(
                "split {name:?} is larger than the {MAX_SPLIT_BYTES} bytes the trainer holds in memory"
            ))
        })?;
    Ok(bytes as usize)
}

/// Decrypts one split of a sealed dataset into zeroizing memory. Capacity is reserved
/// up front, so the buffer never moves and no stale plaintext is left behind by a
/// reallocation. Every chunk is authenticated before its records are copied.
fn read_sealed_split(
    ds: &SealedDataset,
    name: &str,
    progress: &dyn Progress,
) -> Result<Option<SplitRecords>> {
    let Some(split) = ds.manifest().split(name) else {
        return Ok(None);
    };
    let schema = &ds.manifest().schema;
    let size = split_size(schema, name, split.records)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(size));
    progress.begin(&format!("decrypt {name}"), size as u64);
    ds.for_each_chunk(split, &blindfold_dataset::NoProgress, |plain| {
        if bytes.len() + plain.len() > size {
            return Err(Error::Bug(
                "a split holds more records than its manifest says".into(),
            ));
        }
        bytes.extend_from_slice(plain);
        progress.advance(plain.len() as u64);
        Ok(())
    })?;
    progress.end();
    if bytes.len() != size {
        return Err(Error::Bug(format!(
            "split {name:?}: {} bytes decrypted, {size} expected",
            bytes.len()
        )));
    }
    Ok(Some(SplitRecords {
        name: name.into(),
        bytes,
        count: split.records as usize,
    }))
}

impl Dataset {
    /// Decrypts the training and test splits of a sealed dataset (opened with the key
    /// the broker released) into the trusted zone's memory.
    pub fn from_sealed(
        ds: &SealedDataset,
        splits: &Splits,
        progress: &dyn Progress,
    ) -> Result<Self> {
        let schema = ds.manifest().schema.clone();
        check_schema(&schema)?;
        let train = read_sealed_split(ds, &splits.train, progress)?.ok_or_else(|| {
            Error::BadInput(format!(
                "the dataset has no split {:?} (it has: {}; choose one with --train-split)",
                splits.train,
                ds.manifest()
                    .splits
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let test = read_sealed_split(ds, &splits.test, progress)?;
        Self::new(schema, train, test)
    }

    /// Reads the training and test splits of the owner's plaintext files (the baseline),
    /// through the same importers `seal` uses, so records are byte-identical.
    pub fn from_import(
        mut import: Import,
        splits: &Splits,
        progress: &dyn Progress,
    ) -> Result<Self> {
        let schema = import.schema.clone();
        check_schema(&schema)?;
        let names = import
            .splits
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let mut read = |name: &str| -> Result<Option<SplitRecords>> {
            let Some(src) = import.splits.iter_mut().find(|s| s.name == name) else {
                return Ok(None);
            };
            let size = split_size(&schema, name, src.records)?;
            let mut bytes = Zeroizing::new(vec![0u8; size]);
            progress.begin(&format!("read {name}"), size as u64);
            src.source.read_records(&mut bytes)?;
            progress.advance(size as u64);
            progress.end();
            Ok(Some(SplitRecords {
                name: name.into(),
                bytes,
                count: src.records as usize,
            }))
        };
        let train = read(&splits.train)?.ok_or_else(|| {
            Error::BadInput(format!(
                "the input has no split {:?} (it has: {names}; choose one with --train-split)",
                splits.train
            ))
        })?;
        let test = read(&splits.test)?;
        Self::new(schema, train, test)
    }

    /// Builds a dataset from records already in memory (tests, benchmarks).
    pub fn from_records(
        schema: Schema,
        train: (String, Vec<u8>),
        test: Option<(String, Vec<u8>)>,
    ) -> Result<Self> {
        check_schema(&schema)?;
        let rs = schema.record_size();
        let mk = |(name, bytes): (String, Vec<u8>)| -> Result<SplitRecords> {
            if bytes.len() % rs != 0 {
                return Err(Error::BadInput(format!(
                    "split {name:?}: {} bytes is not a whole number of {rs}-byte records",
                    bytes.len()
                )));
            }
            Ok(SplitRecords {
                count: bytes.len() / rs,
                name,
                bytes: Zeroizing::new(bytes),
            })
        };
        let train = mk(train)?;
        let test = test.map(mk).transpose()?;
        Self::new(schema, train, test)
    }

    fn new(schema: Schema, train: SplitRecords, test: Option<SplitRecords>) -> Result<Self> {
        if train.count == 0 {
            return Err(Error::BadInput(format!("split {:?} is empty", train.name)));
        }
        let label = check_schema(&schema)?;
        let fs = schema.feature_size();
        let rs = schema.record_size();
        if is_real(label) {
            // Real values, for a regression head: every value finite.
            for split in std::iter::once(&train).chain(test.as_ref()) {
                if split
                    .bytes
                    .chunks_exact(rs)
                    .any(|r| !decode_value(label, &r[fs..]).is_finite())
                {
                    return Err(Error::BadInput(format!(
                        "split {:?} has a label that is not a finite f32",
                        split.name
                    )));
                }
            }
            return Ok(Dataset {
                schema,
                train,
                validation: None,
                test,
                classes: 1,
                class_problem: Some(
                    "the labels are real values (f32): a classification head needs integer class labels; use [head] type = \"regression\"".into(),
                ),
            });
        }
        // Integer labels: classes for a classification head (checked here, refused when
        // a classifier is trained), values for a regression head.
        let (classes, class_problem) = match class_count(label, fs, rs, &train, test.as_ref()) {
            Ok(k) => (k, None),
            Err(m) => (1, Some(m)),
        };
        Ok(Dataset {
            schema,
            train,
            validation: None,
            test,
            classes,
            class_problem,
        })
    }

    /// Why a classifier cannot train on these labels, if it cannot.
    pub fn class_problem(&self) -> Option<&str> {
        self.class_problem.as_deref()
    }

    /// A split by part.
    pub fn split(&self, part: crate::train::Part) -> Option<&SplitRecords> {
        match part {
            crate::train::Part::Train => Some(&self.train),
            crate::train::Part::Validation => self.validation.as_ref(),
            crate::train::Part::Test => self.test.as_ref(),
        }
    }

    /// Holds out `fraction` of the training records, chosen by `seed`, as the
    /// validation split; when the dataset has no test split, as many again become the
    /// test split. Records are copied into new zeroizing buffers (reserved once) and the
    /// old training buffer is wiped when dropped. At least one record stays in each.
    pub fn hold_out(mut self, fraction: f64, seed: u64) -> Result<Self> {
        let n = self.train.count;
        let k = ((n as f64 * fraction).round() as usize).max(1);
        let parts = if self.test.is_some() { 1 } else { 2 };
        if n < k * parts + 1 {
            return Err(Error::BadInput(format!(
                "--holdout {fraction}: split {:?} has {n} records, too few to hold out {k} for each of {parts} split(s)",
                self.train.name
            )));
        }
        // The held-out records: the first of a permutation fixed by the seed (epoch 0,
        // which training never uses), kept in their original order.
        let order = epoch_order(n, seed, 0);
        let mut which = vec![0u8; n];
        for (i, &r) in order.iter().enumerate().take(k * parts) {
            which[r as usize] = if i < k { 1 } else { 2 };
        }
        let rs = self.schema.record_size();
        let take = |tag: u8, name: String| -> SplitRecords {
            let count = which.iter().filter(|&&w| w == tag).count();
            let mut bytes = Zeroizing::new(Vec::with_capacity(count * rs));
            for (r, &w) in self.train.bytes.chunks_exact(rs).zip(&which) {
                if w == tag {
                    bytes.extend_from_slice(r);
                }
            }
            SplitRecords { name, bytes, count }
        };
        let base = self.train.name.clone();
        let validation = take(1, format!("{base}/validation"));
        if parts == 2 {
            self.test = Some(take(2, format!("{base}/test")));
        }
        self.train = take(0, base);
        self.validation = Some(validation);
        Ok(self)
    }

    /// Input shape of one record as (channels, height, width): `[H, W]` is one channel,
    /// `[C, H, W]` is C channels, anything else is flattened to `[1, 1, N]`.
    pub fn input_shape(&self) -> [usize; 3] {
        input_shape(&self.schema)
    }

    /// SHA-256 over the schema and every record of both splits: equal for a sealed
    /// dataset and the plaintext it was sealed from.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.schema).unwrap_or_default());
        for s in std::iter::once(&self.train)
            .chain(self.validation.as_ref())
            .chain(self.test.as_ref())
        {
            h.update(s.name.as_bytes());
            h.update((s.count as u64).to_le_bytes());
            h.update(&s.bytes[..]);
        }
        h.finalize().into()
    }
}

/// A record's shape as (channels, height, width): `[H, W]` is one channel, `[C, H, W]`
/// is C channels, anything else is flattened to `[1, 1, N]`.
pub(crate) fn input_shape(schema: &Schema) -> [usize; 3] {
    let s: Vec<usize> = schema.shape.iter().map(|&d| d as usize).collect();
    match s.as_slice() {
        [h, w] => [1, *h, *w],
        [c, h, w] => [*c, *h, *w],
        _ => [1, 1, schema.elements() as usize],
    }
}

/// The number of classes integer labels make (the training split's largest plus one,
/// at least 2), or why they are not a classifier's labels.
fn class_count(
    label: DType,
    fs: usize,
    rs: usize,
    train: &SplitRecords,
    test: Option<&SplitRecords>,
) -> std::result::Result<usize, String> {
    let mut max = 0i64;
    for split in std::iter::once(train).chain(test) {
        for r in split.bytes.chunks_exact(rs) {
            let l = decode_label(label, &r[fs..]);
            if l < 0 {
                return Err(format!(
                    "split {:?} has a negative label: a classification head needs class labels 0, 1, 2, ... (a regression head takes any number)",
                    split.name
                ));
            }
            if std::ptr::eq(split, train) {
                max = max.max(l);
            }
        }
    }
    let classes = (max as usize + 1).max(2);
    if classes > 100_000 {
        return Err(format!(
            "labels up to {max}: too many classes for a classification head (a regression head takes any number)"
        ));
    }
    if let Some(t) = test {
        if t.bytes
            .chunks_exact(rs)
            .any(|r| decode_label(label, &r[fs..]) as usize >= classes)
        {
            return Err(format!(
                "split {:?} has a label the training split never uses (classes: {classes})",
                t.name
            ));
        }
    }
    Ok(classes)
}

fn is_real(label: DType) -> bool {
    matches!(label, DType::F32 | DType::F64)
}

/// A label as a real value (any label type).
fn decode_value(dtype: DType, b: &[u8]) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        other => decode_label(other, b) as f32,
    }
}

fn decode_label(dtype: DType, b: &[u8]) -> i64 {
    let arr = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b[..n]);
        a
    };
    match dtype {
        DType::U8 => b[0] as i64,
        DType::I8 => b[0] as i8 as i64,
        DType::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
        DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
        DType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        DType::U64 => i64::try_from(u64::from_le_bytes(arr(8))).unwrap_or(-1),
        DType::I64 => i64::from_le_bytes(arr(8)),
        // Real values: read with decode_value.
        DType::F32 | DType::F64 => 0,
    }
}

/// Writes the features of record `r` as f32 into `out`: u8 scaled to [0, 1], other
/// types converted as they are.
fn decode_features(dtype: DType, r: &[u8], out: &mut Vec<f32>) {
    match dtype {
        DType::U8 => out.extend(r.iter().map(|&v| v as f32 / 255.0)),
        DType::I8 => out.extend(r.iter().map(|&v| v as i8 as f32)),
        DType::U16 => out.extend(
            r.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f32),
        ),
        DType::I16 => out.extend(
            r.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32),
        ),
        DType::U32 => out.extend(
            r.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        ),
        DType::I32 => out.extend(
            r.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        ),
        DType::F32 => out.extend(
            r.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::U64 => out.extend(
            r.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
        ),
        DType::I64 => out.extend(
            r.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
        ),
        DType::F64 => out.extend(
            r.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32),
        ),
    }
}

/// One batch, ready to become tensors: features `[n, elements]` as f32, labels.
pub struct Batch {
    /// Feature values, record after record.
    pub features: Vec<f32>,
    /// Class labels (0 for real-valued labels).
    pub labels: Vec<i64>,
    /// The labels as real values (a regression head's targets).
    pub values: Vec<f32>,
}

impl Batch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.features.zeroize();
        self.labels.zeroize();
        self.values.zeroize();
    }
}

/// The record order of one epoch: a Fisher–Yates shuffle of the record indices by
/// ChaCha8 seeded from (seed, epoch). Depends on nothing but its arguments.
pub fn epoch_order(count: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count as u32).collect();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..].copy_from_slice(b"blindfold/order\0");
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
    order.shuffle(&mut rng);
    order
}

impl SplitRecords {
    /// Records `[start, start + count)` as the model sees them: their features as f32
    /// (u8 scaled to [0, 1], as in training), back to back. What a prediction client
    /// sends a service.
    pub fn features(&self, schema: &Schema, start: usize, count: usize) -> Vec<f32> {
        let rs = schema.record_size();
        let fs = schema.feature_size();
        let end = (start + count).min(self.count);
        let mut out = Vec::with_capacity(end.saturating_sub(start) * schema.elements() as usize);
        for i in start..end {
            decode_features(schema.dtype, &self.bytes[i * rs..i * rs + fs], &mut out);
        }
        out
    }

    fn batch(&self, schema: &Schema, indices: &[u32]) -> Batch {
        let rs = schema.record_size();
        let fs = schema.feature_size();
        let label = schema.label.unwrap_or(DType::U8);
        let mut features = Vec::with_capacity(indices.len() * schema.elements() as usize);
        let mut labels = Vec::with_capacity(indices.len());
        let mut values = Vec::with_capacity(indices.len());
        for &i in indices {
            let r = &self.bytes[i as usize * rs..(i as usize + 1) * rs];
            decode_features(schema.dtype, &r[..fs], &mut features);
            labels.push(decode_label(label, &r[fs..]));
            values.push(decode_value(label, &r[fs..]));
        }
        Batch {
            features,
            labels,
            values,
        }
    }

    /// Runs `f` on every batch of `order` (in chunks of `batch_size`), with the next
    /// batches prepared on a helper thread while `f` works (`ahead` at most).
    pub fn for_each_batch<E: Send>(
        &self,
        schema: &Schema,
        order: &[u32],
        batch_size: usize,
        ahead: usize,
        mut f: impl FnMut(Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Batch>(ahead.max(1));
            s.spawn(move || {
                for idx in order.chunks(batch_size.max(1)) {
                    if tx.send(self.batch(schema, idx)).is_err() {
                        return; // the consumer stopped
                    }
                }
            });
            for b in rx {
                f(b)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            dtype: DType::U8,
            shape: vec![2, 2],
            label: Some(DType::U8),
        }
    }

    #[test]
    fn order_is_a_permutation_fixed_by_seed_and_epoch() {
        let a = epoch_order(1000, 7, 0);
        assert_eq!(a, epoch_order(1000, 7, 0));
        assert_ne!(a, epoch_order(1000, 7, 1));
        assert_ne!(a, epoch_order(1000, 8, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn batches_follow_the_order() {
        let mut bytes = vec![];
        for i in 0..10u8 {
            bytes.extend_from_slice(&[i, i, i, 255, i % 3]);
        }
        let ds = Dataset::from_records(schema(), ("train".into(), bytes), None).unwrap();
        assert_eq!(ds.classes, 3);
        assert_eq!(ds.input_shape(), [1, 2, 2]);
        let order = [9u32, 0, 4];
        let mut seen = vec![];
        ds.train
            .for_each_batch(&ds.schema, &order, 2, 2, |b| {
                seen.push((b.features.clone(), b.labels.clone()));
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1, vec![0, 0]);
        assert_eq!(seen[0].0[0], 9.0 / 255.0);
        assert_eq!(seen[0].0[3], 1.0);
        assert_eq!(seen[1].1, vec![1]);
    }

    #[test]
    fn hold_out_splits_disjoint_records_by_seed() {
        // 100 records whose feature byte is their index.
        let train: Vec<u8> = (0..100u8).flat_map(|i| [i, i, i, i, i % 3]).collect();
        let ds = |test: bool| {
            Dataset::from_records(
                schema(),
                ("train".into(), train.clone()),
                test.then(|| ("test".into(), vec![1, 2, 3, 4, 0])),
            )
            .unwrap()
        };
        let ids = |s: &SplitRecords| -> Vec<u8> { s.bytes().chunks(5).map(|r| r[0]).collect() };
        let d = ds(false).hold_out(0.2, 5).unwrap();
        let (t, v, e) = (
            ids(&d.train),
            ids(d.validation.as_ref().unwrap()),
            ids(d.test.as_ref().unwrap()),
        );
        assert_eq!((t.len(), v.len(), e.len()), (60, 20, 20));
        let mut all: Vec<u8> = t.iter().chain(&v).chain(&e).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<u8>>(), "disjoint, nothing lost");
        assert!(v.windows(2).all(|w| w[0] < w[1]), "original order kept");
        // The seed chooses; the same seed chooses the same.
        let again = ds(false).hold_out(0.2, 5).unwrap();
        assert_eq!(ids(again.validation.as_ref().unwrap()), v);
        let other = ds(false).hold_out(0.2, 6).unwrap();
        assert_ne!(ids(other.validation.as_ref().unwrap()), v);
        // A dataset with a test split keeps it; only validation is held out.
        let d = ds(true).hold_out(0.2, 5).unwrap();
        assert_eq!(
            (d.train.count, d.validation.as_ref().unwrap().count),
            (80, 20)
        );
        assert_eq!(d.test.as_ref().unwrap().count, 1);
        // Too few records to hold anything out is an error, not an empty split.
        let tiny = Dataset::from_records(schema(), ("train".into(), vec![1, 2, 3, 4, 0]), None);
        assert!(tiny.unwrap().hold_out(0.2, 1).is_err());
    }

    #[test]
    fn bad_datasets_are_refused() {
        let no_label = Schema {
            label: None,
            ..schema()
        };
        assert!(Dataset::from_records(no_label, ("train".into(), vec![0; 4]), None).is_err());
        assert!(Dataset::from_records(schema(), ("train".into(), vec![0; 7]), None).is_err());
        assert!(Dataset::from_records(schema(), ("train".into(), vec![]), None).is_err());
        // A test label the training split never has: not a classifier's labels (a
        // regression head may still use them as numbers).
        let train = vec![0, 0, 0, 0, 1];
        let test = vec![0, 0, 0, 0, 5];
        let d = Dataset::from_records(
            schema(),
            ("train".into(), train),
            Some(("test".into(), test)),
        )
        .unwrap();
        assert!(d.class_problem().unwrap().contains("never uses"));
        // Negative labels likewise.
        let i8s = Schema {
            label: Some(DType::I8),
            ..schema()
        };
        let d = Dataset::from_records(i8s, ("train".into(), vec![0, 0, 0, 0, 0xff]), None);
        assert!(d.unwrap().class_problem().unwrap().contains("negative"));
        // Non-finite real labels are refused outright.
        let f32s = Schema {
            label: Some(DType::F32),
            ..schema()
        };
        let mut r = vec![0u8; 4];
        r.extend(f32::NAN.to_le_bytes());
        assert!(Dataset::from_records(f32s.clone(), ("train".into(), r), None).is_err());
        // f64 labels decode as their value.
        let f64s = Schema {
            label: Some(DType::F64),
            ..schema()
        };
        let mut r = vec![0u8; 4];
        r.extend(2.5f64.to_le_bytes());
        let d = Dataset::from_records(f64s, ("train".into(), r), None).unwrap();
        let mut seen = vec![];
        d.train
            .for_each_batch(&d.schema, &[0], 1, 1, |b| {
                seen.extend(b.values.clone());
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(seen, [2.5]);
    }
}
