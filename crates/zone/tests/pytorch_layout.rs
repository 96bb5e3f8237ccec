//! The exported safetensors follow PyTorch's conventions: read with the reference
//! `safetensors` crate (the format PyTorch's `safetensors.torch.load_file` reads), a
//! forward pass written the way `torch.nn.Linear` computes (y = x·Wᵀ + b, W as
//! [out, in]) gives Burn's logits.

use blindfold_zone::model::{to_safetensors, Cpu, ModelSpec};
use blindfold_zone::spec::Spec;
use burn::tensor::{Tensor, TensorData};

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// torch.nn.Linear: weight [out, in], bias [out].
fn linear(x: &[f32], w: &[f32], b: &[f32], shape: &[usize]) -> Vec<f32> {
    let (out, inp) = (shape[0], shape[1]);
    assert_eq!(x.len(), inp);
    (0..out)
        .map(|o| b[o] + (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f32>())
        .collect()
}

#[test]
fn mlp_weights_compute_like_pytorch() {
    let spec = ModelSpec {
        spec: Spec::builtin("mlp").unwrap(),
        input: [1, 28, 28],
        classes: 10,
    };
    let d = Default::default();
    let net = spec.init::<Cpu>(3, &d).unwrap();
    let bytes = to_safetensors(&net, &spec).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "head.bias",
            "head.weight",
            "layers.1.bias",
            "layers.1.weight",
            "layers.3.bias",
            "layers.3.weight",
        ]
    );
    // The names of a torch.nn.Module with `layers = nn.Sequential(Flatten, Linear,
    // ReLU, Linear, ReLU)` and `head = nn.Linear` (docs/model-spec.md).
    assert_eq!(st.tensor("layers.1.weight").unwrap().shape(), &[256, 784]);
    assert_eq!(st.tensor("head.weight").unwrap().shape(), &[10, 128]);

    let x: Vec<f32> = (0..784).map(|i| ((i * 31) % 97) as f32 / 97.0).collect();
    let mut h = x.clone();
    for (k, layer) in ["layers.1", "layers.3", "head"].iter().enumerate() {
        let w = st.tensor(&format!("{layer}.weight")).unwrap();
        let b = st.tensor(&format!("{layer}.bias")).unwrap();
        h = linear(&h, &f32s(w.data()), &f32s(b.data()), w.shape());
        if k < 2 {
            h.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    let burn: Vec<f32> = net
        .forward(Tensor::<Cpu, 4>::from_data(
            TensorData::new(x, [1, 1, 28, 28]),
            &d,
        ))
        .into_data()
        .to_vec()
        .unwrap();
    for (a, b) in h.iter().zip(&burn) {
        assert!((a - b).abs() < 1e-4, "{h:?} vs {burn:?}");
    }
}

#[test]
fn conv_weights_use_pytorch_shapes() {
    let spec = ModelSpec {
        spec: Spec::builtin("lenet5").unwrap(),
        input: [1, 28, 28],
        classes: 10,
    };
    let net = spec.init::<Cpu>(3, &Default::default()).unwrap();
    let bytes = to_safetensors(&net, &spec).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // torch.nn.Conv2d: [out_channels, in_channels, kh, kw]; Linear: [out, in].
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[6, 1, 5, 5]);
    assert_eq!(
        st.tensor("layers.3.weight").unwrap().shape(),
        &[16, 6, 5, 5]
    );
    assert_eq!(st.tensor("layers.7.weight").unwrap().shape(), &[120, 400]);
    assert_eq!(st.tensor("head.weight").unwrap().shape(), &[10, 84]);
}
