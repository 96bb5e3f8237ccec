//! The one call into C++ that blindfold makes itself: ATen's `convolution_backward`
//! (conv_backward.cpp), which tch does not bind. Like `alloc`, this module may use
//! `unsafe`, and only in a build with the `torch` feature.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

unsafe extern "C" {
    // conv_backward.cpp: tensors are `at::Tensor*` (tch's `C_tensor`); the three `out`
    // pointers are written (null unless asked for and computed); 0 on success, else the
    // C++ exception's message is in `error`.
    fn blindfold_conv2d_backward(
        grad_output: *const c_void,
        input: *const c_void,
        weight: *const c_void,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        output_mask: *const bool,
        grad_input: *mut *mut c_void,
        grad_weight: *mut *mut c_void,
        grad_bias: *mut *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// A 2-D convolution's geometry, as ATen takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv2dGeometry {
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub groups: i64,
}

/// The gradients of a 2-D convolution (no transposition, no output padding) for its
/// input, weight and bias, each computed only where `want` asks for it.
///
/// # Panics
/// Where ATen refuses the arguments (tensors that do not fit the geometry): the caller's
/// bug, as for every other LibTorch operation Burn calls.
pub(crate) fn conv2d_backward(
    grad_output: &tch::Tensor,
    input: &tch::Tensor,
    weight: &tch::Tensor,
    geometry: &Conv2dGeometry,
    want: [bool; 3],
) -> [Option<tch::Tensor>; 3] {
    let mut out: [*mut c_void; 3] = [std::ptr::null_mut(); 3];
    let mut error = [0 as c_char; 512];
    let [gi, gw, gb] = &mut out;
    // SAFETY: the three tensors are live `at::Tensor`s borrowed for the call (tch's
    // pointers); the geometry arrays hold two elements each and `want` three, as the
    // C++ side reads; it writes only the three out pointers and at most `error.len()`
    // bytes of `error`, NUL-terminated.
    let rc = unsafe {
        blindfold_conv2d_backward(
            grad_output.as_ptr().cast(),
            input.as_ptr().cast(),
            weight.as_ptr().cast(),
            geometry.stride.as_ptr(),
            geometry.padding.as_ptr(),
            geometry.dilation.as_ptr(),
            geometry.groups,
            want.as_ptr(),
            gi,
            gw,
            gb,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if rc != 0 {
        // SAFETY: on failure the C++ side wrote a NUL-terminated string into `error`
        // (which is zeroed, so it is terminated even if it wrote nothing).
        let why = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy();
        panic!("LibTorch's convolution_backward failed: {why}");
    }
    out.map(|p| {
        // SAFETY: a non-null pointer is a `new at::Tensor` that the C++ side handed over
        // and nothing else holds; tch's `Tensor` takes it over and `delete`s it on drop.
        (!p.is_null()).then(|| unsafe { tch::Tensor::from_ptr(p.cast()) })
    })
}
