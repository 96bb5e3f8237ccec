//! The GPU path (built with the `wgpu` or `cuda` feature): sealed chunks are uploaded as ciphertext, authenticated and decrypted
//! in device memory by `blindfold-gpu`'s kernel, and each batch is gathered there
//! straight into the tensors that feed the training step. Host memory holds the
//! ciphertext, the per-shard payload keys until they are uploaded, and the record
//! offsets; never a record.
//!
//! Supported data: `u8` features with a `u8` label (images such as Fashion-MNIST),
//! sealed with the `chacha20-poly1305` suite. Anything else is refused with a message
//! that says to use the CPU path.

use blindfold_dataset::SealedDataset;
use blindfold_format::{DType, Schema, Suite};
use blindfold_gpu::{Batch as Chunks, Key, Opened, Records};
use burn::backend::Autodiff;
use burn::tensor::{ElementConversion, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use cubecl::prelude::ComputeClient;

use crate::data::{input_shape, Dataset, Splits};
use crate::error::{Error, Result};
use crate::train::{self, Feed, Part, TrainConfig, TrainProgress, Trained};

use super::DeviceSource;

/// The backend device training runs on: CubeCL's runtime `R`, f32 floats, i32 ints.
pub type DeviceBackend<R> = CubeBackend<R, f32, i32, u32>;

/// Plaintext in device memory that is overwritten with zeros before it goes back to
/// CubeCL's memory pool, however it is dropped: at the end of a job, or on an error
/// halfway through loading (a later split failing, say).
struct DevicePlain<R: CubeRuntime> {
    client: ComputeClient<R>,
    opened: Opened,
}

impl<R: CubeRuntime> Drop for DevicePlain<R> {
    fn drop(&mut self) {
        blindfold_gpu::wipe(&self.client, &self.opened);
        let _ = blindfold_gpu::sync(&self.client);
    }
}

struct Split<R: CubeRuntime> {
    plain: DevicePlain<R>,
    records: Records,
    /// Byte offset of each record in the plaintext (public: it follows from the layout).
    offsets: Vec<u32>,
    record_size: usize,
}

/// The records of a job in device memory.
pub struct DeviceData<R: CubeRuntime> {
    client: ComputeClient<R>,
    device: R::Device,
    input: [usize; 3],
    classes: usize,
    train: Split<R>,
    test: Option<Split<R>>,
}

fn check_schema(schema: &Schema) -> Result<usize> {
    if schema.dtype != DType::U8 || schema.label != Some(DType::U8) {
        return Err(Error::BadInput(format!(
            "the GPU path takes u8 features with a u8 label; this dataset has {} features and {} labels: use --device cpu",
            schema.dtype.name(),
            schema.label.map_or("no", |l| l.name()),
        )));
    }
    Ok(schema.elements() as usize)
}

pub(super) fn gpu_error(e: blindfold_gpu::Error) -> Error {
    match e {
        blindfold_gpu::Error::BadInput(m) => Error::BadInput(m),
        blindfold_gpu::Error::Unavailable(m) => Error::BadInput(m),
        blindfold_gpu::Error::Device(m) => Error::Device(m),
        // Tags are checked where chunks are opened, which names the shard and chunk;
        // anywhere else a failed tag is a mistake of ours.
        e @ blindfold_gpu::Error::Tampered { .. } => Error::Bug(e.to_string()),
    }
}

/// Byte value → feature value, exactly as the CPU path computes it.
fn scale() -> [f32; 256] {
    std::array::from_fn(|v| v as f32 / 255.0)
}

/// One chunk of the batch: where it came from, for the error if its tag fails.
struct Origin {
    at: String,
    object: blindfold_format::Object,
    chunk: u64,
}

/// A split's sealed chunks packed for the kernel, with each record's place and each
/// chunk's origin.
struct Packed {
    chunks: Chunks,
    offsets: Vec<u32>,
    origins: Vec<Origin>,
}

fn pack_sealed(ds: &SealedDataset, name: &str, elements: usize) -> Result<Option<Packed>> {
    let Some(split) = ds.manifest().split(name) else {
        return Ok(None);
    };
    let rs = elements + 1;
    let bytes: u64 = split.shards.iter().map(|s| s.size).sum();
    let mut chunks = Chunks::with_capacity(bytes as usize, 0);
    let mut offsets: Vec<u32> = Vec::with_capacity(split.records as usize);
    let mut origins: Vec<Origin> = Vec::new();
    ds.for_each_sealed_shard(split, |sh| {
        let h = &sh.header;
        if h.params.suite != Suite::ChaCha20Poly1305 {
            return Err(Error::BadInput(format!(
                "{}: sealed with {}; the GPU path decrypts chacha20-poly1305 only (seal with --suite chacha20-poly1305, or use --device cpu)",
                sh.at, h.params.suite
            )));
        }
        let key = chunks.add_key(Key::new(sh.payload_key));
        let aad = chunks
            .add_aad(&sh.digest)
            .map_err(|e| Error::Bug(e.to_string()))?;
        for i in 0..h.chunk_count() {
            let range = h.chunk_range(i);
            let sealed = sh
                .bytes
                .get(range.start as usize..range.end as usize)
                .ok_or_else(|| Error::Bug("chunk outside its shard".into()))?;
            let place = chunks
                .add_chunk(key, aad, h.chunk_nonce(i), sealed)
                .map_err(|e| Error::BadInput(e.to_string()))?;
            for r in 0..place.len / rs {
                let at = place.offset + r * rs;
                offsets.push(u32::try_from(at).map_err(|_| {
                    Error::BadInput("a split of more than 4 GiB does not fit the GPU path".into())
                })?);
            }
            origins.push(Origin {
                at: sh.at.clone(),
                object: h.object(),
                chunk: i,
            });
        }
        Ok(())
    })?;
    if offsets.len() as u64 != split.records {
        return Err(Error::Bug(format!(
            "split {name:?}: {} records in its chunks, {} in the manifest",
            offsets.len(),
            split.records
        )));
    }
    Ok(Some(Packed {
        chunks,
        offsets,
        origins,
    }))
}

/// The error the CPU path gives for a chunk whose tag fails: the shard and the chunk.
fn tampered(origins: &[Origin], chunk: usize) -> Error {
    match origins.get(chunk) {
        Some(o) => blindfold_dataset::Error::sealed(
            o.at.clone(),
            blindfold_format::Error::Tampered {
                object: o.object.clone(),
                what: format!("chunk {} failed authentication", o.chunk),
            },
        )
        .into(),
        None => Error::Bug(format!("chunk {chunk} of the batch unknown")),
    }
}

fn upload_sealed<R: CubeRuntime>(
    client: &ComputeClient<R>,
    ds: &SealedDataset,
    name: &str,
    elements: usize,
) -> Result<Option<Split<R>>> {
    let Some(Packed {
        chunks,
        offsets,
        origins,
    }) = pack_sealed(ds, name, elements)?
    else {
        return Ok(None);
    };
    let rs = elements + 1;
    let opened = match blindfold_gpu::open(client, chunks) {
        Ok(o) => o,
        Err(blindfold_gpu::Error::Tampered { chunk }) => return Err(tampered(&origins, chunk)),
        Err(e) => return Err(gpu_error(e)),
    };
    let plain = DevicePlain {
        client: client.clone(),
        opened,
    };
    let records = Records::new(client, &offsets, elements, &scale()).map_err(gpu_error)?;
    Ok(Some(Split {
        plain,
        records,
        offsets,
        record_size: rs,
    }))
}

fn upload_plain<R: CubeRuntime>(
    client: &ComputeClient<R>,
    bytes: &[u8],
    count: usize,
    elements: usize,
) -> Result<Split<R>> {
    let rs = elements + 1;
    let plain = DevicePlain {
        client: client.clone(),
        opened: blindfold_gpu::upload_plaintext(client, bytes).map_err(gpu_error)?,
    };
    let offsets = (0..count)
        .map(|r| u32::try_from(r * rs))
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| {
            Error::BadInput("a split of more than 4 GiB does not fit the GPU path".into())
        })?;
    let records = Records::new(client, &offsets, elements, &scale()).map_err(gpu_error)?;
    Ok(Split {
        plain,
        records,
        offsets,
        record_size: rs,
    })
}

impl<R: CubeRuntime> DeviceData<R> {
    /// Uploads the sealed training and test splits and opens them on the device. A
    /// chunk whose tag fails stops here with the error the CPU path gives.
    pub fn from_sealed(ds: &SealedDataset, splits: &Splits, device: &R::Device) -> Result<Self> {
        let schema = &ds.manifest().schema;
        let elements = check_schema(schema)?;
        let client = R::client(device);
        let train = upload_sealed(&client, ds, &splits.train, elements)?.ok_or_else(|| {
            Error::BadInput(format!("the dataset has no split {:?}", splits.train))
        })?;
        let test = upload_sealed(&client, ds, &splits.test, elements)?;
        Self::new(client, device, input_shape(schema), train, test)
    }

    /// The plaintext baseline: uploads records already in host memory.
    pub fn from_dataset(data: &Dataset, device: &R::Device) -> Result<Self> {
        let elements = check_schema(&data.schema)?;
        let client = R::client(device);
        let train = upload_plain(&client, data.train.bytes(), data.train.count, elements)?;
        let test = match &data.test {
            Some(t) => Some(upload_plain(&client, t.bytes(), t.count, elements)?),
            None => None,
        };
        Self::new(client, device, data.input_shape(), train, test)
    }

    fn new(
        client: ComputeClient<R>,
        device: &R::Device,
        input: [usize; 3],
        train: Split<R>,
        test: Option<Split<R>>,
    ) -> Result<Self> {
        if train.records.count() == 0 {
            return Err(Error::BadInput("the training split is empty".into()));
        }
        let mut d = DeviceData {
            client,
            device: device.clone(),
            input,
            classes: 0,
            train,
            test,
        };
        // Classes as on the CPU path: the training split's largest label + 1 (at least
        // 2). Only that maximum leaves the device.
        let max = d.max_label(Part::Train)?;
        d.classes = (max as usize + 1).max(2);
        if d.test.is_some() && d.max_label(Part::Test)? as usize >= d.classes {
            return Err(Error::BadInput(format!(
                "the test split has a label the training split never uses (classes: {})",
                d.classes
            )));
        }
        Ok(d)
    }

    fn split(&self, part: Part) -> Result<&Split<R>> {
        match part {
            Part::Train => Ok(&self.train),
            Part::Test => self
                .test
                .as_ref()
                .ok_or_else(|| Error::Bug("no test split".into())),
            Part::Validation => Err(Error::Bug("no validation split on the device".into())),
        }
    }

    fn max_label(&self, part: Part) -> Result<i64> {
        let n = self.split(part)?.records.count();
        let order: Vec<u32> = (0..n as u32).collect();
        let mut max = 0i64;
        Feed::<DeviceBackend<R>>::for_each_batch(
            self,
            part,
            &order,
            8192,
            &self.device,
            &mut |_, y| {
                max = max.max(y.max().into_scalar().elem::<i64>());
                Ok(())
            },
        )?;
        Ok(max)
    }

    /// Copies the records of a split back to host memory, back to back. Only for tests
    /// and for checking the kernel against the CPU decryptor (`bench gpu`): it defeats
    /// the point of device decryption.
    pub fn danger_records_to_host(&self, test: bool) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let split = self.split(if test { Part::Test } else { Part::Train })?;
        let all = split
            .plain
            .opened
            .danger_read_to_host(&self.client)
            .map_err(gpu_error)?;
        let rs = split.record_size;
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(split.offsets.len() * rs));
        for &o in &split.offsets {
            let r = all
                .get(o as usize..o as usize + rs)
                .ok_or_else(|| Error::Bug("record outside the device buffer".into()))?;
            out.extend_from_slice(r);
        }
        Ok(out)
    }

    /// Trains on the device.
    pub fn train(&self, cfg: &TrainConfig, progress: &dyn TrainProgress) -> Result<Trained> {
        train::train_feed::<Autodiff<DeviceBackend<R>>>(self, cfg, &self.device, progress)
    }
}

impl<R: CubeRuntime> Feed<DeviceBackend<R>> for DeviceData<R> {
    fn len(&self, part: Part) -> Option<usize> {
        self.split(part).ok().map(|s| s.records.count())
    }

    fn input_shape(&self) -> [usize; 3] {
        self.input
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn for_each_batch(
        &self,
        part: Part,
        order: &[u32],
        batch_size: usize,
        device: &R::Device,
        f: &mut dyn FnMut(
            Tensor<DeviceBackend<R>, 4>,
            Tensor<DeviceBackend<R>, 1, Int>,
        ) -> Result<()>,
    ) -> Result<()> {
        let split = self.split(part)?;
        let [c, h, w] = self.input;
        for idx in order.chunks(batch_size.max(1)) {
            let n = idx.len();
            let (fx, fy) =
                blindfold_gpu::gather_u8(&self.client, &split.plain.opened, &split.records, idx)
                    .map_err(gpu_error)?;
            let x = CubeTensor::new_contiguous(
                self.client.clone(),
                device.clone(),
                Shape::new([n, c, h, w]),
                fx,
                burn::tensor::DType::F32,
            );
            let y = CubeTensor::new_contiguous(
                self.client.clone(),
                device.clone(),
                Shape::new([n]),
                fy,
                burn::tensor::DType::I32,
            );
            f(
                Tensor::from_primitive(TensorPrimitive::Float(x)),
                Tensor::from_primitive(y),
            )?;
        }
        Ok(())
    }
}

/// Loads the data on the device and trains there; returns the model and the seconds
/// spent loading (upload and decryption).
pub(crate) fn run<R: CubeRuntime>(
    device: R::Device,
    source: DeviceSource<'_>,
    splits: &Splits,
    cfg: &TrainConfig,
    progress: &dyn TrainProgress,
) -> Result<(Trained, f64)> {
    let t = std::time::Instant::now();
    let data = match source {
        DeviceSource::Sealed(ds) => DeviceData::<R>::from_sealed(ds, splits, &device)?,
        DeviceSource::Host(d) => DeviceData::<R>::from_dataset(d, &device)?,
    };
    blindfold_gpu::sync(&data.client).map_err(gpu_error)?;
    let load_s = t.elapsed().as_secs_f64();
    Ok((data.train(cfg, progress)?, load_s))
}

/// On-device decryption of one split next to a device-to-device copy of the same bytes.
#[cfg(feature = "bench")]
pub(crate) fn throughput<R: CubeRuntime>(
    device: R::Device,
    ds: &SealedDataset,
    split: &str,
    iterations: usize,
) -> Result<super::Throughput> {
    let elements = check_schema(&ds.manifest().schema)?;
    let client = R::client(&device);
    let Packed {
        chunks,
        offsets,
        origins,
    } = pack_sealed(ds, split, elements)?
        .ok_or_else(|| Error::BadInput(format!("the dataset has no split {split:?}")))?;
    let n_chunks = chunks.len();
    let up = blindfold_gpu::upload_batch(&client, chunks);
    // First run: compiles the kernel, and its output is checked against the CPU.
    let opened = DevicePlain {
        client: client.clone(),
        opened: up.open(&client).map_err(|e| match e {
            blindfold_gpu::Error::Tampered { chunk } => tampered(&origins, chunk),
            e => gpu_error(e),
        })?,
    };
    let all = opened
        .opened
        .danger_read_to_host(&client)
        .map_err(gpu_error)?;
    drop(opened);
    let rs = elements + 1;
    let mut device_records = zeroize::Zeroizing::new(Vec::with_capacity(offsets.len() * rs));
    for &o in &offsets {
        device_records.extend_from_slice(&all[o as usize..o as usize + rs]);
    }
    drop(all);
    let cpu = Dataset::from_sealed(
        ds,
        &crate::data::Splits {
            train: split.into(),
            test: String::new(),
        },
        &blindfold_dataset::NoProgress,
    )?;
    let identical_to_cpu = device_records[..] == cpu.train.bytes()[..];
    drop(cpu);
    drop(device_records);

    let (src, words) = up.ciphertext();
    drop(blindfold_gpu::copy_words(&client, src, words));
    blindfold_gpu::sync(&client).map_err(gpu_error)?;
    let t = std::time::Instant::now();
    up.open_repeatedly(&client, iterations).map_err(gpu_error)?;
    blindfold_gpu::sync(&client).map_err(gpu_error)?;
    let decrypt_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    for _ in 0..iterations.max(1) {
        drop(blindfold_gpu::copy_words(&client, src, words));
    }
    blindfold_gpu::sync(&client).map_err(gpu_error)?;
    let copy_s = t.elapsed().as_secs_f64();
    Ok(super::Throughput {
        bytes: up.bytes() as u64,
        chunks: n_chunks,
        iterations: iterations.max(1),
        decrypt_s,
        copy_s,
        identical_to_cpu,
    })
}
