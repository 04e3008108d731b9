//! Seconds per training step of bfx's ResNet18 (ERM: forward in train
//! mode, cross-entropy, backward, AdamW) on random data, as one JSON line.
//! `bench/training_step.py` measures the same network in PyTorch;
//! `bench/run.sh` runs both side by side and writes docs/performance.md.
//!
//! Usage: training-step [WIDTH] [BATCH] [CHANNELS] [SIZE] [STEPS]
//! (defaults 64 32 5 64 12). Threads: RAYON_NUM_THREADS.

use std::time::Instant;

use anyhow::Context;
use bfx_trainer::model::{self, ModelSpec};
use bfx_trainer::nn::{NormPass, ResNetSpec};
use bfx_trainer::optim::{AdamW, trainable};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

fn arg(i: usize, default: usize) -> anyhow::Result<usize> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(a) => a
            .parse()
            .with_context(|| format!("argument {i} ({a:?}) is not a number")),
    }
}

fn main() -> anyhow::Result<()> {
    let (width, batch, channels, size, steps) = (
        arg(1, 64)?,
        arg(2, 32)?,
        arg(3, 5)?,
        arg(4, 64)?,
        arg(5, 12)?,
    );
    let device = Device::Cpu;
    let spec = ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(channels, width, false),
        embedding_dim: 128,
        classes: 10,
    };
    let map = VarMap::new();
    let net = model::build(&spec, &map, &device, 0)?;
    let mut opt = AdamW::new(trainable(&map, "model."), 1e-4, 0.01)?;
    let x = Tensor::randn(0f32, 1.0, (batch, channels, size, size), &device)?;
    let y = Tensor::new(
        (0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(),
        &device,
    )?;
    let mut times = Vec::with_capacity(steps);
    // Two warm-up steps (allocation, thread pool start) are not timed.
    for i in 0..steps + 2 {
        let started = Instant::now();
        let (_, logits) = net.forward(&x, &mut NormPass::train())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.step(&loss.backward()?)?;
        let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "framework": "candle",
            "width": width, "batch": batch, "channels": channels, "size": size,
            "steps": steps, "median_s": median, "min_s": times[0], "max_s": times[times.len() - 1],
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        })
    );
    Ok(())
}
