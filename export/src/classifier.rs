//! The ONNX emitter of the trainer's classifier (ResNet encoder,
//! embedding head, linear class head), walking the same [`ModelSpec`] the
//! Candle model is built from.
//!
//! Ops are chosen so `candle-onnx`'s `simple_eval` could also run the
//! graphs: InstanceNorm, the AdaBN statistics and the global pool are
//! plain `ReduceMean`/elementwise ops rather than `InstanceNormalization`
//! or `GlobalAveragePool`. BatchNorm with the running statistics is the
//! inference-mode `BatchNormalization`, which onnxruntime folds into the
//! convolution before it; with given plate statistics it is plain ops too
//! (see [`Variant::Plate`]'s emission for why).

use bfx_core::arch::{EmbedHead, L2_EPS, MODEL_PREFIX, ModelSpec, NORM_EPS};

use crate::ExportError;
use crate::graph::{Attr, BATCH, Dim, GraphBuilder};
use crate::onnx::ModelProto;
use crate::weights::Weights;

/// Name of the image input of every classifier graph.
pub const IMAGE: &str = "image";
/// Name of the embedding output.
pub const EMBEDDING: &str = "embedding";
/// Name of the logits output.
pub const LOGITS: &str = "logits";

/// Which graph of a classifier to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `predictor.onnx`: BatchNorm with the running statistics from training.
    Predictor,
    /// `predictor_stats.onnx`: BatchNorm with the batch's own statistics,
    /// each layer's mean and biased variance as extra outputs.
    Stats,
    /// `predictor_plate.onnx`: BatchNorm with statistics given as inputs.
    Plate,
}

/// Graph input/output name of a BatchNorm layer's mean (`<layer>.mean`).
pub fn mean_name(layer: &str) -> String {
    format!("{layer}.mean")
}

/// Graph input/output name of a BatchNorm layer's variance (`<layer>.var`).
pub fn var_name(layer: &str) -> String {
    format!("{layer}.var")
}

/// Graph values of an encoder's maps (as the trainer's `EncoderMaps`).
pub(crate) struct EncoderValues {
    /// The stem convolution's output, before its norm.
    pub(crate) stem_conv: String,
    /// The stem's activation, before the pool.
    pub(crate) stem: String,
    /// Each stage's output, stage 0 first.
    pub(crate) stages: Vec<String>,
}

impl EncoderValues {
    /// The value of `map`, if the encoder has it.
    pub(crate) fn get(&self, map: bfx_core::ist::FeatureMap) -> Option<&String> {
        match map {
            bfx_core::ist::FeatureMap::StemConv => Some(&self.stem_conv),
            bfx_core::ist::FeatureMap::Stem => Some(&self.stem),
            bfx_core::ist::FeatureMap::Stage(i) => self.stages.get(i),
        }
    }
}

/// Emits layers from checkpoint weights into one graph.
pub(crate) struct Emitter<'a> {
    pub(crate) g: GraphBuilder,
    weights: &'a Weights,
    variant: Variant,
    instance_norm: bool,
    eps: Option<String>,
    flat: Option<String>,
    channels: Option<String>,
}

/// Emit `variant` of the classifier `spec` with `weights`, for images of
/// `height` x `width`. InstanceNorm models have no AdaBN variants.
pub fn emit(
    spec: &ModelSpec,
    weights: &Weights,
    height: usize,
    width: usize,
    variant: Variant,
) -> Result<ModelProto, ExportError> {
    weights.check(&spec.tensors())?;
    let enc = &spec.encoder;
    if enc.instance_norm && variant != Variant::Predictor {
        return Err(ExportError::Spec(
            "an InstanceNorm model has no BatchNorm statistics to adapt".into(),
        ));
    }
    let (oh, ow) = enc.output_size(height, width);
    if oh == 0 || ow == 0 {
        return Err(ExportError::Spec(format!(
            "a {height}x{width} input is too small for this encoder"
        )));
    }
    let mut e = Emitter::new(
        match variant {
            Variant::Predictor => "predictor",
            Variant::Stats => "predictor_stats",
            Variant::Plate => "predictor_plate",
        },
        weights,
        variant,
        enc.instance_norm,
    );
    let image = e.g.input(
        IMAGE,
        &[
            Dim::Symbolic(BATCH),
            Dim::Fixed(enc.in_channels),
            Dim::Fixed(height),
            Dim::Fixed(width),
        ],
    );
    let maps = e.encoder(&image, enc, &format!("{MODEL_PREFIX}.encoder"))?;
    let h = maps
        .stages
        .last()
        .cloned()
        .ok_or_else(|| ExportError::Spec("the encoder has no blocks".into()))?;
    let pooled = e.g.node(
        "ReduceMean",
        &[&h],
        &[Attr::Ints("axes", vec![2, 3]), Attr::Int("keepdims", 0)],
    );
    let embedding = e.embed(&pooled, spec.head)?;
    let logits = e.linear(&embedding, &format!("{MODEL_PREFIX}.head"))?;
    e.g.output(
        &embedding,
        EMBEDDING,
        &[Dim::Symbolic(BATCH), Dim::Fixed(spec.embedding_dim)],
    );
    e.g.output(
        &logits,
        LOGITS,
        &[Dim::Symbolic(BATCH), Dim::Fixed(spec.classes)],
    );
    Ok(e.g.finish())
}

impl<'a> Emitter<'a> {
    /// An emitter of a graph called `name`.
    pub(crate) fn new(
        name: &str,
        weights: &'a Weights,
        variant: Variant,
        instance_norm: bool,
    ) -> Emitter<'a> {
        Emitter {
            g: GraphBuilder::new(name),
            weights,
            variant,
            instance_norm,
            eps: None,
            flat: None,
            channels: None,
        }
    }

    /// The ResNet `enc` with weights under `prefix` on `image`.
    pub(crate) fn encoder(
        &mut self,
        image: &str,
        enc: &bfx_core::arch::ResNetSpec,
        prefix: &str,
    ) -> Result<EncoderValues, ExportError> {
        let p = prefix;
        let e = self;
        let stem_conv = e.conv(image, &format!("{p}.stem.conv"), 2)?;
        let h = e.norm(&stem_conv, &format!("{p}.stem.norm"), enc.width)?;
        let stem = e.g.node("Relu", &[&h], &[]);
        let mut h = e.g.node(
            "MaxPool",
            &[&stem],
            &[
                Attr::Ints("kernel_shape", vec![2, 2]),
                Attr::Ints("strides", vec![2, 2]),
            ],
        );
        let blocks = enc.block_shapes();
        let mut stages = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let n = format!("{p}.{}", b.name);
            let y = e.conv(&h, &format!("{n}.conv1"), b.stride)?;
            let y = e.norm(&y, &format!("{n}.norm1"), b.cout)?;
            let y = e.g.node("Relu", &[&y], &[]);
            let y = e.conv(&y, &format!("{n}.conv2"), 1)?;
            let y = e.norm(&y, &format!("{n}.norm2"), b.cout)?;
            let skip = if b.projected {
                let s = e.conv(&h, &format!("{n}.down.conv"), b.stride)?;
                e.norm(&s, &format!("{n}.down.norm"), b.cout)?
            } else {
                h.clone()
            };
            let y = e.g.node("Add", &[&y, &skip], &[]);
            h = e.g.node("Relu", &[&y], &[]);
            if blocks.get(i + 1).is_none_or(|next| next.stage != b.stage) {
                stages.push(h.clone());
            }
        }
        Ok(EncoderValues {
            stem_conv,
            stem,
            stages,
        })
    }

    fn init(&mut self, name: &str) -> Result<String, ExportError> {
        let (shape, data) = self.weights.get(name)?;
        Ok(self.g.initializer(name, shape, data))
    }

    /// A per-channel vector as a `[1, c, 1, 1]` initializer, for broadcasting.
    pub(crate) fn init_channels(&mut self, name: &str) -> Result<String, ExportError> {
        let (shape, data) = self.weights.get(name)?;
        Ok(self.g.initializer(name, &[1, shape[0], 1, 1], data))
    }

    /// Convolution without bias; padding k/2 as the trainer's.
    pub(crate) fn conv(
        &mut self,
        x: &str,
        name: &str,
        stride: usize,
    ) -> Result<String, ExportError> {
        let weight = format!("{name}.weight");
        let k = self.weights.get(&weight)?.0[2] as i64;
        let w = self.init(&weight)?;
        let pad = k / 2;
        let s = stride as i64;
        Ok(self.g.node(
            "Conv",
            &[x, &w],
            &[
                Attr::Ints("kernel_shape", vec![k, k]),
                Attr::Ints("strides", vec![s, s]),
                Attr::Ints("pads", vec![pad, pad, pad, pad]),
            ],
        ))
    }

    /// `x @ W^T + b`.
    fn linear(&mut self, x: &str, name: &str) -> Result<String, ExportError> {
        let w = self.init(&format!("{name}.weight"))?;
        let b = self.init(&format!("{name}.bias"))?;
        Ok(self.g.node("Gemm", &[x, &w, &b], &[Attr::Int("transB", 1)]))
    }

    /// The embedding head. GELU is the exact (erf) form, and the L2
    /// normalization is plain ops (`LpNormalization` has no epsilon, so a
    /// zero row would divide by zero where the trainer's floor does not).
    fn embed(&mut self, pooled: &str, head: EmbedHead) -> Result<String, ExportError> {
        let p = format!("{MODEL_PREFIX}.embed");
        if head == EmbedHead::Linear {
            return self.linear(pooled, &p);
        }
        let h = self.linear(pooled, &format!("{p}.hidden"))?;
        let sqrt2 = self
            .g
            .initializer("sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = self.g.initializer("one", &[], &[1.0]);
        let half = self.g.initializer("half", &[], &[0.5]);
        let scaled = self.g.node("Div", &[&h, &sqrt2], &[]);
        let erf = self.g.node("Erf", &[&scaled], &[]);
        let gate = self.g.node("Add", &[&erf, &one], &[]);
        let gated = self.g.node("Mul", &[&h, &gate], &[]);
        let gelu = self.g.node("Mul", &[&gated, &half], &[]);
        let z = self.linear(&gelu, &format!("{p}.out"))?;
        let square = self.g.node("Mul", &[&z, &z], &[]);
        let axes = self.g.initializer_i64("l2_axes", &[1]);
        let sum = self
            .g
            .node("ReduceSum", &[&square, &axes], &[Attr::Int("keepdims", 1)]);
        let norm = self.g.node("Sqrt", &[&sum], &[]);
        let floor = self.g.initializer("l2_eps", &[], &[L2_EPS as f32]);
        let denom = self.g.node("Max", &[&norm, &floor], &[]);
        Ok(self.g.node("Div", &[&z, &denom], &[]))
    }

    fn norm(&mut self, x: &str, layer: &str, channels: usize) -> Result<String, ExportError> {
        if self.instance_norm {
            return Ok(self.normalize_plain(x, layer, &[2, 3])?.0);
        }
        match self.variant {
            Variant::Predictor => {
                let mean = self.init(&format!("{layer}.running_mean"))?;
                let var = self.init(&format!("{layer}.running_var"))?;
                self.batch_norm(x, layer, &mean, &var)
            }
            Variant::Plate => {
                // Plain ops rather than BatchNormalization, which onnxruntime
                // evaluates as x * s + (b - mean * s): when a layer's given
                // variance is 0 (one image, a 1x1 map) that cancellation
                // error is amplified by 1/sqrt(eps) in every later layer,
                // while (x - mean) is exact.
                let dims = [Dim::Fixed(channels)];
                let mean = self.g.input(&mean_name(layer), &dims);
                let var = self.g.input(&var_name(layer), &dims);
                let shape = self.channel_shape();
                let mean = self.g.node("Reshape", &[&mean, &shape], &[]);
                let var = self.g.node("Reshape", &[&var, &shape], &[]);
                let centred = self.g.node("Sub", &[x, &mean], &[]);
                self.standardize(&centred, &var, layer)
            }
            Variant::Stats => {
                let (y, mean, var) = self.normalize_plain(x, layer, &[0, 2, 3])?;
                let flat = self.flat_shape();
                for (value, name) in [(mean, mean_name(layer)), (var, var_name(layer))] {
                    let v = self.g.node("Reshape", &[&value, &flat], &[]);
                    self.g.output(&v, &name, &[Dim::Fixed(channels)]);
                }
                Ok(y)
            }
        }
    }

    /// Inference-mode `BatchNormalization` with the given statistics.
    fn batch_norm(
        &mut self,
        x: &str,
        layer: &str,
        mean: &str,
        var: &str,
    ) -> Result<String, ExportError> {
        let scale = self.init(&format!("{layer}.weight"))?;
        let bias = self.init(&format!("{layer}.bias"))?;
        Ok(self.g.node(
            "BatchNormalization",
            &[x, &scale, &bias, mean, var],
            &[Attr::Float("epsilon", NORM_EPS as f32)],
        ))
    }

    /// Normalize over `axes` with the statistics of `x` itself, then scale
    /// and shift per channel. Returns the output and the mean and biased
    /// variance, both `[1, c, 1, 1]`.
    fn normalize_plain(
        &mut self,
        x: &str,
        layer: &str,
        axes: &[i64],
    ) -> Result<(String, String, String), ExportError> {
        let reduce = [Attr::Ints("axes", axes.to_vec()), Attr::Int("keepdims", 1)];
        let mean = self.g.node("ReduceMean", &[x], &reduce);
        let centred = self.g.node("Sub", &[x, &mean], &[]);
        let square = self.g.node("Mul", &[&centred, &centred], &[]);
        let var = self.g.node("ReduceMean", &[&square], &reduce);
        let y = self.standardize(&centred, &var, layer)?;
        Ok((y, mean, var))
    }

    /// `centred / sqrt(var + eps) * weight + bias`, per channel, as the
    /// trainer computes it.
    fn standardize(
        &mut self,
        centred: &str,
        var: &str,
        layer: &str,
    ) -> Result<String, ExportError> {
        let eps = self.eps();
        let var_eps = self.g.node("Add", &[var, &eps], &[]);
        let std = self.g.node("Sqrt", &[&var_eps], &[]);
        let normalized = self.g.node("Div", &[centred, &std], &[]);
        let scale = self.init_channels(&format!("{layer}.weight"))?;
        let bias = self.init_channels(&format!("{layer}.bias"))?;
        let scaled = self.g.node("Mul", &[&normalized, &scale], &[]);
        Ok(self.g.node("Add", &[&scaled, &bias], &[]))
    }

    /// The shared epsilon constant, created on first use.
    pub(crate) fn eps(&mut self) -> String {
        let g = &mut self.g;
        self.eps
            .get_or_insert_with(|| g.initializer("norm_eps", &[], &[NORM_EPS as f32]))
            .clone()
    }

    /// The shared `[1, -1, 1, 1]` shape constant, created on first use.
    pub(crate) fn channel_shape(&mut self) -> String {
        let g = &mut self.g;
        self.channels
            .get_or_insert_with(|| g.initializer_i64("channel_shape", &[1, -1, 1, 1]))
            .clone()
    }

    /// The shared `[-1]` shape constant, created on first use.
    fn flat_shape(&mut self) -> String {
        let g = &mut self.g;
        self.flat
            .get_or_insert_with(|| g.initializer_i64("flat_shape", &[-1]))
            .clone()
    }
}
