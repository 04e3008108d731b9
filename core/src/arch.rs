//! Network architectures as data: what the trainer builds in Candle and
//! what the exporter writes as ONNX, from one spec, so the two cannot
//! disagree on structure.
//!
//! The spec also names every parameter tensor (as checkpoints store them)
//! and every BatchNorm layer in forward order (the order AdaBN statistics
//! travel in), so the exporter can check a checkpoint before writing a
//! graph and the trainer can test that its modules use these names.

use serde::{Deserialize, Serialize};

/// Variable-name prefix of the classifier in checkpoints (method variables use `method.`).
pub const MODEL_PREFIX: &str = "model";

/// Epsilon of every norm layer (PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;

/// Architecture of a ResNet encoder: ResNet18 layout (four stages of basic
/// blocks, widths w, 2w, 4w, 8w) with a configurable base width, any input
/// channel count, and BatchNorm or InstanceNorm.
///
/// Layers: a 7x7 stride-2 convolution (padding 3, no bias), norm, ReLU, a
/// 2x2 stride-2 max pool (an odd last row or column dropped); then the
/// stages, whose first block strides by 2 from the second stage on and
/// projects its shortcut with a 1x1 convolution and norm when the shape
/// changes; then the spatial mean.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Channels of the first stage (64 is standard ResNet18).
    pub width: usize,
    /// InstanceNorm instead of BatchNorm.
    pub instance_norm: bool,
    /// Basic blocks per stage (ResNet18: 2, 2, 2, 2).
    pub blocks: [usize; 4],
}

/// One basic block's shape, as [`ResNetSpec::blocks`] lays them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Variable-name prefix within the encoder (`stage<i>.<j>`).
    pub name: String,
    /// The stage it belongs to (0..4).
    pub stage: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Stride of the first convolution (and of the projection).
    pub stride: usize,
    /// Whether the shortcut is projected (`down.conv`, `down.norm`).
    pub projected: bool,
}

impl ResNetSpec {
    /// ResNet18 of `width` over `in_channels`.
    pub fn resnet18(in_channels: usize, width: usize, instance_norm: bool) -> ResNetSpec {
        ResNetSpec {
            in_channels,
            width,
            instance_norm,
            blocks: [2, 2, 2, 2],
        }
    }

    /// Channels after stage `i` (0..4).
    pub fn stage_channels(&self, i: usize) -> usize {
        self.width << i
    }

    /// Channels of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.stage_channels(3)
    }

    /// Every basic block in forward order, stage by stage.
    pub fn block_shapes(&self) -> Vec<BlockShape> {
        let mut out = Vec::new();
        let mut cin = self.width;
        for (i, &n) in self.blocks.iter().enumerate() {
            let cout = self.stage_channels(i);
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let input = if j == 0 { cin } else { cout };
                out.push(BlockShape {
                    name: format!("stage{i}.{j}"),
                    stage: i,
                    cin: input,
                    cout,
                    stride,
                    projected: stride != 1 || input != cout,
                });
            }
            cin = cout;
        }
        out
    }

    /// Norm layers (encoder-relative names) with their channel counts, in
    /// the order a forward pass runs them: the stem, then per block
    /// `norm1`, `norm2` and the projection's `down.norm`.
    pub fn norm_layers(&self) -> Vec<(String, usize)> {
        let mut out = vec![("stem.norm".to_string(), self.width)];
        for b in self.block_shapes() {
            out.push((format!("{}.norm1", b.name), b.cout));
            out.push((format!("{}.norm2", b.name), b.cout));
            if b.projected {
                out.push((format!("{}.down.norm", b.name), b.cout));
            }
        }
        out
    }

    /// Every tensor a checkpoint holds for this encoder (relative names), with its shape.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![(
            "stem.conv.weight".to_string(),
            vec![self.width, self.in_channels, 7, 7],
        )];
        let mut norms = self.norm_layers().into_iter();
        let mut norm = |out: &mut Vec<(String, Vec<usize>)>| {
            // norm_layers lists exactly one layer per norm pushed here.
            let (name, c) = norms.next().expect("one norm layer per norm");
            let fields: &[&str] = if self.instance_norm {
                &["weight", "bias"]
            } else {
                &["weight", "bias", "running_mean", "running_var"]
            };
            for f in fields {
                out.push((format!("{name}.{f}"), vec![c]));
            }
        };
        norm(&mut out);
        for b in self.block_shapes() {
            let n = &b.name;
            out.push((format!("{n}.conv1.weight"), vec![b.cout, b.cin, 3, 3]));
            norm(&mut out);
            out.push((format!("{n}.conv2.weight"), vec![b.cout, b.cout, 3, 3]));
            norm(&mut out);
            if b.projected {
                out.push((format!("{n}.down.conv.weight"), vec![b.cout, b.cin, 1, 1]));
                norm(&mut out);
            }
        }
        out
    }

    /// Spatial size of the last stage's feature map for an input of `h` x `w`.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        // Stem convolution: k 7, s 2, p 3.
        let conv = |x: usize, k: usize, s: usize| match (x + 2 * (k / 2)).checked_sub(k) {
            Some(room) if x > 0 => room / s + 1,
            _ => 0,
        };
        let (mut h, mut w) = (conv(h, 7, 2) / 2, conv(w, 7, 2) / 2);
        for b in self.block_shapes() {
            h = conv(h, 3, b.stride);
            w = conv(w, 3, b.stride);
        }
        (h, w)
    }
}

/// How the pooled encoder features become the embedding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedHead {
    /// One linear layer (`embed.weight`, `embed.bias`).
    #[default]
    Linear,
    /// SCBD's projection head: `Linear(r, r)`, exact (erf) GELU,
    /// `Linear(r, z)`, then L2 normalization to the unit sphere
    /// (`embed.hidden.*`, `embed.out.*`; `r` the feature width).
    Projection,
}

/// Denominator floor of the L2 normalization (PyTorch's `F.normalize`).
pub const L2_EPS: f64 = 1e-12;

/// A classifier: ResNet encoder, embedding head, linear class head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture name (`resnet18`).
    pub arch: String,
    /// The encoder.
    pub encoder: ResNetSpec,
    /// The embedding head (specs written before it existed are `linear`).
    #[serde(default)]
    pub head: EmbedHead,
    /// Embedding dimension.
    pub embedding_dim: usize,
    /// Number of classes of the linear classifier.
    pub classes: usize,
}

impl ModelSpec {
    /// Every tensor of the classifier with its full checkpoint name
    /// (`model.encoder.*`, `model.embed.*`, `model.head.*`) and shape.
    /// The embedding head's tensors are listed by [`ModelSpec::embed_tensors`].
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .encoder
            .tensors()
            .into_iter()
            .map(|(n, s)| (format!("{MODEL_PREFIX}.encoder.{n}"), s))
            .collect();
        let e = self.embedding_dim;
        out.extend(self.embed_tensors());
        out.push((format!("{MODEL_PREFIX}.head.weight"), vec![self.classes, e]));
        out.push((format!("{MODEL_PREFIX}.head.bias"), vec![self.classes]));
        out
    }

    /// The embedding head's tensors (full names) and shapes.
    pub fn embed_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let f = self.encoder.feature_dim();
        let e = self.embedding_dim;
        let p = format!("{MODEL_PREFIX}.embed");
        match self.head {
            EmbedHead::Linear => vec![
                (format!("{p}.weight"), vec![e, f]),
                (format!("{p}.bias"), vec![e]),
            ],
            EmbedHead::Projection => vec![
                (format!("{p}.hidden.weight"), vec![f, f]),
                (format!("{p}.hidden.bias"), vec![f]),
                (format!("{p}.out.weight"), vec![e, f]),
                (format!("{p}.out.bias"), vec![e]),
            ],
        }
    }

    /// BatchNorm layers in forward order (full names without the field
    /// suffix) with their channel counts; empty for InstanceNorm encoders.
    pub fn batch_norm_layers(&self) -> Vec<(String, usize)> {
        if self.encoder.instance_norm {
            return Vec::new();
        }
        self.encoder
            .norm_layers()
            .into_iter()
            .map(|(n, c)| (format!("{MODEL_PREFIX}.encoder.{n}"), c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_the_standard_layer_counts() {
        let spec = ResNetSpec::resnet18(5, 64, false);
        // Stem + 8 blocks x 2 + 3 projections.
        assert_eq!(spec.norm_layers().len(), 1 + 16 + 3);
        let convs = spec
            .tensors()
            .iter()
            .filter(|(n, _)| n.contains("conv"))
            .count();
        assert_eq!(convs, 1 + 16 + 3);
        let params: usize = spec
            .tensors()
            .iter()
            .filter(|(n, _)| !n.contains("running"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // torchvision's resnet18 has 11,176,512 parameters without its fc
        // layer and with a 3-channel stem; 2 more input channels add 2*64*49.
        assert_eq!(params, 11_176_512 + 2 * 64 * 49);
        assert_eq!(spec.output_size(64, 64), (2, 2));
        assert_eq!(spec.output_size(32, 33), (1, 1));
        assert_eq!(spec.output_size(224, 224), (7, 7));
        // The stem's pool leaves nothing of a 2-pixel side.
        assert_eq!(spec.output_size(2, 64), (0, 2));
    }

    #[test]
    fn instance_norm_encoders_have_no_batch_norm_layers() {
        let model = |instance| ModelSpec {
            arch: "resnet18".into(),
            encoder: ResNetSpec::resnet18(3, 8, instance),
            head: EmbedHead::Linear,
            embedding_dim: 16,
            classes: 4,
        };
        assert!(model(true).batch_norm_layers().is_empty());
        assert!(
            !model(true)
                .tensors()
                .iter()
                .any(|(n, _)| n.contains("running"))
        );
        let bn = model(false).batch_norm_layers();
        assert_eq!(bn[0], ("model.encoder.stem.norm".to_string(), 8));
        assert_eq!(bn.last().map(|l| l.1), Some(64));
    }
}
