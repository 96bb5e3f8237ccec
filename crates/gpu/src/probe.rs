//! Asks whether CUDA can run here before CubeCL is started: CubeCL's CUDA runtime
//! panics (inside cudarc) when the driver library, a device or NVRTC is missing, and a
//! job should stop with an error that says which, not a panic.

use crate::{Error, Result};

/// Checks that the CUDA driver (`libcuda`) and NVRTC (`libnvrtc`, which compiles the
/// kernels at run time) can be loaded, that the driver starts, and that device
/// `ordinal` exists. Nothing is left loaded that CubeCL would not load anyway.
pub fn cuda_ready(ordinal: usize) -> Result<()> {
    // SAFETY: these load the shared libraries CubeCL's runtime loads (same cudarc, same
    // candidate names) and call no function in them; loading runs only the libraries'
    // own initializers, which CubeCL would run on first use.
    #[allow(unsafe_code)]
    let (driver, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(Error::Unavailable(
            "no CUDA driver here (libcuda.so was not found): `--device cuda` needs an NVIDIA \
             GPU with its driver installed"
                .into(),
        ));
    }
    if !nvrtc {
        return Err(Error::Unavailable(
            "CUDA's run-time compiler NVRTC was not found (libnvrtc.so): install the CUDA \
             toolkit's NVRTC library or put its folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    cudarc::driver::result::init()
        .map_err(|e| Error::Unavailable(format!("the CUDA driver did not start: {e:?}")))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| Error::Unavailable(format!("CUDA could not count devices: {e:?}")))?;
    let count = usize::try_from(count).unwrap_or(0);
    if ordinal >= count {
        return Err(Error::Unavailable(format!(
            "CUDA device {ordinal} does not exist: this machine has {count}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No machine has a device at the largest ordinal: without a driver the probe says
    /// so, with one it says the device does not exist. Either way an error, no panic.
    #[test]
    fn a_missing_device_is_an_error_not_a_panic() {
        match cuda_ready(usize::MAX) {
            Err(Error::Unavailable(m)) => assert!(
                m.contains("libcuda")
                    || m.contains("does not exist")
                    || m.contains("NVRTC")
                    || m.contains("did not start"),
                "{m}"
            ),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
