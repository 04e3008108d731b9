//! Seconds per training step of a UNet-AdaIN generator of the shape IST
//! uses, as one JSON line: a frozen ResNet18 InstanceNorm encoder gives
//! the content image's stage features (skips) and the style image's
//! per-channel mean and standard deviation at each stage; the decoder
//! upsamples x2, concatenates the skip, convolves 3x3 and applies AdaIN
//! with the style's statistics at that stage, then two more x2 levels
//! bring it back to the input size. Loss: L1 to the content image;
//! backward and AdamW over the decoder. `bench/generator_step.py` is the
//! same network in PyTorch.
//!
//! Usage: generator-step WIDTH BATCH CHANNELS SIZE STEPS [--candle-ops]

use std::time::Instant;

/// The trainer's allocator, so the benchmark measures what `bfx-trainer` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bfx_bench::{arg, median};
use bfx_trainer::nn::ops::{self, Conv, ConvConfig, Grouping, relu, upsample_nearest};
use bfx_trainer::nn::{NormPass, ResNet, ResNetSpec};
use bfx_trainer::optim::{AdamW, trainable};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Per image and channel: mean and standard deviation over space.
fn style(h: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (n, c, _, _) = h.dims4()?;
    let flat = h.flatten_from(2)?;
    let mean = flat.mean_keepdim(2)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(2)?;
    Ok((
        mean.reshape((n, c, 1, 1))?,
        (var + 1e-5)?.sqrt()?.reshape((n, c, 1, 1))?,
    ))
}

/// Instance-normalize `h` and give it the style's mean and deviation.
fn adain(h: &Tensor, (mean, std): &(Tensor, Tensor)) -> candle_core::Result<Tensor> {
    let c = h.dim(1)?;
    let (ones, zeros) = (
        Tensor::ones(c, h.dtype(), h.device())?,
        Tensor::zeros(c, h.dtype(), h.device())?,
    );
    let normalized = if ops::fast(h) {
        ops::normalize_batch(h, &ones, &zeros, 1e-5, Grouping::Plane, false)?.0
    } else {
        candle_nn::GroupNorm::new(ones, zeros, c, c, 1e-5)?.forward(h)?
    };
    normalized.broadcast_mul(std)?.broadcast_add(mean)
}

fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv> {
    let cfg = ConvConfig {
        padding: 1,
        ..Default::default()
    };
    Conv::no_bias(cin, cout, 3, cfg, vb)
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any thread is started.
    #[allow(unsafe_code)]
    unsafe {
        bfx_trainer::runtime::configure_threads()
    };
    let (width, batch, channels, size, steps) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?, arg(5)?);
    let candle_ops = std::env::args().any(|a| a == "--candle-ops");
    ops::use_candle_ops(candle_ops);
    let device = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &device);
    let spec = ResNetSpec::resnet18(channels, width, true);
    let encoder = ResNet::new(&spec, vb.pp("encoder"))?;
    // Decoder levels: from stage 3 up through stages 2, 1, 0 (skips), then
    // two levels without skips back to the input size.
    let w = width;
    let up = [
        conv3(8 * w + 4 * w, 4 * w, vb.pp("dec.0"))?,
        conv3(4 * w + 2 * w, 2 * w, vb.pp("dec.1"))?,
        conv3(2 * w + w, w, vb.pp("dec.2"))?,
        conv3(w, w, vb.pp("dec.3"))?,
    ];
    let out = conv3(w, channels, vb.pp("dec.out"))?;
    let mut opt = AdamW::new(trainable(&map, "dec."), 1e-4, 0.0)?;
    let content = Tensor::randn(0f32, 1.0, (batch, channels, size, size), &device)?;
    let style_image = Tensor::randn(0f32, 1.0, (batch, channels, size, size), &device)?;
    let stages = |x: &Tensor| -> candle_core::Result<Vec<Tensor>> {
        let mut features = Vec::new();
        encoder.forward_with(x, &mut NormPass::train(), &mut |_, h| {
            features.push(h.detach());
            Ok(h)
        })?;
        Ok(features)
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let started = Instant::now();
        // The encoder is frozen: its features are constants for the decoder.
        let skips = stages(&content)?;
        let styles = stages(&style_image)?
            .iter()
            .map(style)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut h = skips[3].clone();
        for (level, conv) in up.iter().enumerate() {
            h = upsample_nearest(&h, 2)?;
            if level < 3 {
                h = Tensor::cat(&[&h, &skips[2 - level]], 1)?;
                h = relu(&adain(&conv.forward(&h)?, &styles[2 - level])?)?;
            } else {
                h = relu(&conv.forward(&h)?)?;
            }
        }
        let generated = out.forward(&upsample_nearest(&h, 2)?)?;
        let loss = (generated - &content)?.abs()?.mean_all()?;
        opt.step(&loss.backward()?)?;
        let _ = loss.to_scalar::<f32>()?;
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "framework": if candle_ops { "candle" } else { "bfx" },
            "network": format!("IST generator (ResNet18 IN width {width} + UNet-AdaIN decoder)"),
            "input": format!("{channels}x{size}x{size}"), "batch": batch, "steps": steps,
            "median_s": median(times),
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        })
    );
    Ok(())
}
