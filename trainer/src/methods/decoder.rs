//! An image decoder from embeddings (SCBD's optional decoder). It learns
//! to reconstruct an image from its detached (z_c, z_e), so decoding z_c
//! of one image with z_e of another shows what each block holds: the
//! cell's phenotype, or the plate's look.
//!
//! A linear layer to a `[4w, h/8, w/8]` map, then three blocks of 2x
//! nearest upsampling, 3x3 convolution and ReLU (4w -> 2w -> w -> w
//! channels), then a 3x3 convolution to the image channels.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};

use crate::nn::ops::{self, ConvBias};

/// Sides of the decoded image must be multiples of this (three 2x upsamplings).
pub const SIDE_MULTIPLE: usize = 8;

/// Embedding -> image.
#[derive(Clone, Debug)]
pub struct Decoder {
    input: Linear,
    start: [usize; 3],
    blocks: Vec<ConvBias>,
    out: ConvBias,
}

impl Decoder {
    /// A decoder from `z` inputs to `channels x height x width` images,
    /// `width` channels at full resolution, under `vb`.
    pub fn new(z: usize, image: [usize; 3], width: usize, vb: VarBuilder) -> Result<Decoder> {
        let [channels, h, w] = image;
        if h % SIDE_MULTIPLE != 0 || w % SIDE_MULTIPLE != 0 || h == 0 || w == 0 {
            candle_core::bail!(
                "the decoder needs image sides that are multiples of {SIDE_MULTIPLE}, the images are {h}x{w}"
            );
        }
        let start = [4 * width, h / SIDE_MULTIPLE, w / SIDE_MULTIPLE];
        let widths = [4 * width, 2 * width, width, width];
        let blocks = (0..3)
            .map(|i| ConvBias::new(widths[i], widths[i + 1], vb.pp(format!("up{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            input: linear(z, start.iter().product(), vb.pp("input"))?,
            start,
            blocks,
            out: ConvBias::new(width, channels, vb.pp("out"))?,
        })
    }

    /// Images `[b, c, h, w]` from embeddings `[b, z]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        let [c, h, w] = self.start;
        let mut x = ops::relu(&self.input.forward(z)?)?.reshape((b, c, h, w))?;
        for block in &self.blocks {
            x = ops::relu(&block.forward(&ops::upsample_nearest(&x, 2)?)?)?;
        }
        self.out.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;
    use crate::optim::{AdamW, trainable};

    #[test]
    fn the_decoder_learns_to_reconstruct_two_images() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let d = Decoder::new(4, [2, 16, 8], 4, vb.pp("dec")).unwrap();
        crate::model::seeded_init(&map, "dec", 0).unwrap();
        let z = Tensor::new(&[[1f32, 0., 0., 1.], [0., 1., 1., 0.]], &Device::Cpu).unwrap();
        // Two smooth images (cells are blobs, not pixel noise).
        let pixels: Vec<f32> = (0..2 * 2 * 16 * 8)
            .map(|i| {
                let (b, c, y, x) = (i / 256, (i / 128) % 2, (i / 8) % 16, i % 8);
                (y as f32 * 0.4 + (b + c) as f32).sin() * (x as f32 * 0.5 - b as f32).cos()
            })
            .collect();
        let x = Tensor::from_vec(pixels, (2, 2, 16, 8), &Device::Cpu).unwrap();
        assert_eq!(d.forward(&z).unwrap().dims(), &[2, 2, 16, 8]);
        let mut opt = AdamW::new(trainable(&map, "dec"), 1e-2, 0.0).unwrap();
        let mse = |d: &Decoder| {
            (d.forward(&z).unwrap() - &x)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
        };
        let first = mse(&d).to_scalar::<f32>().unwrap();
        for _ in 0..200 {
            opt.step(&mse(&d).backward().unwrap()).unwrap();
        }
        let last = mse(&d).to_scalar::<f32>().unwrap();
        assert!(last < 0.2 * first, "reconstruction error {first} -> {last}");
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let err = Decoder::new(4, [2, 12, 8], 4, vb).unwrap_err();
        assert!(
            err.to_string()
                .contains("multiples of 8, the images are 12x8"),
            "{err}"
        );
    }
}
