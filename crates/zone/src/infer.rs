//! Inference with trained weights, for a prediction service: the weights (safetensors
//! bytes, as a job seals them) are parsed into a network in the zone's memory, and
//! records come in as the features the model saw in training.

use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::model::{self, Cpu, ModelSpec, Net};
use crate::spec::Head;

/// The index of the largest logit (the first of equal ones; NaN never wins): a
/// classifier's predicted label.
pub fn top1(logits: &[f32]) -> usize {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// A trained network, ready to answer.
pub struct Predictor {
    net: Net<Cpu>,
    spec: ModelSpec,
    device: burn::tensor::Device<Cpu>,
}

impl Predictor {
    /// The network in `weights` (a blindfold safetensors model).
    pub fn from_safetensors(weights: &[u8]) -> Result<Predictor> {
        let spec = model::safetensors_spec(weights)?;
        let device = Default::default();
        let net = spec.from_safetensors::<Cpu>(weights, &device)?;
        Ok(Predictor { net, spec, device })
    }

    /// What the network is.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Whether it predicts a value (regression) rather than a class.
    pub fn regression(&self) -> bool {
        self.spec.spec.file.head == Head::Regression
    }

    /// Features per record: channels × height × width.
    pub fn features(&self) -> usize {
        self.spec.input.iter().product()
    }

    /// Outputs per record: one logit per class, or one value.
    pub fn outputs(&self) -> usize {
        self.spec.spec.file.head.outputs(self.spec.classes)
    }

    /// The outputs of `n` records whose features are back to back in `x`, back to back.
    pub fn predict(&self, x: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.spec.input;
        if n == 0 || x.len() != n * c * h * w {
            return Err(Error::BadInput(format!(
                "{} values for {n} records of {} features",
                x.len(),
                c * h * w
            )));
        }
        let t = Tensor::<Cpu, 4>::from_data(TensorData::new(x, [n, c, h, w]), &self.device);
        self.net
            .forward(t)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Bug(format!("outputs: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn top1_takes_the_first_largest_and_skips_nan() {
        assert_eq!(super::top1(&[0.1, 0.7, 0.7, -1.0]), 1);
        assert_eq!(super::top1(&[f32::NAN, -3.0, -2.0]), 2);
        assert_eq!(super::top1(&[]), 0);
    }
}
