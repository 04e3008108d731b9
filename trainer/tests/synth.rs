//! `bfx-trainer synth`: determinism, read-back through the dataset layer,
//! naming round trips, and the calibration property of `grid-like`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use bfx_core::image::ReadOptions;
use bfx_core::naming::{NamingScheme, Preset};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};
use bfx_trainer::calibrate;
use bfx_trainer::dataset::{self, Dataset, EnvLevel, Manifest, PlateMap, SplitLevel};
use bfx_trainer::sheet;
use bfx_trainer::synth::{self, Design, SynthPreset};
use indicatif::ProgressBar;

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bfx-trainer"))
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("readable folder") {
            let path = entry.expect("folder entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("readable file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn generate(preset: SynthPreset, dir: &Path, naming: Preset) -> synth::Summary {
    synth::generate(preset, dir, 0, naming, &ProgressBar::hidden()).expect("synthetic screen")
}

#[test]
fn tiny_is_byte_identical_across_runs_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        let status = trainer()
            .args(["synth", "--preset", "tiny", "--seed", seed, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        tree(&out)
    };
    let first = run("a", "3");
    let second = run("b", "3");
    // 96 sites x 4 channels, plus the manifest and the design.
    assert_eq!(first.len(), 96 * 4 + 2);
    assert!(first == second, "two runs with one seed differ");

    // One rendering thread gives the same bytes as many.
    let single = tmp.path().join("single");
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| {
            synth::generate(
                SynthPreset::Tiny,
                &single,
                3,
                Preset::Imagexpress,
                &ProgressBar::hidden(),
            )
        })
        .unwrap();
    assert!(tree(&single) == first, "thread count changes the output");

    let other = run("c", "4");
    let differing = first
        .iter()
        .filter(|(k, v)| other.get(*k) != Some(*v))
        .count();
    assert!(
        differing > 100,
        "another seed changes only {differing} files"
    );
}

#[test]
fn synth_refuses_a_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "user data").unwrap();
    let out = trainer()
        .args(["synth", "--preset", "tiny", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "user data"
    );
}

#[test]
fn tiny_reads_back_through_the_dataset_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("screen");
    let summary = generate(SynthPreset::Tiny, &root, Preset::Imagexpress);
    let channels: Vec<String> = ["w1", "w2", "w3", "w4"].map(String::from).to_vec();
    let data = Dataset::open(&root, &root.join(synth::MANIFEST_FILE), &channels).unwrap();
    assert_eq!(data.manifest.rows.len(), 96);
    assert_eq!(data.classes, ["ctrl", "p01", "p02", "p03"]);
    assert_eq!(
        data.manifest,
        Manifest {
            ..summary.manifest.clone()
        }
    );

    // design.json parses back and agrees with the manifest.
    let text = std::fs::read_to_string(root.join(synth::DESIGN_FILE)).unwrap();
    let design: Design = serde_json::from_str(&text).unwrap();
    let wells: BTreeMap<(String, String), String> = design
        .plates
        .iter()
        .flat_map(|p| {
            p.wells
                .iter()
                .map(move |w| ((p.name.clone(), w.well.clone()), w.label.clone()))
        })
        .collect();
    for row in &data.manifest.rows {
        assert_eq!(
            Some(&wells[&(row.plate.clone(), row.well.clone())]),
            row.label.as_ref()
        );
    }
    assert_eq!(design.splits.len(), 4);

    // Decoded once into the cache; the second load reads the cache.
    let spec = PreprocessSpec {
        channels: channels.clone(),
        normalization: Normalization::SelfStandardize { eps: 1e-6 },
        geometry: Geometry::Resize {
            height: 16,
            width: 16,
        },
    };
    let cache = tmp.path().join("cache");
    let read = ReadOptions::default();
    let hidden = ProgressBar::hidden();
    let images =
        dataset::load_images(&data.manifest, &root, &spec, &read, Some(&cache), &hidden).unwrap();
    assert_eq!((images.len(), images.shape), (96, [4, 16, 16]));
    assert_eq!(images.site_of, (0..96).collect::<Vec<_>>());
    let cached = dataset::cache_path(&data.manifest, &root, &spec, &read, &cache);
    assert!(cached.is_file());
    let again =
        dataset::load_images(&data.manifest, &root, &spec, &read, Some(&cache), &hidden).unwrap();
    assert!(again == images);
    // Self-standardized channels have mean ~0 before resizing.
    let mean: f32 = images.image(0).iter().sum::<f32>() / images.image(0).len() as f32;
    assert!(mean.abs() < 0.1, "mean {mean}");

    // Every level splits; held-out environments never train.
    for level in dataset::split::LEVELS {
        let folds = dataset::split::fold_units(&data.manifest.rows, level).unwrap();
        for fold in 0..folds.len() {
            let s = data.split(level, fold).unwrap();
            let unit = dataset::split::unit_level(level);
            let train: BTreeSet<String> = s
                .train
                .iter()
                .chain(&s.val)
                .filter_map(|&i| data.manifest.rows[i].env(unit))
                .collect();
            assert!(!s.test.is_empty());
            for &i in &s.test {
                assert!(!train.contains(&data.manifest.rows[i].env(unit).unwrap()));
            }
        }
    }
}

#[test]
fn every_naming_preset_round_trips_through_a_folder_scan() {
    for naming in [
        Preset::Imagexpress,
        Preset::Opera,
        Preset::Yokogawa,
        Preset::Cellomics,
        Preset::Rxrx,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("screen");
        let summary = generate(SynthPreset::Tiny, &root, naming);
        // The plate map a lab would write for this screen.
        let map_path = tmp.path().join("platemap.csv");
        let mut map = String::from("plate,well,label,series,section\n");
        for p in &summary.design.plates {
            for w in &p.wells {
                map += &format!(
                    "{},{},{},{},{}\n",
                    p.name, w.well, w.label, p.series, w.section
                );
            }
        }
        std::fs::write(&map_path, map).unwrap();
        let scheme = NamingScheme::preset(naming).unwrap();
        let (scanned, report) = dataset::scan_acquisition(
            &root,
            &scheme,
            &summary.manifest.channels,
            &PlateMap::read(&map_path).unwrap(),
        )
        .unwrap();
        // manifest.csv and design.json do not fit any naming scheme.
        assert_eq!(report.unnamed_count, 2, "{naming:?}: {:?}", report.unnamed);
        let key = |r: &dataset::SiteRow| (r.plate.clone(), r.well.clone(), r.site);
        let mut expected = summary.manifest.rows.clone();
        expected.sort_by_key(key);
        let strip = |rows: &[dataset::SiteRow]| {
            rows.iter()
                .map(|r| {
                    (
                        key(r),
                        r.series.clone(),
                        r.section.clone(),
                        r.label.clone(),
                        r.paths.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&scanned.rows), strip(&expected), "{naming:?}");
    }
}

#[test]
fn grid_like_batch_effects_are_visible_and_confound_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("grid");
    let summary = generate(SynthPreset::GridLike, &root, Preset::Imagexpress);
    let design = &summary.design;

    // Sparse design: plates hold half the classes, every class sits on
    // plates of at least two series, sections of a plate share the set.
    for p in &design.plates {
        assert_eq!(p.classes.len(), 4);
        let per_section: BTreeMap<&str, BTreeSet<&str>> =
            p.wells.iter().fold(BTreeMap::new(), |mut m, w| {
                m.entry(w.section.as_str())
                    .or_default()
                    .insert(w.label.as_str());
                m
            });
        assert_eq!(per_section.len(), 4);
        assert!(
            per_section
                .values()
                .all(|s| s.len() == 4 && s.iter().all(|l| p.classes.iter().any(|c| c == l)))
        );
    }
    for class in &design.classes {
        let series: BTreeSet<&str> = design
            .plates
            .iter()
            .filter(|p| p.classes.contains(&class.name))
            .map(|p| p.series.as_str())
            .collect();
        assert!(series.len() >= 2, "{} only in {series:?}", class.name);
    }

    let data = Dataset::open(
        &root,
        &root.join(synth::MANIFEST_FILE),
        &summary.manifest.channels,
    )
    .unwrap();
    let results = calibrate::calibrate(&data).unwrap();
    let get = |target: &str, level: &str| {
        results
            .iter()
            .find(|r| r.target == target && r.level == level)
            .unwrap_or_else(|| panic!("no {target} result at {level}"))
            .accuracy
    };
    assert!(get("plate", "iid") > 0.9, "{results:?}");
    assert!(get("label", "iid") > 0.7, "{results:?}");
    assert!(
        get("label", "plate") < get("label", "iid") - 0.25,
        "{results:?}"
    );
    assert!(
        get("label", "series") < get("label", "iid") - 0.25,
        "{results:?}"
    );
    assert_eq!(data.envs(EnvLevel::Series).unwrap().0.len(), 3);
    assert!(data.split(SplitLevel::Plate, 6).is_err());
}

#[test]
fn contact_sheet_lays_out_classes_by_plates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("screen");
    let summary = generate(SynthPreset::Tiny, &root, Preset::Imagexpress);
    let png_path = tmp.path().join("sheet.png");
    let legend = sheet::contact_sheet(&summary.manifest, &root, &png_path, 2, 1).unwrap();
    assert_eq!(legend.rows, ["ctrl", "p01", "p02", "p03"]);
    assert_eq!(legend.columns, ["S1P1", "S1P2", "S2P1", "S2P2"]);

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // 4 plates x (2 fields of 32 + 3 gap) + gaps; 4 classes x (32 + 3) + 3.
    assert_eq!(
        (info.width, info.height),
        (4 * (2 * 32 + 3 + 3) + 3, 4 * 35 + 3)
    );
    let pixel = |class: usize, plate: usize| {
        let (y, x) = (3 + class * 35 + 16, 3 + plate * 70 + 16);
        let o = (y * info.width as usize + x) * 3;
        [buf[o], buf[o + 1], buf[o + 2]]
    };
    for (r, class) in legend.rows.iter().enumerate() {
        for (c, plate) in legend.columns.iter().enumerate() {
            let held = summary.design.plates[c].classes.contains(class);
            assert_eq!(summary.design.plates[c].name, *plate);
            let cell: Vec<[u8; 3]> = (0..32)
                .map(|d| {
                    let (y, x) = (3 + r * 35 + d, 3 + c * 70 + d);
                    let o = (y * info.width as usize + x) * 3;
                    [buf[o], buf[o + 1], buf[o + 2]]
                })
                .collect();
            let empty = cell.iter().all(|p| *p == [18, 18, 18]);
            assert_eq!(
                empty,
                !held,
                "class {class} plate {plate}: {:?}",
                pixel(r, c)
            );
        }
    }
}

#[test]
fn check_config_validates_the_data_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    generate(
        SynthPreset::Tiny,
        &tmp.path().join("screen"),
        Preset::Imagexpress,
    );
    let config = |channels: &str, level: &str| {
        let path = tmp.path().join("trainer.toml");
        std::fs::write(
            &path,
            format!(
                "[trainer]\nout = \"run\"\n[trainer.data]\nroot = \"screen\"\nmanifest = \"screen/manifest.csv\"\n\
                 [trainer.preprocess]\nchannels = [{channels}]\nnormalization = {{ kind = \"self-standardize\", eps = 1e-6 }}\n\
                 geometry = {{ kind = \"resize\", height = 32, width = 32 }}\n[trainer.split]\nlevel = \"{level}\"\nfold = 1\n"
            ),
        )
        .unwrap();
        trainer().arg("check-config").arg(&path).output().unwrap()
    };
    let ok = config("\"w1\", \"w2\", \"w3\", \"w4\"", "series");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("96 sites, 4 classes, 4 plates"), "{stdout}");
    assert!(stdout.contains("series fold 1: "), "{stdout}");

    let bad = config("\"w1\", \"w2\", \"w5\", \"w4\"", "series");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("invalid training data") && stderr.contains("`path_w5`"),
        "{stderr}"
    );

    std::fs::remove_file(tmp.path().join("screen/S2P2/S2P2_B02_s1_w3.tif"))
        .expect("a tiny screen file");
    let missing = config("\"w1\", \"w2\", \"w3\", \"w4\"", "iid");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "a missing file passes");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
