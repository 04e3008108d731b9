//! Seconds per training step of each IST phase, as `bfx-trainer fit` runs
//! them (the registered `ist` method with BatchNorm networks, the
//! trainer's default), one JSON line per phase: encoder pre-training,
//! generator and critic, predictor on restyled images. Each step draws
//! `BATCH` content and `BATCH` style images (random pixels, random
//! labels); the encoder phase trains on both.
//!
//! Usage: ist-phases WIDTH BATCH CHANNELS SIZE STEPS

use std::time::Instant;

/// The trainer's allocator, so the benchmark measures what `bfx-trainer` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bfx_bench::{arg, median};
use bfx_trainer::methods::{self, Batch, MethodContext};
use bfx_trainer::model::{self, EmbedHead, ModelSpec};
use bfx_trainer::nn::ResNetSpec;
use bfx_trainer::optim::{AdamW, trainable};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

/// Classes and plates of the random labels.
const CLASSES: usize = 8;
const ENVS: usize = 4;
/// Far more than any run of this benchmark: phases start at these steps.
const PHASE: usize = 1_000_000;

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in main, before any thread is started.
    #[allow(unsafe_code)]
    unsafe {
        bfx_trainer::runtime::configure_threads()
    };
    let (width, batch, channels, size, steps) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?, arg(5)?);
    let device = Device::Cpu;
    let spec = ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(channels, width, false),
        head: EmbedHead::Linear,
        embedding_dim: 64,
        classes: CLASSES,
    };
    let map = VarMap::new();
    let model = model::build(&spec, &map, &device, 0)?;
    let ctx = MethodContext {
        map: &map,
        device: &device,
        spec: &spec,
        envs: ENVS,
        steps: PHASE,
        seed: 1,
        image: [channels, size, size],
    };
    let params: toml::Table = toml::from_str(&format!(
        "encoder_steps = {PHASE}\ngenerator_steps = {PHASE}"
    ))?;
    let mut ist = methods::build("ist", &params, &ctx)?;
    let mut opt = AdamW::new(trainable(&map, "model."), 1e-3, 1e-4)?;
    let n = 2 * batch;
    let labels = |k: usize, salt: usize| -> candle_core::Result<Tensor> {
        let v: Vec<u32> = (0..n).map(|i| ((i * 7 + salt) % k) as u32).collect();
        Tensor::new(v.as_slice(), &device)
    };
    let b = Batch {
        x: Tensor::randn(0f32, 1.0, (n, channels, size, size), &device)?,
        y: labels(CLASSES, 0)?,
        env: labels(ENVS, 3)?,
    };
    for (name, start) in [
        ("encoder", 0),
        ("generator and critic", PHASE),
        ("predictor", 2 * PHASE),
    ] {
        let mut times = Vec::with_capacity(steps);
        for i in 0..steps + 2 {
            let started = Instant::now();
            ist.step(&model, &b, &mut opt, start + i)?;
            if i >= 2 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "phase": name,
                "network": format!("IST, ResNet18 BatchNorm width {width}"),
                "input": format!("{channels}x{size}x{size}"),
                "batch": batch, "steps": steps,
                "median_s": median(times),
                "dtype": format!("{:?}", DType::F32).to_lowercase(),
            })
        );
    }
    Ok(())
}
