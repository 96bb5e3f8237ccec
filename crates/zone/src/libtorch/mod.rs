//! Training through LibTorch (`--device torch-cpu`, the `torch` feature): what Burn's
//! `burn-tch` backend leaves slower than PyTorch on the same library.
//!
//! - `alloc`: glibc's thresholds, so that freed tensors are reused, not remapped.
//! - Two backward passes as PyTorch computes them, as custom operations of Burn's
//!   autodiff on [`TorchCpuTrain`]: ReLU's (one `threshold_backward`, where Burn's
//!   default builds a mask and fills it) and a 2-D convolution's (ATen's
//!   `convolution_backward` through `ffi`, where Burn's default runs a transposed
//!   convolution and a convolution over dimension-swapped copies).
//!
//! [`conv2d`] and [`relu`] take any backend's tensors and fall back to Burn's layers
//! unless the backend is [`TorchCpuTrain`]; the model calls them for every backend.
//! Both give the same forward values as Burn's layers. ReLU's gradient is the same
//! bit for bit; the convolution's may differ from Burn's default in rounding (other
//! summation order), as PyTorch's does.

mod alloc;
mod ffi;

pub(crate) use alloc::keep_freed_memory;

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::libtorch::{LibTorch, TchTensor};
use burn::nn::conv::Conv2d;
use burn::nn::{PaddingConfig2d, Relu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ActivationOps, ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::train::TorchCpuTrain;
use ffi::Conv2dGeometry;

type Inner = LibTorch<f32>;

/// How many backward steps of each kind ran here (tests: the fast path was taken).
#[cfg(test)]
static BACKWARD_STEPS: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];
#[cfg(test)]
const CONV: usize = 0;
#[cfg(test)]
const RELU: usize = 1;
#[cfg(test)]
fn steps(kind: usize) -> usize {
    BACKWARD_STEPS[kind].load(std::sync::atomic::Ordering::SeqCst)
}

/// `x` as a tensor of [`TorchCpuTrain`], or `x` back where `B` is another backend.
fn as_torch_train<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<TorchCpuTrain, D>, Tensor<B, D>> {
    let any: Box<dyn Any> = Box::new(x);
    any.downcast::<Tensor<TorchCpuTrain, D>>()
        .map(|t| *t)
        .map_err(|any| {
            *any.downcast::<Tensor<B, D>>()
                .expect("the type it was made from")
        })
}

/// A tensor of [`TorchCpuTrain`] as the `B` that [`as_torch_train`] found it was.
fn from_torch_train<B: Backend, const D: usize>(x: Tensor<TorchCpuTrain, D>) -> Tensor<B, D> {
    let any: Box<dyn Any> = Box::new(x);
    *any.downcast::<Tensor<B, D>>()
        .expect("called only where B is TorchCpuTrain")
}

/// `m.forward(x)`; on [`TorchCpuTrain`], with ATen's convolution backward.
pub(crate) fn conv2d<B: Backend>(m: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let x = match as_torch_train(x) {
        Ok(x) => x,
        Err(x) => return m.forward(x),
    };
    let padding = match m.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        // `Same` or uneven padding: Burn pads first, then convolves; keep its path.
        _ => return m.forward(from_torch_train(x)),
    };
    let geometry = Conv2dGeometry {
        stride: m.stride.map(|s| s as i64),
        padding: padding.map(|p| p as i64),
        dilation: m.dilation.map(|d| d as i64),
        groups: m.groups as i64,
    };
    let weight = as_torch_train(m.weight.val())
        .unwrap_or_else(|_| unreachable!("the layer's backend is the input's"));
    let bias = m.bias.as_ref().map(|b| {
        as_torch_train(b.val())
            .unwrap_or_else(|_| unreachable!("the layer's backend is the input's"))
    });
    let y = conv2d_tracked(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        geometry,
    );
    from_torch_train(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// `Relu.forward(x)`; on [`TorchCpuTrain`], with ATen's `threshold_backward`.
pub(crate) fn relu<B: Backend, const D: usize>(m: &Relu, x: Tensor<B, D>) -> Tensor<B, D> {
    match as_torch_train(x) {
        Ok(x) => from_torch_train(Tensor::from_primitive(TensorPrimitive::Float(
            relu_tracked(x.into_primitive().tensor()),
        ))),
        Err(x) => m.forward(x),
    }
}

fn relu_tracked(x: FloatTensor<TorchCpuTrain>) -> FloatTensor<TorchCpuTrain> {
    #[derive(Debug)]
    struct ReluBackward;

    impl Backward<Inner, 1> for ReluBackward {
        type State = NodeId;

        fn backward(self, ops: Ops<NodeId, 1>, grads: &mut Gradients, ck: &mut Checkpointer) {
            #[cfg(test)]
            BACKWARD_STEPS[RELU].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let grad = grads.consume::<Inner>(&ops.node);
            let x: TchTensor = ck.retrieve_node_output(ops.state);
            if let [Some(parent)] = ops.parents {
                // x <= 0 ? 0 : grad, as Burn's default (mask, fill) and PyTorch compute it.
                let g = x.tensor.threshold_backward(&grad.tensor, 0.0);
                grads.register::<Inner>(parent.id, TchTensor::new(g));
            }
        }
    }

    // TorchCpuTrain is `Autodiff<LibTorch<f32>>`, whose strategy is `NoCheckpointing`:
    // the input is kept for the backward step, as Burn's own ReLU keeps it there.
    match ReluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, Inner::relu(x.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(Inner::relu(x.primitive)),
    }
}

/// The state both convolution steps keep: the input's and the weight's nodes.
type ConvState = (NodeId, NodeId, Conv2dGeometry);

/// Computes the gradients the parents ask for (input, weight, bias) and registers them.
fn conv2d_backward<const N: usize>(
    ops: Ops<ConvState, N>,
    grads: &mut Gradients,
    ck: &mut Checkpointer,
) {
    #[cfg(test)]
    BACKWARD_STEPS[CONV].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let grad = grads.consume::<Inner>(&ops.node);
    let (x_node, w_node, geometry) = ops.state;
    let x: TchTensor = ck.retrieve_node_output(x_node);
    let w: TchTensor = ck.retrieve_node_output(w_node);
    let mut want = [false; 3];
    for (w, p) in want.iter_mut().zip(&ops.parents) {
        *w = p.is_some();
    }
    let computed = ffi::conv2d_backward(&grad.tensor, &x.tensor, &w.tensor, &geometry, want);
    for (parent, g) in ops.parents.into_iter().zip(computed) {
        if let (Some(parent), Some(g)) = (parent, g) {
            grads.register::<Inner>(parent.id, TchTensor::new(g));
        }
    }
}

fn conv2d_tracked(
    x: FloatTensor<TorchCpuTrain>,
    weight: FloatTensor<TorchCpuTrain>,
    bias: Option<FloatTensor<TorchCpuTrain>>,
    geometry: Conv2dGeometry,
) -> FloatTensor<TorchCpuTrain> {
    #[derive(Debug)]
    struct WithBias;
    #[derive(Debug)]
    struct NoBias;
    impl Backward<Inner, 3> for WithBias {
        type State = ConvState;
        fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, ck: &mut Checkpointer) {
            conv2d_backward(ops, grads, ck)
        }
    }
    impl Backward<Inner, 2> for NoBias {
        type State = ConvState;
        fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, ck: &mut Checkpointer) {
            conv2d_backward(ops, grads, ck)
        }
    }

    let options = ConvOptions::new(
        geometry.stride.map(|s| s as usize),
        geometry.padding.map(|p| p as usize),
        geometry.dilation.map(|d| d as usize),
        geometry.groups as usize,
    );
    let forward = |x: &FloatTensor<TorchCpuTrain>,
                   w: &FloatTensor<TorchCpuTrain>,
                   b: Option<&FloatTensor<TorchCpuTrain>>| {
        Inner::conv2d(
            x.primitive.clone(),
            w.primitive.clone(),
            b.map(|b| b.primitive.clone()),
            options,
        )
    };
    match &bias {
        Some(b) => match WithBias
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), geometry);
                prep.finish(state, forward(&x, &weight, Some(b)))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x, &weight, Some(b))),
        },
        None => match NoBias
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), geometry);
                prep.finish(state, forward(&x, &weight, None))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x, &weight, None)),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The two backward passes against Burn's own (the reference they replace), on
    //! LibTorch and on Flex, over convolution geometries the built-in models do not all
    //! use.
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::TensorData;
    use rand::{Rng, SeedableRng};

    fn data(shape: &[usize], seed: u64) -> TensorData {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        TensorData::new(v, shape.to_vec())
    }

    struct Case {
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        dilation: usize,
        groups: usize,
        padding: PaddingConfig2d,
        bias: bool,
        input_grad: bool,
    }

    /// Output, then the gradients for input (if tracked), weight and bias (if any) of
    /// `sum(conv(x) * r)`, through `ours` (this module) or the layer's `forward`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        c: &Case,
        ours: bool,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let d = Default::default();
        let [cin, cout] = c.channels;
        let mut m = Conv2dConfig::new(c.channels, [c.kernel, c.kernel])
            .with_stride([c.stride, c.stride])
            .with_dilation([c.dilation, c.dilation])
            .with_groups(c.groups)
            .with_padding(c.padding.clone())
            .with_bias(c.bias)
            .init::<B>(&d);
        let wshape = [cout, cin / c.groups, c.kernel, c.kernel];
        m.weight = Param::from_tensor(Tensor::from_data(data(&wshape, 1), &d));
        if c.bias {
            m.bias = Some(Param::from_tensor(Tensor::from_data(data(&[cout], 2), &d)));
        }
        let mut x = Tensor::<B, 4>::from_data(data(&[3, cin, 9, 8], 3), &d);
        if c.input_grad {
            x = x.require_grad();
        }
        let y = if ours {
            conv2d(&m, x.clone())
        } else {
            m.forward(x.clone())
        };
        let r = Tensor::<B, 4>::from_data(data(&y.dims(), 4), &d);
        let out = y.clone().into_data().to_vec::<f32>().unwrap();
        let grads = (y * r).sum().backward();
        let mut g = Vec::new();
        if c.input_grad {
            g.push(x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap());
        }
        g.push(
            m.weight
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap(),
        );
        if let Some(b) = &m.bias {
            g.push(b.val().grad(&grads).unwrap().into_data().to_vec().unwrap());
        }
        (out, g)
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn conv2d_gradients_match_burns_backward_on_libtorch_and_flex() {
        let explicit = |t, l| PaddingConfig2d::Explicit(t, l, t, l);
        #[rustfmt::skip]
        let cases = [
            Case { channels: [3, 4], kernel: 3, stride: 1, dilation: 1, groups: 1, padding: explicit(1, 1), bias: true, input_grad: true },
            Case { channels: [1, 5], kernel: 3, stride: 1, dilation: 1, groups: 1, padding: explicit(1, 1), bias: true, input_grad: false },
            Case { channels: [2, 3], kernel: 3, stride: 2, dilation: 2, groups: 1, padding: explicit(2, 1), bias: false, input_grad: true },
            Case { channels: [4, 6], kernel: 2, stride: 1, dilation: 1, groups: 2, padding: PaddingConfig2d::Valid, bias: true, input_grad: true },
            Case { channels: [2, 2], kernel: 3, stride: 2, dilation: 1, groups: 1, padding: PaddingConfig2d::Same, bias: true, input_grad: true },
        ];
        for (i, c) in cases.iter().enumerate() {
            let before = steps(CONV);
            let (y, ours) = run::<TorchCpuTrain>(c, true);
            // `Same` padding takes Burn's layer; every other case ATen's backward.
            let taken = !matches!(c.padding, PaddingConfig2d::Same);
            assert_eq!(steps(CONV) > before, taken, "case {i}: which backward ran");
            let (y_burn, burn) = run::<TorchCpuTrain>(c, false);
            let (y_flex, flex) = run::<Autodiff<Flex>>(c, false);
            assert_eq!(
                y, y_burn,
                "case {i}: the forward pass is LibTorch's conv2d either way"
            );
            close(&y, &y_flex, &format!("case {i}: output vs Flex"));
            assert_eq!(ours.len(), burn.len(), "case {i}: gradients computed");
            for (k, ((o, b), f)) in ours.iter().zip(&burn).zip(&flex).enumerate() {
                close(
                    o,
                    b,
                    &format!("case {i}, gradient {k}: ours vs Burn's on LibTorch"),
                );
                close(
                    o,
                    f,
                    &format!("case {i}, gradient {k}: ours vs Burn's on Flex"),
                );
            }
        }
    }

    #[test]
    fn relu_gradient_is_burns_bit_for_bit() {
        let d = Default::default();
        let mut v = data(&[4, 33], 5).to_vec::<f32>().unwrap();
        v[..4].copy_from_slice(&[0.0, -0.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
        let run = |ours: bool| {
            let x = Tensor::<TorchCpuTrain, 2>::from_data(TensorData::new(v.clone(), [4, 33]), &d)
                .require_grad();
            let y = if ours {
                relu(&Relu::new(), x.clone())
            } else {
                Relu::new().forward(x.clone())
            };
            let r = Tensor::<TorchCpuTrain, 2>::from_data(data(&[4, 33], 6), &d);
            let out = y.clone().into_data();
            let g = x.grad(&(y * r).sum().backward()).unwrap().into_data();
            (out, g)
        };
        let before = steps(RELU);
        let (y, g) = run(true);
        assert!(steps(RELU) > before, "threshold_backward ran");
        let (y_burn, g_burn) = run(false);
        assert_eq!(y, y_burn);
        assert_eq!(g, g_burn);
        assert!(
            g.to_vec::<f32>()
                .unwrap()
                .iter()
                .filter(|v| **v == 0.0)
                .count()
                >= 4
        );
    }

    /// A built-in model trained on TorchCpuTrain goes through both operations.
    #[test]
    fn the_models_layers_take_these_operations() {
        use crate::model::ModelSpec;
        use crate::spec::Spec;
        let d = Default::default();
        let spec = ModelSpec {
            spec: Spec::builtin("cnn").unwrap(),
            input: [1, 28, 28],
            classes: 10,
        };
        let net = spec.init::<TorchCpuTrain>(1, &d).unwrap();
        let x = Tensor::<TorchCpuTrain, 4>::from_data(data(&[2, 1, 28, 28], 8), &d);
        let (conv, relu) = (steps(CONV), steps(RELU));
        let _ = net.forward(x).sum().backward();
        // Two convolutions, three ReLUs (the last after the hidden linear layer).
        assert!(steps(CONV) >= conv + 2, "conv2d backward steps");
        assert!(steps(RELU) >= relu + 3, "relu backward steps");
    }

    /// ATen's refusal (a C++ exception) comes back as a panic with its message: it does
    /// not unwind through Rust, which would abort the process instead.
    #[test]
    #[should_panic(expected = "LibTorch's convolution_backward failed")]
    fn atens_errors_come_back_as_a_panic() {
        let f = (tch::Kind::Float, tch::Device::Cpu);
        let geometry = Conv2dGeometry {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        // A 3-D weight: not a 2-D convolution's.
        let _ = ffi::conv2d_backward(
            &tch::Tensor::zeros([1, 2, 3, 3], f),
            &tch::Tensor::zeros([1, 1, 5, 5], f),
            &tch::Tensor::zeros([2, 1, 3], f),
            &geometry,
            [true, true, true],
        );
    }

    #[test]
    fn other_backends_take_burns_layers() {
        let d = Default::default();
        let m = Conv2dConfig::new([1, 2], [3, 3]).init::<Flex>(&d);
        let x = Tensor::<Flex, 4>::from_data(data(&[1, 1, 5, 5], 7), &d);
        assert_eq!(conv2d(&m, x.clone()).into_data(), m.forward(x).into_data());
        assert!(as_torch_train(Tensor::<Flex, 1>::zeros([1], &d)).is_err());
    }
}
