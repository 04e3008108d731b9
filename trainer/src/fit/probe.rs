//! The class head of methods that train only an embedding (SCBD): a
//! logistic regression fitted on the training images' embeddings and
//! written into the classifier's head, as the papers evaluate such
//! embeddings with a linear probe. Eval, export and the daemon then read
//! class scores from it as from any other model.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::FitError;
use super::batches::Part;
use crate::dataset::Images;
use crate::eval::{Adapt, embed};
use crate::linear::{FitOptions, LogisticRegression};
use crate::model::{Classifier, MODEL_PREFIX};

/// Fit `model`'s head (variables in `map`) to the embeddings of `train`.
pub fn fit_head(
    model: &Classifier,
    map: &VarMap,
    images: &Images,
    train: &Part,
    device: &Device,
) -> Result<(), FitError> {
    let e = embed(model, images, train, Adapt::None, device)?.embeddings;
    let x: Vec<Vec<f64>> = e
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let classes = model.spec().classes;
    let (w, b) =
        LogisticRegression::fit(&x, &train.classes, classes, FitOptions::default()).affine();
    let dim = model.spec().embedding_dim;
    let weight: Vec<f32> = w.iter().flatten().map(|&v| v as f32).collect();
    let bias: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let set = |name: &str, t: Tensor| -> Result<(), FitError> {
        let data = map
            .data()
            .lock()
            .map_err(|_| FitError::Checkpoint("variable map lock poisoned".into()))?;
        let var = data
            .get(&format!("{MODEL_PREFIX}.head.{name}"))
            .ok_or_else(|| FitError::Checkpoint(format!("the model has no head.{name}")))?;
        var.set(&t.to_device(var.device())?)?;
        Ok(())
    };
    set(
        "weight",
        Tensor::from_vec(weight, (classes, dim), &Device::Cpu)?,
    )?;
    set("bias", Tensor::from_vec(bias, classes, &Device::Cpu)?)
}
