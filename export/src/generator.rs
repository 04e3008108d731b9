//! The ONNX emitter of IST's `ist_generator.onnx`: encoder E and generator
//! G as [`IstSpec`] lays them out. Inputs `image` `[batch, c, h, w]` (the
//! content, preprocessed like the predictor's input) and `style`
//! `[batch, style_dim]` (codes from the bundle's style bank); output
//! `restyled`, the content in that style, ready for the predictor.
//!
//! AdaIN is plain ops (mean and variance over space, as the trainer
//! computes them); upsampling is `Resize` in nearest mode with asymmetric
//! coordinates and floor rounding, which repeats each pixel twice as the
//! trainer's nearest upsampling does.

use bfx_core::ist::{FeatureMap, IST_PREFIX, IstSpec, STYLE_EPS};

use crate::ExportError;
use crate::classifier::{Emitter, Variant};
use crate::graph::{Attr, BATCH, Dim};
use crate::onnx::ModelProto;
use crate::weights::Weights;

/// Name of the content image input.
pub const IMAGE: &str = "image";
/// Name of the style code input.
pub const STYLE: &str = "style";
/// Name of the restyled image output.
pub const RESTYLED: &str = "restyled";

/// Emit the generator graph of `spec` with `weights` for `height` x `width` images.
pub fn emit(
    spec: &IstSpec,
    weights: &Weights,
    height: usize,
    width: usize,
) -> Result<ModelProto, ExportError> {
    weights.check(&spec.generator_tensors())?;
    spec.check_size(height, width).map_err(ExportError::Spec)?;
    let enc = &spec.encoder;
    let mut e = Emitter::new(
        "ist_generator",
        weights,
        Variant::Predictor,
        enc.instance_norm,
    );
    let image_dims = [
        Dim::Symbolic(BATCH),
        Dim::Fixed(enc.in_channels),
        Dim::Fixed(height),
        Dim::Fixed(width),
    ];
    let image = e.g.input(IMAGE, &image_dims);
    let code =
        e.g.input(STYLE, &[Dim::Symbolic(BATCH), Dim::Fixed(spec.style_dim())]);
    let maps = e.encoder(&image, enc, &format!("{IST_PREFIX}.encoder"))?;
    let map = |m: FeatureMap| {
        maps.get(m)
            .cloned()
            .ok_or_else(|| ExportError::Spec(format!("the encoder has no {m:?} map")))
    };
    let scales = e.g.initializer("up_scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
    let code_shape = e.g.initializer_i64("code_shape", &[0, -1, 1, 1]);
    let style_eps = e.g.initializer("style_eps", &[], &[STYLE_EPS as f32]);
    let g = format!("{IST_PREFIX}.generator");
    let mut h = map(FeatureMap::Stage(3))?;
    for level in spec.decoder_levels() {
        let up = e.g.node(
            "Resize",
            &[&h, "", &scales],
            &[
                Attr::Str("mode", "nearest"),
                Attr::Str("coordinate_transformation_mode", "asymmetric"),
                Attr::Str("nearest_mode", "floor"),
            ],
        );
        let name = format!("{g}.{}", level.name);
        h = match level.styled {
            Some((skip, style)) => {
                let skip = map(skip)?;
                let cat = e.g.node("Concat", &[&up, &skip], &[Attr::Int("axis", 1)]);
                let y = e.conv(&cat, &name, 1)?;
                let (at, c) = spec
                    .style_slot(style)
                    .ok_or_else(|| ExportError::Spec(format!("{style:?} is not a style map")))?;
                let mut slice = |from: usize, what: &str| {
                    let starts =
                        e.g.initializer_i64(&format!("{name}.{what}_start"), &[from as i64]);
                    let ends =
                        e.g.initializer_i64(&format!("{name}.{what}_end"), &[(from + c) as i64]);
                    let axes = e.g.initializer_i64(&format!("{name}.{what}_axes"), &[1]);
                    let v = e.g.node("Slice", &[&code, &starts, &ends, &axes], &[]);
                    e.g.node("Reshape", &[&v, &code_shape], &[])
                };
                let mean = slice(at, "mean");
                let std = slice(at + c, "std");
                let reduce = [Attr::Ints("axes", vec![2, 3]), Attr::Int("keepdims", 1)];
                let m = e.g.node("ReduceMean", &[&y], &reduce);
                let centred = e.g.node("Sub", &[&y, &m], &[]);
                let square = e.g.node("Mul", &[&centred, &centred], &[]);
                let var = e.g.node("ReduceMean", &[&square], &reduce);
                let var_eps = e.g.node("Add", &[&var, &style_eps], &[]);
                let sd = e.g.node("Sqrt", &[&var_eps], &[]);
                let normalized = e.g.node("Div", &[&centred, &sd], &[]);
                let scaled = e.g.node("Mul", &[&normalized, &std], &[]);
                let styled = e.g.node("Add", &[&scaled, &mean], &[]);
                e.g.node("Relu", &[&styled], &[])
            }
            None => {
                let y = conv_bias(&mut e, &up, &name)?;
                e.g.node("Relu", &[&y], &[])
            }
        };
    }
    let out = conv_bias(&mut e, &h, &format!("{g}.out"))?;
    e.g.output(&out, RESTYLED, &image_dims);
    Ok(e.g.finish())
}

/// A 3x3 convolution (padding 1) plus its per-channel bias.
fn conv_bias(e: &mut Emitter, x: &str, name: &str) -> Result<String, ExportError> {
    let y = e.conv(x, name, 1)?;
    let bias = e.init_channels(&format!("{name}.bias"))?;
    Ok(e.g.node("Add", &[&y, &bias], &[]))
}
