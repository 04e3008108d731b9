//! The `bfx-trainer` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use bfx_core::naming::{NamingScheme, Preset};
use bfx_trainer::dataset::{
    Dataset, EnvLevel, Manifest, PlateMap, SplitLevel, scan_acquisition, split,
};
use bfx_trainer::synth::{self, SynthPreset};
use bfx_trainer::{calibrate, sheet};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Training allocates and frees megabyte tensors every step; mimalloc keeps
/// them instead of handing pages back to the kernel (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train and evaluate batch-effect-robust models of microscopy screens.
#[derive(Parser)]
#[command(name = "bfx-trainer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file's [trainer] table and print it resolved.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Write a synthetic screen with known ground truth.
    ///
    /// Writes an acquisition tree as a microscope would (one 16-bit
    /// grayscale TIFF per channel per site, named by an instrument preset),
    /// `manifest.csv` (one row per site: plate, well, site, series,
    /// section, label, one path per channel) and `design.json` (class
    /// definitions, the batch effects of every series, plate, section and
    /// well, and the cross-validation folds of every level).
    ///
    /// Deterministic: the same preset, seed and naming give byte-identical
    /// files on every run and any number of threads.
    #[command(verbatim_doc_comment)]
    Synth {
        /// Screen preset: tiny (96 sites, for tests), grid-like, lincs-like, rxrx-like.
        #[arg(long, value_enum)]
        preset: SynthPreset,
        /// Output folder (created; must be empty if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Instrument naming of the files.
        #[arg(long, value_parser = naming_arg(), default_value = "imagexpress")]
        naming: Preset,
    },
    /// Build a manifest by scanning an acquisition folder with a naming
    /// preset and labelling wells from a plate map CSV (well, label[,
    /// plate, series, section]).
    Manifest {
        /// Acquisition root.
        #[arg(long)]
        root: PathBuf,
        /// Naming preset of the files.
        #[arg(long, value_parser = naming_arg())]
        naming: Preset,
        /// Plate map CSV.
        #[arg(long)]
        plate_map: PathBuf,
        /// Channel identifiers as the naming scheme writes them, in model order (e.g. w1,w2,w3).
        #[arg(long, value_delimiter = ',', required = true)]
        channels: Vec<String>,
        /// Manifest to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a PNG contact sheet: rows are classes, columns plates, channels in false colour.
    ContactSheet {
        /// Acquisition root (the folder `synth` wrote).
        #[arg(long)]
        root: PathBuf,
        /// Manifest (default: <root>/manifest.csv).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// Sites shown per class and plate.
        #[arg(long, default_value_t = 2)]
        sites: usize,
        /// Magnification of each field.
        #[arg(long, default_value_t = 1)]
        zoom: usize,
    },
    /// Train a model: the [trainer] table of FILE, with overrides. Ctrl-C
    /// stops after the current step and saves a checkpoint; `--resume`
    /// continues from it.
    Fit {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        /// Continue from `<out>/last.*` if it exists.
        #[arg(long)]
        resume: bool,
    },
    /// Evaluate a trained run on the environments its split held out:
    /// accuracy and macro-F1 with training statistics and with AdaBN plate
    /// statistics, the AdaBN batch-size curve, kNN batch-CV, LISI and plate
    /// prediction from embeddings. Writes report.md, metrics.json and plots.
    Eval {
        /// The run's output folder (trainer.out).
        #[arg(long)]
        run: PathBuf,
        /// Report folder (default: <run>/report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write SCBD's swap grid (a run trained with the method parameter
    /// decoder = true): held-out images decoded with the z_c of one and
    /// the z_e of another; rows give z_c, columns z_e.
    Swap {
        /// The run's output folder (trainer.out).
        #[arg(long)]
        run: PathBuf,
        /// PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// Images (one per held-out class, at most).
        #[arg(long, default_value_t = 6)]
        images: usize,
        /// Magnification of each field.
        #[arg(long, default_value_t = 3)]
        zoom: usize,
    },
    /// Check an IST run's generator: a PNG grid (rows: content images of
    /// different classes, columns: one style image per training plate)
    /// and, printed and written beside it as JSON, how much content the
    /// restyled images keep and how far their plate moves.
    IstGrid {
        /// The run's output folder (trainer.out).
        #[arg(long)]
        run: PathBuf,
        /// PNG to write (the numbers go to the same name with .json).
        #[arg(long)]
        out: PathBuf,
        /// Content images (one per class, at most).
        #[arg(long, default_value_t = 6)]
        rows: usize,
        /// Magnification of each field.
        #[arg(long, default_value_t = 3)]
        zoom: usize,
    },
    /// Fit and evaluate methods x levels x folds x seeds from one base
    /// config and write one table (results.md, results.json,
    /// f1_by_level.png). Finished runs are reused: rerun to continue.
    Bench {
        /// Base configuration (data, preprocessing, model, optimizer).
        #[arg(long)]
        config: PathBuf,
        /// Output folder (runs and the table).
        #[arg(long)]
        out: PathBuf,
        /// Methods, each optionally with parameters (`scbd:alpha=64`), so
        /// one bench can sweep them.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "erm,abra,dann,mixstyle,scbd"
        )]
        methods: Vec<bfx_trainer::bench::MethodVariant>,
        /// Levels.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "iid,section,plate,series"
        )]
        levels: Vec<SplitLevel>,
        /// Folds of each level: `all` or a list such as 0,1.
        #[arg(long, default_value = "all")]
        folds: String,
        /// Seeds.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Optimizer steps of every run (default: the config's).
        #[arg(long)]
        steps: Option<usize>,
        /// Command line to name in results.md as the way to remake it.
        #[arg(long, default_value = "bfx-trainer bench")]
        made_by: String,
    },
    /// Export a trained model as a bundle for bfx-daemon: ONNX graphs
    /// (predictor, and for BatchNorm models the AdaBN statistics and plate
    /// graphs) plus manifest.json with channels, preprocessing, classes,
    /// provenance, headline metrics and the sha256 of every file.
    Export {
        /// A run folder (its best checkpoint) or a checkpoint's .json/.safetensors.
        checkpoint: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing bundle folder.
        #[arg(long)]
        replace: bool,
    },
    /// Verify a bundle (format version, every file's sha256) and describe it.
    Inspect {
        /// Bundle folder.
        bundle: PathBuf,
    },
    /// Calibration report of a screen: a linear probe on per-image intensity
    /// features predicts the plate (are batch effects visible?) and the
    /// label at every split level (do they confound biology?).
    Calibrate {
        /// Acquisition root (the folder `synth` wrote).
        #[arg(long)]
        root: PathBuf,
        /// Manifest (default: <root>/manifest.csv).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Markdown report to write (the table is printed either way).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write a contact sheet PNG next to the report and show it there.
        #[arg(long, requires = "report")]
        sheet: Option<PathBuf>,
        /// Command line to name in the report as the way to remake it.
        #[arg(long, default_value = "bfx-trainer calibrate")]
        made_by: String,
    },
}

/// Overrides of a `[trainer]` table from the command line.
#[derive(clap::Args, Clone, Debug, Default)]
struct Overrides {
    /// Method (erm, abra, dann, mixstyle).
    #[arg(long)]
    method: Option<String>,
    /// Split level: iid (0), section (1), plate (2), series (3).
    #[arg(long)]
    level: Option<SplitLevel>,
    /// Cross-validation fold.
    #[arg(long)]
    fold: Option<usize>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Encoder base width.
    #[arg(long)]
    width: Option<usize>,
}

impl Overrides {
    fn apply(&self, c: &mut bfx_config::TrainerConfig) {
        if let Some(m) = &self.method {
            c.method.name = m.clone();
        }
        if let Some(l) = self.level {
            c.split.level = l;
        }
        if let Some(f) = self.fold {
            c.split.fold = f;
        }
        if let Some(s) = self.steps {
            c.optim.steps = s;
        }
        if let Some(s) = self.seed {
            c.seed = s;
        }
        if let Some(o) = &self.out {
            c.out = o.clone();
        }
        if let Some(w) = self.width {
            c.model.width = w;
        }
    }
}

/// `--naming`: an instrument preset (not `custom`), by its configuration name.
fn naming_arg() -> impl clap::builder::TypedValueParser<Value = Preset> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Preset::INSTRUMENTS.map(Preset::name))
        // The possible values are exactly the instrument names.
        .map(|name| Preset::instrument(&name).expect("an instrument preset name"))
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before any thread is started.
    #[allow(unsafe_code)]
    unsafe {
        bfx_trainer::runtime::configure_threads()
    };
    bfx_trainer::runtime::kernels_from_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let c = bfx_config::load_trainer(&file).context("invalid configuration")?;
            println!("ok   config        {}", file.display());
            println!(
                "     data          {} (manifest {})",
                c.data.root.display(),
                c.data.manifest.display()
            );
            println!("     channels      {:?}", c.preprocess.channels);
            println!(
                "     model         {} width {} norm {:?}, embedding {}",
                c.model.arch, c.model.width, c.model.norm, c.model.embedding_dim
            );
            println!("     method        {}", c.method.name);
            println!(
                "     optimizer     lr {} weight decay {} batch {} steps {}",
                c.optim.lr, c.optim.weight_decay, c.optim.batch_size, c.optim.steps
            );
            println!(
                "     split         {:?} fold {}",
                c.split.level, c.split.fold
            );
            println!("     output        {}", c.out.display());
            check_data(&c)
        }
        Command::Synth {
            preset,
            out,
            seed,
            naming,
        } => {
            let started = Instant::now();
            let bar = progress_bar("rendering sites");
            let summary = synth::generate(preset, &out, seed, naming, &bar)
                .with_context(|| format!("cannot write the {preset} screen"))?;
            let d = &summary.design;
            println!(
                "wrote {preset} screen to {} in {:.1} s: {} sites ({:.1} MB), {} plates in {} series, {} classes, {}x{} px, channels {}",
                out.display(),
                started.elapsed().as_secs_f64(),
                summary.manifest.rows.len(),
                summary.bytes as f64 / 1e6,
                d.plates.len(),
                d.series.len(),
                d.classes.len(),
                d.image_size,
                d.image_size,
                d.channels
                    .iter()
                    .map(|c| format!("{}={}", c.id, c.stain))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!(
                "     {} and {} describe it",
                out.join(synth::MANIFEST_FILE).display(),
                out.join(synth::DESIGN_FILE).display()
            );
            Ok(())
        }
        Command::Manifest {
            root,
            naming,
            plate_map,
            channels,
            out,
        } => {
            let scheme = NamingScheme::preset(naming)?;
            let map = PlateMap::read(&plate_map)?;
            let (manifest, report) = scan_acquisition(&root, &scheme, &channels, &map)?;
            manifest.write(&out)?;
            println!("wrote {} with {} sites", out.display(), manifest.rows.len());
            if report.unannotated_sites > 0 {
                println!(
                    "     left out {} site(s) in wells the plate map does not list",
                    report.unannotated_sites
                );
            }
            if report.unnamed_count > 0 {
                println!(
                    "     ignored {} file(s) that do not fit the naming scheme, e.g.:",
                    report.unnamed_count
                );
                for e in &report.unnamed {
                    println!("       {e}");
                }
            }
            Ok(())
        }
        Command::Fit {
            config,
            overrides,
            resume,
        } => fit(&config, &overrides, resume),
        Command::Export {
            checkpoint,
            out,
            replace,
        } => {
            let bundle = bfx_trainer::export::export(&checkpoint, &out, replace)
                .with_context(|| format!("cannot export {}", checkpoint.display()))?;
            print!("{}", bfx_trainer::export::describe(&bundle));
            Ok(())
        }
        Command::Inspect { bundle } => {
            let bundle = bfx_core::bundle::Bundle::open(&bundle)
                .with_context(|| format!("{} is not a usable bundle", bundle.display()))?;
            print!("{}", bfx_trainer::export::describe(&bundle));
            Ok(())
        }
        Command::Bench {
            config,
            out,
            methods,
            levels,
            folds,
            seeds,
            steps,
            made_by,
        } => {
            let mut base = bfx_config::load_trainer(&config).context("invalid configuration")?;
            if let Some(s) = steps {
                base.optim.steps = s;
            }
            let folds = match folds.as_str() {
                "all" => None,
                list => Some(
                    list.split(',')
                        .map(|f| f.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| {
                            format!("--folds {list:?}: use `all` or numbers like 0,1")
                        })?,
                ),
            };
            let plan = bfx_trainer::bench::BenchPlan {
                methods,
                levels,
                folds,
                seeds,
            };
            let interrupt = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupt))
                .context("cannot install the Ctrl-C handler")?;
            let device = training_device()?;
            let started = Instant::now();
            let result =
                bfx_trainer::bench::bench(&base, &plan, &out, &device, &interrupt, &|line| {
                    println!("[{:>6.0} s] {line}", started.elapsed().as_secs_f64())
                })?;
            bfx_trainer::bench::write_results(&out, &result, &base, &plan, &made_by)
                .map_err(anyhow::Error::msg)?;
            print!(
                "{}",
                std::fs::read_to_string(out.join("results.md")).unwrap_or_default()
            );
            Ok(())
        }
        Command::Swap {
            run,
            out,
            images,
            zoom,
        } => {
            let device = training_device()?;
            let grid = bfx_trainer::swap::swap_grid(&run, &out, images, zoom.max(1), &device)
                .with_context(|| format!("cannot draw the swap grid of {}", run.display()))?;
            println!("wrote {}", out.display());
            println!(
                "     rows give z_c, columns z_e: {}",
                grid.images.join(", ")
            );
            Ok(())
        }
        Command::IstGrid {
            run,
            out,
            rows,
            zoom,
        } => {
            let device = training_device()?;
            let check = bfx_trainer::ist::grid::ist_grid(&run, &out, rows, zoom.max(1), &device)
                .with_context(|| format!("cannot check the generator of {}", run.display()))?;
            let json = out.with_extension("json");
            let text = serde_json::to_string_pretty(&check)?;
            std::fs::write(&json, text + "\n")
                .with_context(|| format!("cannot write {}", json.display()))?;
            println!("wrote {} and {}", out.display(), json.display());
            println!(
                "content kept over {} restyled images: nucleus mask IoU {:.3} (unrelated images {:.3}), area change {:.3}, pixel correlation {:.3} (unrelated {:.3})",
                check.images,
                check.nucleus_iou,
                check.nucleus_iou_unrelated,
                check.nucleus_area_change,
                check.pixel_correlation,
                check.pixel_correlation_unrelated
            );
            println!(
                "environment moved: the plate classifier (accuracy {:.3} on real images) assigns {:.3} to the style's plate, {:.3} to the content's",
                check.plate_classifier_accuracy,
                check.assigned_to_style_env,
                check.assigned_to_content_env
            );
            Ok(())
        }
        Command::Eval { run, out } => {
            let device = training_device()?;
            let bar = progress_bar("decoding images");
            let (evaluation, projection) = bfx_trainer::eval::evaluate(&run, &device, &bar)
                .with_context(|| format!("cannot evaluate {}", run.display()))?;
            let out = out.unwrap_or_else(|| run.join("report"));
            bfx_trainer::eval::write_report(&out, &evaluation, &projection)
                .map_err(anyhow::Error::msg)?;
            let p = &evaluation.plain;
            println!(
                "{} at {} fold {}: accuracy {:.3}, macro-F1 {:.3} on {} test images",
                evaluation.method,
                evaluation.level,
                evaluation.fold,
                p.accuracy,
                p.macro_f1,
                evaluation.test_images
            );
            if let Some(a) = &evaluation.adabn {
                println!(
                    "     with AdaBN plate statistics: accuracy {:.3}, macro-F1 {:.3}",
                    a.accuracy, a.macro_f1
                );
            }
            println!("     report in {}", out.display());
            Ok(())
        }
        Command::Calibrate {
            root,
            manifest,
            report,
            sheet,
            made_by,
        } => calibrate(&root, manifest, report, sheet, &made_by),
        Command::ContactSheet {
            root,
            manifest,
            out,
            sites,
            zoom,
        } => {
            let path = manifest.unwrap_or_else(|| root.join(synth::MANIFEST_FILE));
            let manifest = Manifest::read(&path)?;
            let legend = sheet::contact_sheet(&manifest, &root, &out, sites.max(1), zoom.max(1))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            println!("     rows (classes): {}", legend.rows.join(", "));
            println!("     columns (plates): {}", legend.columns.join(", "));
            let colours: Vec<String> = legend
                .colours
                .iter()
                .map(|(c, k)| format!("{c} {k}"))
                .collect();
            println!("     colours: {}", colours.join(", "));
            Ok(())
        }
    }
}

/// The data a config names: manifest rows against files and channels, and
/// the folds of every split level.
fn check_data(c: &bfx_config::TrainerConfig) -> anyhow::Result<()> {
    if !c.data.manifest.is_file() {
        anyhow::bail!(
            "trainer.data.manifest {} does not exist; write one with `bfx-trainer manifest` or generate a screen with `bfx-trainer synth`",
            c.data.manifest.display()
        );
    }
    let data = Dataset::open(&c.data.root, &c.data.manifest, &c.preprocess.channels)
        .context("invalid training data")?;
    let plates = data.envs(EnvLevel::Plate).map_or(0, |(p, _)| p.len());
    println!(
        "ok   data          {} sites, {} classes, {} plates",
        data.manifest.rows.len(),
        data.classes.len(),
        plates
    );
    for level in split::LEVELS {
        match split::fold_units(&data.manifest.rows, level) {
            Ok(folds) => println!(
                "     split {:<7} {} folds",
                split::level_name(level),
                folds.len()
            ),
            Err(e) => println!(
                "     split {:<7} unavailable: {e}",
                split::level_name(level)
            ),
        }
    }
    let s = data
        .split(c.split.level, c.split.fold)
        .context("trainer.split")?;
    println!(
        "ok   split         {} fold {}: {} train, {} validation, {} test sites",
        s.level,
        s.fold,
        s.train.len(),
        s.val.len(),
        s.test.len()
    );
    Ok(())
}

fn fit(file: &Path, overrides: &Overrides, resume: bool) -> anyhow::Result<()> {
    let mut config = bfx_config::load_trainer(file).context("invalid configuration")?;
    overrides.apply(&mut config);
    config.validate().map_err(|e| {
        anyhow::anyhow!(
            "{}: {} {} (after command-line overrides)",
            file.display(),
            e.key,
            e.problem
        )
    })?;
    let interrupt = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupt))
        .context("cannot install the Ctrl-C handler")?;
    let device = training_device()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {per_sec} ETA {eta}  {msg}")
            // The template is a constant of this file.
            .expect("valid progress template"),
    );
    let report = bfx_trainer::fit::fit(&config, &device, resume, &interrupt, &bar)
        .with_context(|| format!("training {} failed", config.method.name))?;
    let [train, val, test] = report.sizes;
    println!(
        "{} {} at {} fold {}: {} steps in {:.0} s ({:.2} steps/s); {train} training, {val} validation, {test} test images",
        if report.interrupted {
            "interrupted"
        } else {
            "trained"
        },
        config.method.name,
        bfx_trainer::dataset::split::level_name(config.split.level),
        config.split.fold,
        report.steps,
        report.seconds,
        report.steps as f64 / report.seconds.max(1e-9),
    );
    if let Some(last) = report.history.last() {
        println!(
            "     validation: loss {:.3}, accuracy {:.3} (train loss {:.3})",
            last.val_loss, last.val_accuracy, last.train_loss
        );
    }
    if let Some(best) = report
        .history
        .iter()
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
    {
        println!(
            "     best validation loss {:.3} at step {}",
            best.val_loss, best.step
        );
    }
    println!(
        "     checkpoints: {} (best) and {} (last)",
        config.out.join("best.safetensors").display(),
        config.out.join("last.safetensors").display()
    );
    if report.interrupted {
        println!(
            "     continue with: bfx-trainer fit --config {} --resume",
            file.display()
        );
    }
    Ok(())
}

/// CPU, or the first CUDA device when built with `cuda` and `BFX_DEVICE=cuda`.
fn training_device() -> anyhow::Result<candle_core::Device> {
    match std::env::var("BFX_DEVICE").as_deref() {
        Ok("cuda") => candle_core::Device::new_cuda(0).context(
            "BFX_DEVICE=cuda, but no CUDA device is usable (build with --features cuda on a machine with a GPU)",
        ),
        Ok("cpu") | Err(_) => Ok(candle_core::Device::Cpu),
        Ok(other) => anyhow::bail!("BFX_DEVICE={other}: use cpu or cuda"),
    }
}

fn calibrate(
    root: &Path,
    manifest: Option<PathBuf>,
    report: Option<PathBuf>,
    sheet_png: Option<PathBuf>,
    made_by: &str,
) -> anyhow::Result<()> {
    let path = manifest.unwrap_or_else(|| root.join(synth::MANIFEST_FILE));
    let first = Manifest::read(&path)?;
    let data = Dataset::open(root, &path, &first.channels)?;
    let results = calibrate::calibrate(&data)?;
    println!("predicts  split     folds  accuracy        macro-F1  chance");
    for r in &results {
        println!(
            "{:<9} {:<9} {:>5}  {:.3} ± {:.3}   {:.3}     {:.3}",
            r.target, r.level, r.folds, r.accuracy, r.accuracy_std, r.macro_f1, r.chance
        );
    }
    let Some(report) = report else {
        return Ok(());
    };
    let design_path = root.join(synth::DESIGN_FILE);
    let design: Option<synth::Design> = match std::fs::read_to_string(&design_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a synth design", design_path.display()))?,
        ),
        Err(_) => None,
    };
    let legend = match &sheet_png {
        Some(png) => Some(sheet::contact_sheet(&data.manifest, root, png, 2, 2)?),
        None => None,
    };
    let shown = sheet_png.as_deref().zip(legend.as_ref());
    let md = calibrate::report(&data, design.as_ref(), &results, shown, made_by);
    std::fs::write(&report, md).with_context(|| format!("cannot write {}", report.display()))?;
    println!("wrote {}", report.display());
    Ok(())
}

fn progress_bar(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed} < {eta}]")
            // The template is a constant of this file.
            .expect("valid progress template"),
    );
    bar.set_message(what);
    bar
}

/// The error and its causes on one line, leaving out a cause whose text
/// an outer message already includes (library errors often name their
/// source in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
