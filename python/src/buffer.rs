//! Decrypted records in memory that Python reads without a copy: [`Records`] exports its
//! bytes through the buffer protocol, so `torch.frombuffer` and `memoryview` see the
//! very bytes Rust decrypted. They are wiped on `close()` and when the object is freed.
//!
//! This is the crate's only `unsafe` code: filling a `Py_buffer` is raw-pointer work.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CString};

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use zeroize::{Zeroize, Zeroizing};

/// Plaintext bytes of the trusted zone: the features or the labels of records, back to
/// back. Backed by `u64` words, so every element type is aligned for a typed view.
///
/// Lifetime: a view (a tensor, a memoryview) holds a reference to this object, so its
/// memory stays valid while any view lives. `close()` overwrites the bytes with zeros
/// in place at once (views then read zeros); freeing the object wipes it again.
#[pyclass(module = "blindfold._native")]
pub struct Records {
    words: Zeroizing<Vec<u64>>,
    len: usize,
    closed: bool,
}

impl Records {
    /// `len` zero bytes. The allocation is made once and never moves.
    pub fn zeroed(len: usize) -> Records {
        Records {
            words: Zeroizing::new(vec![0u64; len.div_ceil(8)]),
            len,
            closed: false,
        }
    }

    /// The bytes, to fill.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..len]
    }
}

#[pymethods]
impl Records {
    /// Exports the bytes (format `B`, one dimension). Writable, as `torch.frombuffer`
    /// expects: a write changes only this process's copy of the records.
    ///
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("null Py_buffer"));
        }
        let (ptr, len) = {
            let mut r = slf.borrow_mut();
            if r.closed {
                return Err(PyValueError::new_err("the records are closed (wiped)"));
            }
            let len = r.len;
            (r.bytes_mut().as_mut_ptr(), len)
        };
        // SAFETY: `view` is non-null and CPython's to fill. `ptr` points into `words`,
        // allocated once and never resized; it stays valid until this object is freed,
        // which cannot happen before the view is released, because the view holds a
        // strong reference to this object (`obj`). Shape and strides point into the
        // view itself, as CPython's own `PyBuffer_FillInfo` does.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = ptr as *mut c_void;
            (*view).len = len as isize;
            (*view).readonly = 0;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                CString::from(c"B").into_raw()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython with the view `__getbuffer__` filled.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: `format` is null or the CString made by `__getbuffer__`.
        unsafe {
            if !(*view).format.is_null() {
                drop(CString::from_raw((*view).format));
            }
        }
    }

    /// Overwrites the bytes with zeros now. Views that still exist read zeros.
    fn close(&mut self) {
        // The slice, not the Vec: the allocation keeps its length, views stay in bounds.
        self.words.as_mut_slice().zeroize();
        self.closed = true;
    }

    /// Whether `close()` has wiped the bytes.
    #[getter]
    fn closed(&self) -> bool {
        self.closed
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!(
            "<blindfold Records: {} bytes{}>",
            self.len,
            if self.closed { ", closed" } else { "" }
        )
    }
}
