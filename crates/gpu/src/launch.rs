//! Host side: packs chunks for the kernels, uploads them, launches, checks the verdicts.
//! The only module allowed `unsafe`: CubeCL's array arguments are built from a handle
//! and a length the caller vouches for.
#![allow(unsafe_code)]

use cubecl::prelude::*;
use cubecl::server::Handle;
use zeroize::{Zeroize, Zeroizing};

use crate::kernel::{self, AAD_WORDS, META_WORDS, UNITS};
use crate::{Error, Key, Result};

/// The largest associated data a chunk may carry (bytes).
pub const MAX_AAD: usize = AAD_WORDS * 4;
/// The largest chunk (ciphertext bytes, tag excluded) the kernel takes: lengths are
/// 32-bit on the device.
pub const MAX_CHUNK: usize = 1 << 30;
const TAG: usize = 16;
const MAX_CUBES_X: u32 = 65_535;

/// Where a chunk's plaintext lands in the device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlace {
    /// Byte offset in the plaintext buffer (a multiple of 64).
    pub offset: usize,
    /// Plaintext bytes.
    pub len: usize,
}

/// Chunks to open in one launch, packed the way the kernel reads them. Ciphertext and
/// metadata are public; the keys are held in zeroizing memory until uploaded.
#[derive(Default)]
pub struct Batch {
    data: Vec<u32>,
    meta: Vec<u32>,
    aad: Vec<u32>,
    aad_lens: Vec<u32>,
    keys: Zeroizing<Vec<u32>>,
    places: Vec<ChunkPlace>,
}

fn words_le(bytes: &[u8], out: &mut Vec<u32>) {
    let mut it = bytes.chunks_exact(4);
    for w in &mut it {
        out.push(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = it.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        out.push(u32::from_le_bytes(w));
    }
}

impl Batch {
    /// An empty batch with room for `ciphertext` bytes in `chunks` chunks.
    pub fn with_capacity(ciphertext: usize, chunks: usize) -> Self {
        Batch {
            data: Vec::with_capacity(ciphertext / 4 + chunks * 16),
            meta: Vec::with_capacity(chunks * META_WORDS),
            places: Vec::with_capacity(chunks),
            ..Batch::default()
        }
    }

    /// Adds a key; returns its slot.
    pub fn add_key(&mut self, key: Key) -> u32 {
        let slot = (self.keys.len() / 8) as u32;
        if self.keys.capacity() - self.keys.len() < 8 {
            // Grown by hand: a reallocation by `push` would free the old buffer, keys
            // and all, unwiped. Here the old buffer is a `Zeroizing`: wiped on drop.
            let mut grown = Zeroizing::new(Vec::with_capacity((self.keys.capacity() * 2).max(64)));
            grown.extend_from_slice(&self.keys);
            self.keys = grown;
        }
        for w in key.0.chunks_exact(4) {
            self.keys.push(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        slot
    }

    /// Adds associated data (at most [`MAX_AAD`] bytes); returns its slot.
    pub fn add_aad(&mut self, aad: &[u8]) -> Result<u32> {
        if aad.len() > MAX_AAD {
            return Err(Error::BadInput(format!(
                "associated data of {} bytes (the kernel takes at most {MAX_AAD})",
                aad.len()
            )));
        }
        let slot = (self.aad.len() / AAD_WORDS) as u32;
        let start = self.aad.len();
        words_le(aad, &mut self.aad);
        self.aad.resize(start + AAD_WORDS, 0);
        self.aad_lens.push(aad.len() as u32);
        Ok(slot)
    }

    /// Adds one sealed chunk (`ciphertext ‖ 16-byte tag`) under key slot `key`, with
    /// associated data slot `aad` and its 96-bit `nonce`. Returns where its plaintext
    /// will be.
    pub fn add_chunk(
        &mut self,
        key: u32,
        aad: u32,
        nonce: [u8; 12],
        sealed: &[u8],
    ) -> Result<ChunkPlace> {
        if sealed.len() < TAG {
            return Err(Error::BadInput(format!(
                "a sealed chunk of {} bytes is shorter than its tag",
                sealed.len()
            )));
        }
        if (key as usize) * 8 >= self.keys.len() || (aad as usize) >= self.aad_lens.len() {
            return Err(Error::BadInput(
                "no such key or associated-data slot".into(),
            ));
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG);
        if ct.len() > MAX_CHUNK {
            return Err(Error::BadInput(format!(
                "a chunk of {} bytes (the kernel takes at most {MAX_CHUNK})",
                ct.len()
            )));
        }
        let offset = self.data.len();
        if (offset + ct.len() / 4 + 16) > u32::MAX as usize {
            return Err(Error::BadInput(
                "a batch of more than 16 GiB of ciphertext".into(),
            ));
        }
        words_le(ct, &mut self.data);
        // Pad to a whole 64-byte block with zeros (Poly1305's padding reads them).
        let padded = self.data.len().div_ceil(16) * 16;
        self.data.resize(padded, 0);
        let mut m = [0u32; META_WORDS];
        m[kernel::M_OFFSET] = offset as u32;
        m[kernel::M_LEN] = ct.len() as u32;
        m[kernel::M_KEY] = key;
        m[kernel::M_AAD] = aad;
        let mut nw = Vec::with_capacity(3);
        words_le(&nonce, &mut nw);
        m[kernel::M_NONCE..kernel::M_NONCE + 3].copy_from_slice(&nw);
        let mut tw = Vec::with_capacity(4);
        words_le(tag, &mut tw);
        m[kernel::M_TAG..kernel::M_TAG + 4].copy_from_slice(&tw);
        m[kernel::M_AAD_LEN] = self.aad_lens[aad as usize];
        self.meta.extend_from_slice(&m);
        let place = ChunkPlace {
            offset: offset * 4,
            len: ct.len(),
        };
        self.places.push(place);
        Ok(place)
    }

    /// Chunks added so far.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Ciphertext bytes the device will hold (padding included).
    pub fn device_bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Plaintext chunks in device memory, authenticated.
pub struct Opened {
    /// The device buffer (32-bit words).
    pub handle: Handle,
    /// Its length in words.
    pub words: usize,
    /// Where each chunk's plaintext is, in the order the chunks were added.
    pub places: Vec<ChunkPlace>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("words", &self.words)
            .field("chunks", &self.places.len())
            .finish_non_exhaustive()
    }
}

impl Opened {
    /// Copies the plaintext back to host memory. Only for tests and for checking the
    /// kernel against the CPU decryptor: it defeats the point of device decryption.
    pub fn danger_read_to_host<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let bytes = client
            .read_one(self.handle.clone())
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        Ok(Zeroizing::new(bytes.to_vec()))
    }
}

fn cube_count(n: u32) -> CubeCount {
    if n <= MAX_CUBES_X {
        CubeCount::Static(n.max(1), 1, 1)
    } else {
        CubeCount::Static(MAX_CUBES_X, n.div_ceil(MAX_CUBES_X), 1)
    }
}

/// A device buffer of `words` 32-bit zeros (not `empty`: that one holds whatever the
/// memory pool's last user left there).
fn zeroed<R: Runtime>(client: &ComputeClient<R>, words: usize) -> Handle {
    client.create_from_slice(&vec![0u8; words * 4])
}

fn upload<R: Runtime>(client: &ComputeClient<R>, words: &[u32]) -> Handle {
    // An empty buffer is not allowed; one zero word stands in for it.
    if words.is_empty() {
        client.create_from_slice(&[0u8; 4])
    } else {
        client.create_from_slice(u32::as_bytes(words))
    }
}

/// Waits for the device to finish its queued work.
pub fn sync<R: Runtime>(client: &ComputeClient<R>) -> Result<()> {
    cubecl::future::block_on(client.sync()).map_err(|e| Error::Device(format!("{e:?}")))
}

/// A batch of sealed chunks in device memory, not yet opened.
pub struct Uploaded {
    data: Handle,
    words: usize,
    meta: Handle,
    meta_words: usize,
    aad: Handle,
    aad_words: usize,
    keys: Handle,
    key_words: usize,
    places: Vec<ChunkPlace>,
}

impl std::fmt::Debug for Uploaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploaded")
            .field("words", &self.words)
            .field("chunks", &self.places.len())
            .finish_non_exhaustive()
    }
}

/// Uploads the batch. The keys are zeroized in host memory right after the copy.
pub fn upload_batch<R: Runtime>(client: &ComputeClient<R>, mut batch: Batch) -> Uploaded {
    let key_words = batch.keys.len().max(1);
    let keys = upload(client, &batch.keys);
    batch.keys.zeroize();
    Uploaded {
        words: batch.data.len().max(1),
        data: upload(client, &batch.data),
        meta_words: batch.meta.len().max(1),
        meta: upload(client, &batch.meta),
        aad_words: batch.aad.len().max(1),
        aad: upload(client, &batch.aad),
        keys,
        key_words,
        places: std::mem::take(&mut batch.places),
    }
}

impl Uploaded {
    /// Ciphertext bytes on the device (padding included).
    pub fn bytes(&self) -> usize {
        self.words * 4
    }

    /// The ciphertext buffer and its length in words (for a bandwidth reference).
    #[cfg(feature = "bench")]
    pub fn ciphertext(&self) -> (&Handle, usize) {
        (&self.data, self.words)
    }

    /// Opens every chunk on the device into a new buffer and checks every tag. On the
    /// first chunk that fails authentication the whole batch is refused
    /// ([`Error::Tampered`]) and its plaintext buffer wiped and dropped.
    pub fn open<R: Runtime>(&self, client: &ComputeClient<R>) -> Result<Opened> {
        self.open_times(client, 1)
    }

    #[cfg(feature = "bench")]
    /// For benchmarks: opens the batch `iterations` times into one buffer, back to back
    /// on the device's queue, then checks the last run's tags and wipes the buffer.
    /// The host waits once, so the time measured is the kernel's, not the round trips'.
    pub fn open_repeatedly<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        iterations: usize,
    ) -> Result<()> {
        let opened = self.open_times(client, iterations.max(1))?;
        wipe(client, &opened);
        Ok(())
    }

    /// Launches `open_chunks` `iterations` times into one new buffer, then checks the
    /// tags of the last run (wiping the buffer if one failed).
    fn open_times<R: Runtime>(
        &self,
        client: &ComputeClient<R>,
        iterations: usize,
    ) -> Result<Opened> {
        let chunks = self.places.len();
        let out = client.empty(self.words * 4);
        // Verdicts start at 0 (failed): a buffer from the pool may hold a 1 from an
        // earlier launch, which a chunk the kernel never reached would otherwise inherit.
        let status = zeroed(client, chunks.max(1));
        for _ in 0..iterations {
            kernel::open_chunks::launch::<R>(
                client,
                cube_count(chunks as u32),
                CubeDim::new_1d(UNITS),
                unsafe { ArrayArg::from_raw_parts(self.data.clone(), self.words) },
                unsafe { ArrayArg::from_raw_parts(self.meta.clone(), self.meta_words) },
                unsafe { ArrayArg::from_raw_parts(self.keys.clone(), self.key_words) },
                unsafe { ArrayArg::from_raw_parts(self.aad.clone(), self.aad_words) },
                unsafe { ArrayArg::from_raw_parts(out.clone(), self.words) },
                unsafe { ArrayArg::from_raw_parts(status.clone(), chunks.max(1)) },
                chunks as u32,
            );
        }
        let verdicts = client
            .read_one(status)
            .map_err(|e| Error::Device(format!("{e:?}")))?;
        let opened = Opened {
            handle: out,
            words: self.words,
            places: self.places.clone(),
        };
        if let Some(bad) = u32::from_bytes(&verdicts)[..chunks]
            .iter()
            .position(|&v| v != 1)
        {
            wipe(client, &opened);
            return Err(Error::Tampered { chunk: bad });
        }
        Ok(opened)
    }
}

/// Uploads the batch, opens every chunk on the device and checks every tag: see
/// [`upload_batch`] and [`Uploaded::open`].
pub fn open<R: Runtime>(client: &ComputeClient<R>, batch: Batch) -> Result<Opened> {
    upload_batch(client, batch).open(client)
}

const GATHER_UNITS: u32 = 256;

/// Record layout of a split whose plaintext is in device memory, for [`gather_u8`].
pub struct Records {
    offsets: Handle,
    count: usize,
    scale: Handle,
    elements: usize,
}

impl Records {
    /// `offsets[r]`: byte offset of record `r` in the plaintext buffer; each record is
    /// `elements` `u8` features then a `u8` label. `scale[v]` is the feature value of
    /// byte `v`.
    pub fn new<R: Runtime>(
        client: &ComputeClient<R>,
        offsets: &[u32],
        elements: usize,
        scale: &[f32; 256],
    ) -> Result<Self> {
        if elements == 0 || elements > u32::MAX as usize / 2 {
            return Err(Error::BadInput(format!("{elements} features per record")));
        }
        Ok(Records {
            offsets: upload(client, offsets),
            count: offsets.len(),
            scale: client.create_from_slice(f32::as_bytes(scale)),
            elements,
        })
    }

    /// Records in the split.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Builds one batch on the device: features (`indices.len() × elements` f32) and labels
/// (`indices.len()` i32) of the records `indices`, read from `plain`.
pub fn gather_u8<R: Runtime>(
    client: &ComputeClient<R>,
    plain: &Opened,
    records: &Records,
    indices: &[u32],
) -> Result<(Handle, Handle)> {
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= records.count) {
        return Err(Error::BadInput(format!(
            "record {bad} of a split of {}",
            records.count
        )));
    }
    let n = indices.len();
    let total = n * records.elements;
    if n == 0 || total > u32::MAX as usize {
        return Err(Error::BadInput(format!("a batch of {n} records")));
    }
    let idx = upload(client, indices);
    let features = client.empty(total * 4);
    let labels = client.empty(n * 4);
    kernel::gather_u8::launch::<R>(
        client,
        cube_count((total as u32).div_ceil(GATHER_UNITS)),
        CubeDim::new_1d(GATHER_UNITS),
        unsafe { ArrayArg::from_raw_parts(plain.handle.clone(), plain.words) },
        unsafe { ArrayArg::from_raw_parts(records.offsets.clone(), records.count.max(1)) },
        unsafe { ArrayArg::from_raw_parts(idx, n) },
        unsafe { ArrayArg::from_raw_parts(records.scale.clone(), 256) },
        unsafe { ArrayArg::from_raw_parts(features.clone(), total) },
        unsafe { ArrayArg::from_raw_parts(labels.clone(), n) },
        n as u32,
        records.elements as u32,
    );
    Ok((features, labels))
}

/// Copies `words` 32-bit words from `src` to a new device buffer: the reference for
/// device memory bandwidth in `blindfold bench gpu`.
#[cfg(feature = "bench")]
pub fn copy_words<R: Runtime>(client: &ComputeClient<R>, src: &Handle, words: usize) -> Handle {
    let dst = client.empty(words.max(1) * 4);
    kernel::copy_words::launch::<R>(
        client,
        cube_count((words as u32).div_ceil(GATHER_UNITS)),
        CubeDim::new_1d(GATHER_UNITS),
        unsafe { ArrayArg::from_raw_parts(src.clone(), words.max(1)) },
        unsafe { ArrayArg::from_raw_parts(dst.clone(), words.max(1)) },
        words as u32,
    );
    dst
}

/// Uploads records that are already plaintext in host memory (the baseline of `bench
/// gpu`), laid out as one chunk at offset 0.
pub fn upload_plaintext<R: Runtime>(client: &ComputeClient<R>, bytes: &[u8]) -> Result<Opened> {
    if bytes.len() / 4 + 16 > u32::MAX as usize {
        return Err(Error::BadInput("more than 16 GiB of records".into()));
    }
    let mut words = Zeroizing::new(Vec::with_capacity(bytes.len() / 4 + 16));
    words_le(bytes, &mut words);
    let n = words.len().div_ceil(16) * 16;
    words.resize(n.max(16), 0);
    Ok(Opened {
        handle: upload(client, &words),
        words: words.len(),
        places: vec![ChunkPlace {
            offset: 0,
            len: bytes.len(),
        }],
    })
}

/// Overwrites the plaintext in device memory with zeros (queued; call [`sync`] to wait).
pub fn wipe<R: Runtime>(client: &ComputeClient<R>, opened: &Opened) {
    kernel::fill_zero::launch::<R>(
        client,
        cube_count((opened.words as u32).div_ceil(GATHER_UNITS)),
        CubeDim::new_1d(GATHER_UNITS),
        unsafe { ArrayArg::from_raw_parts(opened.handle.clone(), opened.words) },
        opened.words as u32,
    );
}

#[cfg(all(test, any(feature = "wgpu", feature = "cuda-tests")))]
mod tests {
    use super::*;

    #[cfg(feature = "cuda-tests")]
    type R = cubecl::cuda::CudaRuntime;
    #[cfg(not(feature = "cuda-tests"))]
    type R = cubecl::wgpu::WgpuRuntime;

    /// The verdict buffer starts at zeros, even where the pool hands back memory an
    /// earlier launch filled with passing verdicts (before, it was `empty`).
    #[test]
    fn verdicts_start_at_zero_whatever_the_pool_held() {
        let c = R::client(&Default::default());
        let words = 4096;
        // The premise: a buffer freed full of 1s comes back as `empty` with them.
        let ones = upload(&c, &vec![1u32; words]);
        drop(ones);
        let reused = c.empty(words * 4);
        let stale = u32::from_bytes(&c.read_one(reused.clone()).unwrap()).to_vec();
        assert!(
            stale.contains(&1),
            "the pool did not hand back the freed buffer: this test shows nothing here"
        );
        drop(reused);
        let ones = upload(&c, &vec![1u32; words]);
        drop(ones);
        let status = zeroed(&c, words);
        let got = u32::from_bytes(&c.read_one(status).unwrap()).to_vec();
        assert!(got.iter().all(|&v| v == 0));
    }
}
