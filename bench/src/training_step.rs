//! Seconds per training step of bfx's ResNet18 (ERM: forward in train
//! mode, cross-entropy, backward, AdamW) and per inference forward pass
//! (running statistics) on random data, as one JSON line,
//! with bfx's kernels or with Candle's own ops (`--candle-ops`, the
//! "before"). `bench/training_step.py` measures the same network in
//! PyTorch; `bench/run.sh` runs all of them side by side and writes
//! docs/performance.md.
//!
//! Usage: training-step WIDTH BATCH CHANNELS SIZE STEPS NORM [--candle-ops]
//! (NORM: bn or in). Threads: RAYON_NUM_THREADS.

use std::time::Instant;

/// The trainer's allocator, so the benchmark measures what `bfx-trainer` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bfx_bench::{arg, median};
use bfx_trainer::model::{self, EmbedHead, ModelSpec};
use bfx_trainer::nn::{NormPass, ResNetSpec, ops};
use bfx_trainer::optim::{AdamW, trainable};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any thread is started.
    #[allow(unsafe_code)]
    unsafe {
        bfx_trainer::runtime::configure_threads()
    };
    let (width, batch, channels, size, steps) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?, arg(5)?);
    let instance_norm = match std::env::args().nth(6).as_deref() {
        Some("bn") => false,
        Some("in") => true,
        other => anyhow::bail!("argument 6 must be bn or in, not {other:?}"),
    };
    let candle_ops = std::env::args().any(|a| a == "--candle-ops");
    ops::use_candle_ops(candle_ops);
    let device = Device::Cpu;
    let spec = ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(channels, width, instance_norm),
        head: EmbedHead::Linear,
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
    let mut phases: [Vec<f64>; 4] = Default::default();
    // Two warm-up steps (allocation, thread pool start) are not timed.
    for i in 0..steps + 2 {
        let started = Instant::now();
        let (_, logits) = net.forward(&x, &mut NormPass::train())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let forward = started.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let backward = started.elapsed().as_secs_f64();
        opt.step(&grads)?;
        let _ = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let total = started.elapsed().as_secs_f64();
        if i >= 2 {
            for (p, t) in
                phases
                    .iter_mut()
                    .zip([total, forward, backward - forward, total - backward])
            {
                p.push(t);
            }
        }
    }
    let [total, forward, backward, optimizer] = phases.map(median);
    // Inference: the embedding pass the exporter and `eval` run, with the
    // running statistics, after one untimed pass.
    let mut inference = Vec::with_capacity(steps);
    for i in 0..steps + 1 {
        let started = Instant::now();
        let (embedding, _) = net.forward(&x, &mut NormPass::eval())?;
        let _ = embedding.sum_all()?.to_scalar::<f32>()?;
        if i >= 1 {
            inference.push(started.elapsed().as_secs_f64());
        }
    }
    let inference = median(inference);
    println!(
        "{}",
        serde_json::json!({
            "framework": if candle_ops { "candle" } else { "bfx" },
            "network": format!("ResNet18 width {width} {}", if instance_norm { "InstanceNorm" } else { "BatchNorm" }),
            "input": format!("{channels}x{size}x{size}"), "batch": batch, "steps": steps,
            "median_s": total, "forward_s": forward, "backward_s": backward, "optimizer_s": optimizer,
            "inference_s": inference,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        })
    );
    Ok(())
}
