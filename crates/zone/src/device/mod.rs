//! Where training runs: the CPU (records decrypted in host memory) or a GPU (records
//! decrypted in device memory, see [`gpu`] when built with `wgpu` or `cuda`).

use blindfold_dataset::SealedDataset;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Splits};
use crate::error::{Error, Result};
use crate::train::{TrainConfig, TrainProgress, Trained};

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gpu;

/// Where training runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Burn's Flex CPU backend; records decrypted in host memory (the default).
    #[default]
    Cpu,
    /// The CPU through LibTorch, PyTorch's C++ library (Burn's `burn-tch`), in a build
    /// with the `torch` feature; records decrypted in host memory, as for [`Cpu`]. Other
    /// weights than Flex's for the same seed (other arithmetic), the same sealed or not.
    ///
    /// [`Cpu`]: DeviceKind::Cpu
    #[serde(rename = "torch-cpu")]
    TorchCpu,
    /// Any Vulkan device through wgpu (in CI: Mesa's software lavapipe).
    Wgpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl DeviceKind {
    /// True when this binary was built with the backend.
    pub fn available(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::TorchCpu => cfg!(feature = "torch"),
            DeviceKind::Wgpu => cfg!(feature = "wgpu"),
            DeviceKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The Cargo feature that builds the backend in.
    pub fn feature(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "",
            DeviceKind::TorchCpu => "torch",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// The error for a backend this binary was built without.
    pub(crate) fn not_built(self) -> Error {
        Error::BadInput(format!(
            "this binary was built without the {} backend: rebuild with `--features {}`",
            self.name(),
            self.feature()
        ))
    }

    /// True when records are decrypted into host memory and batches made there (the
    /// CPU backends); false for the GPU path, which decrypts on the device.
    pub fn host_memory(self) -> bool {
        matches!(self, DeviceKind::Cpu | DeviceKind::TorchCpu)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::TorchCpu => "torch-cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// What a device job trains on.
pub enum DeviceSource<'a> {
    /// A sealed dataset: decrypted on the device.
    Sealed(&'a SealedDataset),
    /// Records already in host memory (the plaintext baseline).
    Host(&'a Dataset),
}

/// Where CubeCL's autotune cache goes in this process (see
/// `blindfold_gpu::configure_runtime`).
fn runtime_cache_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("blindfold-cubecl-{}", std::process::id()))
}

/// Configures CubeCL before the first device use in this process (done by [`train`]
/// and `throughput`; call it before using [`gpu`] directly).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn prepare_runtime() -> Result<()> {
    let dir = runtime_cache_dir();
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(&dir)
        .map_err(|e| Error::BadInput(format!("{}: {e}", dir.display())))?;
    remove_stale_runtime_caches(&dir);
    blindfold_gpu::configure_runtime(&dir);
    Ok(())
}

/// Removes the cache folders that processes no longer running left behind (a killed
/// job, or a test process, which has no exit hook): those named
/// `blindfold-cubecl-<pid>` in the same temporary folder, owned by the same user as
/// `ours`, whose process is gone. Linux only (it asks `/proc`); elsewhere they stay.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn remove_stale_runtime_caches(ours: &std::path::Path) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let (Some(parent), Ok(me)) = (ours.parent(), std::fs::metadata(ours)) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("blindfold-cubecl-"))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let alive = std::path::Path::new("/proc").join(pid).exists();
            let mine = std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.is_dir() && m.uid() == me.uid());
            if !alive && mine {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ours;
}

/// Removes the folder CubeCL's autotune cache went to in this process, if any. Call it
/// when the process is done with devices (the CLI does, on exit).
pub fn remove_runtime_cache() {
    let dir = runtime_cache_dir();
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Loads and trains on the GPU `kind` names: from a sealed dataset (decrypted on the
/// device) or, for the baseline, from records in host memory. Returns the model and
/// the seconds spent loading.
#[allow(unused_variables)]
pub fn train(
    kind: DeviceKind,
    source: DeviceSource<'_>,
    splits: &Splits,
    cfg: &TrainConfig,
    progress: &dyn TrainProgress,
) -> Result<(Trained, f64)> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if !kind.host_memory() {
        prepare_runtime()?;
    }
    match kind {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            gpu::run::<cubecl::wgpu::WgpuRuntime>(Default::default(), source, splits, cfg, progress)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            blindfold_gpu::cuda_ready(0).map_err(gpu::gpu_error)?;
            gpu::run::<cubecl::cuda::CudaRuntime>(Default::default(), source, splits, cfg, progress)
        }
        DeviceKind::Cpu | DeviceKind::TorchCpu => Err(Error::Bug(
            "the CPU paths do not go through device::train".into(),
        )),
        #[allow(unreachable_patterns)]
        other => Err(other.not_built()),
    }
}

/// On-device decryption throughput next to a device-to-device copy of the same bytes,
/// both measured in one run ([`throughput`]).
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Ciphertext bytes on the device (chunk padding included).
    pub bytes: u64,
    /// Chunks (one cube each).
    pub chunks: usize,
    /// Repetitions timed.
    pub iterations: usize,
    /// Seconds for `iterations` decryptions of every chunk, tags checked.
    pub decrypt_s: f64,
    /// Seconds for `iterations` copies of the same bytes.
    pub copy_s: f64,
    /// The device's plaintext equals the CPU decryptor's, byte for byte.
    pub identical_to_cpu: bool,
}

/// Uploads one split of a sealed dataset, checks the device's plaintext against the
/// CPU decryptor's, then times `iterations` on-device decryptions and as many copies.
#[cfg(feature = "bench")]
#[allow(unused_variables)]
pub fn throughput(
    kind: DeviceKind,
    ds: &SealedDataset,
    split: &str,
    iterations: usize,
) -> Result<Throughput> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if !kind.host_memory() {
        prepare_runtime()?;
    }
    match kind {
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            gpu::throughput::<cubecl::wgpu::WgpuRuntime>(Default::default(), ds, split, iterations)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            blindfold_gpu::cuda_ready(0).map_err(gpu::gpu_error)?;
            gpu::throughput::<cubecl::cuda::CudaRuntime>(Default::default(), ds, split, iterations)
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::BadInput(format!(
            "no device decryption on {}: use wgpu or cuda, in a binary built with that feature",
            other.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceKind;

    #[test]
    fn names_features_and_where_records_are_decrypted() {
        let all = [
            DeviceKind::Cpu,
            DeviceKind::TorchCpu,
            DeviceKind::Wgpu,
            DeviceKind::Cuda,
        ];
        for d in all {
            // train.json names the device as the CLI does.
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<DeviceKind>(&json).unwrap(), d);
        }
        assert_eq!(
            all.map(DeviceKind::host_memory),
            [true, true, false, false],
            "the CPU backends decrypt into host memory, the GPUs on the device"
        );
        assert_eq!(DeviceKind::TorchCpu.available(), cfg!(feature = "torch"));
        let e = DeviceKind::TorchCpu.not_built().to_string();
        assert!(
            e.contains("torch-cpu backend") && e.contains("`--features torch`"),
            "{e}"
        );
    }
}
