// ATen's own convolution backward, which tch (the Rust binding under burn-tch) does not
// bind. PyTorch calls this operator for every Conv2d backward on the CPU (oneDNN where
// it applies). Burn's generic default builds the same gradients from a transposed
// convolution and a convolution over dimension-swapped copies: for the weight gradient
// of a first layer (one input channel), 5-18x slower (scripts/aten-backward-bench.py,
// docs/cpu-training-profile.md).
//
// Called from ffi.rs only. Tensors cross as `at::Tensor*`, as tch passes them
// (torch-sys's `tensor` type): the inputs are borrowed for the call; each output the
// caller asked for is a new `at::Tensor*` that the caller owns (tch frees it with
// `delete`). No C++ exception crosses into Rust (the function is noexcept, and catches
// everything): a std::exception's message is copied, truncated, into the caller's
// buffer; anything else is reported as such.

#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution_backward.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>

// Frees what was made before the failure and copies the message.
static void fail(at::Tensor **grad_input, at::Tensor **grad_weight, at::Tensor **grad_bias,
                 const char *why, char *error, size_t error_len) noexcept {
    delete *grad_input;
    delete *grad_weight;
    delete *grad_bias;
    *grad_input = nullptr;
    *grad_weight = nullptr;
    *grad_bias = nullptr;
    if (error_len > 0) {
        std::strncpy(error, why, error_len - 1);
        error[error_len - 1] = '\0';
    }
}

extern "C" int blindfold_conv2d_backward(
    const at::Tensor *grad_output, const at::Tensor *input, const at::Tensor *weight,
    const int64_t *stride, const int64_t *padding, const int64_t *dilation, int64_t groups,
    const bool *output_mask, at::Tensor **grad_input, at::Tensor **grad_weight,
    at::Tensor **grad_bias, char *error, size_t error_len) noexcept {
    *grad_input = nullptr;
    *grad_weight = nullptr;
    *grad_bias = nullptr;
    try {
        const std::array<bool, 3> mask = {output_mask[0], output_mask[1], output_mask[2]};
        const int64_t bias_size = weight->size(0);
        const int64_t no_output_padding[2] = {0, 0};
        auto grads = at::convolution_backward(
            *grad_output, *input, *weight,
            mask[2] ? at::OptionalIntArrayRef(at::IntArrayRef(&bias_size, 1))
                    : at::OptionalIntArrayRef(),
            at::IntArrayRef(stride, 2), at::IntArrayRef(padding, 2),
            at::IntArrayRef(dilation, 2), /*transposed=*/false,
            at::IntArrayRef(no_output_padding, 2), groups, mask);
        if (mask[0]) *grad_input = new at::Tensor(std::move(std::get<0>(grads)));
        if (mask[1]) *grad_weight = new at::Tensor(std::move(std::get<1>(grads)));
        if (mask[2]) *grad_bias = new at::Tensor(std::move(std::get<2>(grads)));
        return 0;
    } catch (const std::exception &e) {
        fail(grad_input, grad_weight, grad_bias, e.what(), error, error_len);
    } catch (...) {
        fail(grad_input, grad_weight, grad_bias, "a C++ exception that is not a std::exception",
             error, error_len);
    }
    return 1;
}
