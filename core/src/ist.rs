//! The IST style-transfer network as data: what the trainer builds in
//! Candle and the exporter writes as `ist_generator.onnx`, from one spec.
//!
//! The encoder E has the classifier's ResNet18 layout and norm (the paper
//! uses InstanceNorm).
//! A style code is the per-channel mean and standard deviation over space
//! of E's feature maps: the stem convolution's output (before its norm,
//! where the image's per-channel intensity still shows) and the outputs
//! of stages 0, 1 and 2 (stage 3 is 1x1 or 2x2 at the screens' image
//! sizes, where a spatial deviation means nothing).
//!
//! The generator G is a UNet decoder: from stage 3's map it upsamples x2,
//! concatenates the skip of stage 2, convolves 3x3 and applies AdaIN with
//! stage 2's style statistics, then the same with stages 1 and 0, then
//! with the stem's activation (after ReLU, before the pool) as the skip
//! and the stem convolution's statistics as the style; one more x2 level
//! (3x3 convolution with bias, ReLU) returns to the input size, and a 3x3
//! convolution with bias gives the image.

use serde::{Deserialize, Serialize};

use crate::arch::ResNetSpec;

/// Variable-name prefix of IST's networks in checkpoints (not optimized
/// with the classifier).
pub const IST_PREFIX: &str = "adversary.ist";
/// Epsilon under the style code's variance and of AdaIN's normalization.
pub const STYLE_EPS: f64 = 1e-5;
/// Image sides must be multiples of this (five x2 upsamplings).
pub const SIDE_MULTIPLE: usize = 32;

/// A feature map of the encoder that G reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureMap {
    /// The stem convolution's output, before its norm (half resolution).
    StemConv,
    /// The stem's activation after norm and ReLU, before the pool (half resolution).
    Stem,
    /// The output of stage `i` (0..4).
    Stage(usize),
}

/// The maps whose statistics make the style code, in code order.
pub const STYLE_MAPS: [FeatureMap; 4] = [
    FeatureMap::StemConv,
    FeatureMap::Stage(0),
    FeatureMap::Stage(1),
    FeatureMap::Stage(2),
];

/// One decoder level of the generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderLevel {
    /// Variable-name prefix within the generator (`up<i>`).
    pub name: String,
    /// Input channels (after the skip is concatenated).
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// The encoder map concatenated as a skip, and the map whose style
    /// AdaIN applies; `None` for the full-resolution level, which has a
    /// bias and no AdaIN.
    pub styled: Option<(FeatureMap, FeatureMap)>,
}

/// IST's encoder, generator and critic shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstSpec {
    /// The encoder; the critic has the same layout.
    pub encoder: ResNetSpec,
    /// Classes the encoder is pre-trained to predict.
    pub classes: usize,
    /// Training environments (the encoder's second task, the critic's heads).
    pub envs: usize,
}

impl IstSpec {
    /// Channels of an encoder map.
    pub fn channels(&self, map: FeatureMap) -> usize {
        match map {
            FeatureMap::StemConv | FeatureMap::Stem => self.encoder.width,
            FeatureMap::Stage(i) => self.encoder.stage_channels(i),
        }
    }

    /// Length of a style code: mean and deviation of each style map.
    pub fn style_dim(&self) -> usize {
        STYLE_MAPS.iter().map(|&m| 2 * self.channels(m)).sum()
    }

    /// `(offset, channels)` of a style map's means in a code (its
    /// deviations follow the means); `None` if `map` is not a style map.
    pub fn style_slot(&self, map: FeatureMap) -> Option<(usize, usize)> {
        let mut offset = 0;
        for m in STYLE_MAPS {
            let c = self.channels(m);
            if m == map {
                return Some((offset, c));
            }
            offset += 2 * c;
        }
        None
    }

    /// The decoder levels in forward order.
    pub fn decoder_levels(&self) -> Vec<DecoderLevel> {
        use FeatureMap::{Stage, Stem, StemConv};
        let mut cin = self.channels(Stage(3));
        let mut out = Vec::new();
        for (i, (skip, style)) in [
            (Stage(2), Stage(2)),
            (Stage(1), Stage(1)),
            (Stage(0), Stage(0)),
            (Stem, StemConv),
        ]
        .into_iter()
        .enumerate()
        {
            let c = self.channels(skip);
            out.push(DecoderLevel {
                name: format!("up{i}"),
                cin: cin + c,
                cout: c,
                styled: Some((skip, style)),
            });
            cin = c;
        }
        out.push(DecoderLevel {
            name: "up4".into(),
            cin,
            cout: self.encoder.width,
            styled: None,
        });
        out
    }

    /// Every tensor of the encoder and generator (full names) with its
    /// shape: what `ist_generator.onnx` is built from.
    pub fn generator_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .encoder
            .tensors()
            .into_iter()
            .map(|(n, s)| (format!("{IST_PREFIX}.encoder.{n}"), s))
            .collect();
        let g = format!("{IST_PREFIX}.generator");
        for level in self.decoder_levels() {
            let n = format!("{g}.{}", level.name);
            out.push((format!("{n}.weight"), vec![level.cout, level.cin, 3, 3]));
            if level.styled.is_none() {
                out.push((format!("{n}.bias"), vec![level.cout]));
            }
        }
        let w = self.encoder.width;
        out.push((
            format!("{g}.out.weight"),
            vec![self.encoder.in_channels, w, 3, 3],
        ));
        out.push((format!("{g}.out.bias"), vec![self.encoder.in_channels]));
        out
    }

    /// Why images of `height` x `width` cannot go through the generator.
    pub fn check_size(&self, height: usize, width: usize) -> Result<(), String> {
        if height == 0
            || width == 0
            || !height.is_multiple_of(SIDE_MULTIPLE)
            || !width.is_multiple_of(SIDE_MULTIPLE)
        {
            return Err(format!(
                "IST's generator needs image sides that are multiples of {SIDE_MULTIPLE}; the images are {height}x{width}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_concatenate_the_skips_and_return_to_the_input_width() {
        let spec = IstSpec {
            encoder: ResNetSpec::resnet18(4, 8, true),
            classes: 3,
            envs: 2,
        };
        let levels = spec.decoder_levels();
        let shapes: Vec<(usize, usize)> = levels.iter().map(|l| (l.cin, l.cout)).collect();
        assert_eq!(
            shapes,
            vec![
                (64 + 32, 32),
                (32 + 16, 16),
                (16 + 8, 8),
                (8 + 8, 8),
                (8, 8)
            ]
        );
        assert_eq!(
            levels[3].styled,
            Some((FeatureMap::Stem, FeatureMap::StemConv))
        );
        assert_eq!(spec.style_dim(), 2 * (8 + 8 + 16 + 32));
        assert_eq!(spec.style_slot(FeatureMap::StemConv), Some((0, 8)));
        assert_eq!(spec.style_slot(FeatureMap::Stage(2)), Some((64, 32)));
        assert_eq!(spec.style_slot(FeatureMap::Stage(3)), None);
        assert!(spec.check_size(64, 32).is_ok());
        let err = spec.check_size(48, 32).unwrap_err();
        assert!(
            err.contains("multiples of 32; the images are 48x32"),
            "{err}"
        );
    }
}
