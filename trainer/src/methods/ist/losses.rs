//! IST's loss terms, each on tensors so it can be tested on tiny inputs.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::log_softmax;

/// Gram matrix of each image's feature map `[b, c, h, w]`: `F F^T / (h w)`,
/// `[b, c, c]` (the channels' second moments over space).
pub fn gram(h: &Tensor) -> Result<Tensor> {
    let (b, c, hh, ww) = h.dims4()?;
    let f = h.reshape((b, c, hh * ww))?;
    f.matmul(&f.t()?)? / (hh * ww) as f64
}

/// Style loss: mean over layers of the L1 distance between the Gram
/// matrices of the generated and the style images' encoder features.
pub fn style(generated: &[Tensor], style: &[Tensor]) -> Result<Tensor> {
    mean_over_layers(generated, style, |g, s| l1(&gram(g)?, &gram(s)?))
}

/// Content loss: L1 in pixel space plus the mean over layers of the L1
/// distance between encoder features of the content and generated images.
pub fn content(
    generated: &Tensor,
    content: &Tensor,
    generated_features: &[Tensor],
    content_features: &[Tensor],
) -> Result<Tensor> {
    l1(generated, content)? + mean_over_layers(generated_features, content_features, l1)?
}

/// Cycle consistency: L1 between the content image and its reconstruction
/// from the generated image with the content's own style code.
pub fn cycle(reconstructed: &Tensor, content: &Tensor) -> Result<Tensor> {
    l1(reconstructed, content)
}

/// Class matching: cross-entropy of the encoder's class prediction on the
/// generated images against its (fixed) prediction on the content images.
pub fn class_matching(generated_logits: &Tensor, content_logits: &Tensor) -> Result<Tensor> {
    let target = candle_nn::ops::softmax(&content_logits.detach(), D::Minus1)?;
    let log_p = log_softmax(generated_logits, D::Minus1)?;
    (target * log_p)?.sum(D::Minus1)?.neg()?.mean_all()
}

/// Non-saturating GAN loss of logits that should read "real": mean softplus(-x).
pub fn real(logits: &Tensor) -> Result<Tensor> {
    softplus(&logits.neg()?)?.mean_all()
}

/// GAN loss of logits that should read "fake": mean softplus(x).
pub fn fake(logits: &Tensor) -> Result<Tensor> {
    softplus(logits)?.mean_all()
}

/// `log(1 + e^x)`, stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    // max(x, 0) + log(1 + e^-|x|)
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean absolute difference.
pub fn l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.abs()?.mean_all()
}

fn mean_over_layers(
    a: &[Tensor],
    b: &[Tensor],
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if a.is_empty() || a.len() != b.len() {
        candle_core::bail!("{} and {} feature layers", a.len(), b.len());
    }
    let terms = a
        .iter()
        .zip(b)
        .map(|(x, y)| f(x, &y.detach()))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&terms, 0)?.mean_all()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn value(x: Result<Tensor>) -> f32 {
        x.unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn gram_is_the_channels_second_moments() {
        // One image, two channels over four pixels.
        let h = t(&[1., 2., 3., 4., 0., 1., 0., 1.], &[1, 2, 2, 2]);
        let g = gram(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, vec![30. / 4., 6. / 4., 6. / 4., 2. / 4.]);
    }

    #[test]
    fn style_loss_sees_second_moments_not_positions() {
        let a = t(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        // The same values elsewhere: the same style.
        let shuffled = t(&[4., 3., 2., 1.], &[1, 1, 2, 2]);
        let brighter = t(&[2., 3., 4., 5.], &[1, 1, 2, 2]);
        assert_eq!(value(style(std::slice::from_ref(&a), &[shuffled])), 0.0);
        // (4 + 9 + 16 + 25) / 4 - 30 / 4 = 6.
        assert_eq!(value(style(std::slice::from_ref(&a), &[brighter])), 6.0);
        assert!(style(&[a.clone(), a.clone()], &[a]).is_err());
    }

    #[test]
    fn content_loss_adds_pixels_and_features() {
        let x = t(&[0., 1., 2., 3.], &[1, 1, 2, 2]);
        let y = t(&[1., 1., 2., 1.], &[1, 1, 2, 2]);
        assert_eq!(
            value(content(
                &x,
                &x,
                std::slice::from_ref(&y),
                std::slice::from_ref(&y)
            )),
            0.0
        );
        // Pixels: (1 + 0 + 0 + 2) / 4; features: the same pair, averaged over two layers.
        let v = value(content(
            &x,
            &y,
            &[x.clone(), y.clone()],
            &[y.clone(), y.clone()],
        ));
        assert!((v - (0.75 + 0.75 / 2.0)).abs() < 1e-6, "{v}");
        assert_eq!(value(cycle(&x, &y)), 0.75);
    }

    #[test]
    fn class_matching_is_lowest_when_predictions_agree() {
        let content = t(&[4., 0., 0., 0., 4., 0.], &[2, 3]);
        let same = value(class_matching(&content, &content));
        let other = value(class_matching(
            &t(&[0., 4., 0., 4., 0., 0.], &[2, 3]),
            &content,
        ));
        // Agreeing predictions score the target's entropy; swapped ones far more.
        let p = 4f32.exp() / (4f32.exp() + 2.0);
        let entropy = -(p * p.ln() + 2.0 * (1.0 - p) / 2.0 * ((1.0 - p) / 2.0).ln());
        assert!((same - entropy).abs() < 1e-5, "{same} vs {entropy}");
        assert!(other > same + 3.0, "{other}");
    }

    #[test]
    fn gan_losses_are_softplus_of_the_logits() {
        let logits = t(&[0., 100., -100.], &[3]);
        let ln2 = std::f32::consts::LN_2;
        assert!((value(real(&logits)) - (ln2 + 0.0 + 100.0) / 3.0).abs() < 1e-4);
        assert!((value(fake(&logits)) - (ln2 + 100.0 + 0.0) / 3.0).abs() < 1e-4);
    }
}
