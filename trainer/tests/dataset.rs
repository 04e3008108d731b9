//! The dataset layer on hand-written manifests and folders: validation
//! messages, splits, cache invalidation, plate maps and folder scans.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bfx_core::image::ReadOptions;
use bfx_core::naming::{NamingScheme, Preset};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};
use bfx_trainer::dataset::{
    self, Dataset, DatasetError, EnvLevel, Manifest, ManifestError, PlateMap, SiteRow, Split,
    SplitError, SplitLevel,
};
use indicatif::ProgressBar;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("file in a folder")).expect("folder");
    std::fs::write(&path, text).expect("writable temp dir");
    path
}

/// A 2x2 16-bit TIFF with the given value.
fn tiff(dir: &Path, name: &str, value: u16) {
    let mut bytes = std::io::Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut bytes)
        .and_then(|mut e| {
            e.write_image::<tiff::encoder::colortype::Gray16>(
                2,
                2,
                &[value, value + 1, value + 2, value + 3],
            )
        })
        .expect("encodable");
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("file in a folder")).expect("folder");
    std::fs::write(path, bytes.into_inner()).expect("writable temp dir");
}

fn problems(e: ManifestError) -> Vec<String> {
    match e {
        ManifestError::Invalid { problems, .. } => problems,
        other => panic!("expected row problems, got {other}"),
    }
}

#[test]
fn validation_lists_every_offending_row() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for f in ["a1.tif", "a2.tif", "b1.tif", "b2.tif", "c1.tif", "c2.tif"] {
        tiff(root, f, 100);
    }
    let manifest = write(
        root,
        "m.csv",
        "plate,well,site,label,path_w1,path_w2\n\
         P1,B3,1,ctrl,a1.tif,a2.tif\n\
         P1,B03,1,ctrl,b1.tif,b2.tif\n\
         P1,B04,1,,c1.tif,gone.tif\n\
         P2,C01,1,drug,c1.tif,c2.tif\n",
    );
    let m = Manifest::read(&manifest).unwrap();
    assert_eq!(m.rows[0].well, "B03", "wells are normalized");
    let p = problems(
        m.validate(root, &["w1".into(), "w3".into()], true)
            .unwrap_err(),
    );
    let expect = [
        "channel \"w3\" of the preprocessing spec has no `path_w3` column",
        "column `path_w2` is an unknown channel",
        "line 3: site P1/B03/1 is already on line 2",
        "line 4: label is empty",
        "line 4: path_w2:",
        "line 5: plate \"P2\" has a single site",
    ];
    for e in expect {
        assert!(p.iter().any(|x| x.contains(e)), "no {e:?} in {p:#?}");
    }
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    // Without labels required, the empty label is fine.
    let p = problems(
        m.validate(root, &["w1".into(), "w2".into()], false)
            .unwrap_err(),
    );
    assert!(!p.iter().any(|x| x.contains("label")), "{p:#?}");
}

#[test]
fn unreadable_rows_and_headers_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_rows = write(
        tmp.path(),
        "rows.csv",
        "plate,well,site,label,path_w1\nP1,Z99,1,a,x.tif\nP1,B02,one,a,x.tif\nP1,B02,1,a,\n,B02,1,a,x.tif\n",
    );
    let err = Manifest::read(&bad_rows).unwrap_err();
    let text = err.to_string();
    let p = problems(err);
    assert_eq!(p.len(), 4, "{p:#?}");
    for (line, what) in [
        (2, "well \"Z99\""),
        (3, "site \"one\""),
        (4, "path_w1 is empty"),
        (5, "plate is empty"),
    ] {
        assert!(
            p.iter()
                .any(|x| x.starts_with(&format!("line {line}: {what}"))),
            "{p:#?}"
        );
    }
    assert!(text.starts_with(&bad_rows.display().to_string()), "{text}");

    for (header, message) in [
        ("plate,well,site,lable,path_w1", "unknown column `lable`"),
        ("plate,site,label,path_w1", "no `well` column"),
        ("plate,well,site,label", "no `path_<channel>` column"),
        ("plate,well,well,site,path_w1", "`well` appears twice"),
    ] {
        let path = write(
            tmp.path(),
            "h.csv",
            &format!("{header}\nP1,B02,1,a,x.tif\n"),
        );
        let err = Manifest::read(&path).unwrap_err().to_string();
        assert!(err.contains(message), "{header}: {err}");
    }
    // meta_ columns are carried, not refused.
    let path = write(
        tmp.path(),
        "meta.csv",
        "plate,well,site,label,meta_compound,path_w1\nP1,B02,1,a,DMSO,x.tif\n",
    );
    assert_eq!(Manifest::read(&path).unwrap().rows.len(), 1);
}

#[test]
fn long_problem_lists_are_cut_but_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::from("plate,well,site,label,path_w1\n");
    for i in 0..30 {
        text += &format!("P1,B02,{i},a,missing{i}.tif\n");
    }
    let path = write(tmp.path(), "m.csv", &text);
    let m = Manifest::read(&path).unwrap();
    let err = m
        .validate(tmp.path(), &["w1".into()], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("30 problem(s)"), "{err}");
    assert!(err.contains("... and 10 more"), "{err}");
}

/// 3 series x 2 plates x 2 sections x 3 wells x 2 sites; labels a, b, c by well.
fn screen_rows() -> Vec<SiteRow> {
    let mut rows = Vec::new();
    for s in 1..=3 {
        for p in 1..=2 {
            for (q, section) in ["Q1", "Q2"].iter().enumerate() {
                for w in 0..3 {
                    for site in 1..=2 {
                        rows.push(SiteRow {
                            plate: format!("S{s}P{p}"),
                            well: format!("{}{:02}", ['B', 'F'][q], w + 2),
                            site,
                            series: Some(format!("S{s}")),
                            section: Some((*section).to_owned()),
                            label: Some(["a", "b", "c"][w].to_owned()),
                            paths: vec![PathBuf::from("x.tif")],
                            line: rows.len() + 2,
                        });
                    }
                }
            }
        }
    }
    rows
}

#[test]
fn every_fold_keeps_its_test_environments_out_of_training() {
    let rows = screen_rows();
    let expected_folds = [
        (SplitLevel::Iid, 5),
        (SplitLevel::Section, 2),
        (SplitLevel::Plate, 6),
        (SplitLevel::Series, 3),
    ];
    for (level, n) in expected_folds {
        let folds = dataset::split::fold_units(&rows, level).unwrap();
        assert_eq!(folds.len(), n, "{level:?}");
        let mut tested = BTreeSet::new();
        for fold in 0..n {
            let s = Split::new(&rows, level, fold).unwrap();
            let unit = dataset::split::unit_level(level);
            let env = |i: &usize| rows[*i].env(unit).unwrap();
            let train: BTreeSet<String> = s.train.iter().chain(&s.val).map(env).collect();
            let test: BTreeSet<String> = s.test.iter().map(env).collect();
            assert!(train.is_disjoint(&test), "{level:?} fold {fold}");
            assert_eq!(test, s.held_out.iter().cloned().collect());
            // train, val and test partition the rows.
            let mut all: Vec<usize> = s
                .train
                .iter()
                .chain(&s.val)
                .chain(&s.test)
                .copied()
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..rows.len()).collect::<Vec<_>>());
            assert!(!s.val.is_empty() && !s.train.is_empty());
            // Validation wells are wells, never sites of a training well.
            let val_wells: BTreeSet<String> = s
                .val
                .iter()
                .map(|i| rows[*i].env(EnvLevel::Well).unwrap())
                .collect();
            assert!(
                s.train
                    .iter()
                    .all(|i| !val_wells.contains(&rows[*i].env(EnvLevel::Well).unwrap()))
            );
            assert!(s.unseen_labels.is_empty());
            tested.extend(test);
        }
        // Over all folds, every unit is tested once.
        let units: BTreeSet<String> = rows
            .iter()
            .map(|r| r.env(dataset::split::unit_level(level)).unwrap())
            .collect();
        assert_eq!(tested, units, "{level:?}");
    }
    // Leave-section-out holds out one section of every plate.
    let s = Split::new(&rows, SplitLevel::Section, 1).unwrap();
    assert_eq!(s.held_out.len(), 6);
    assert!(s.held_out.iter().all(|u| u.ends_with("/Q2")));
}

#[test]
fn impossible_splits_say_why() {
    let mut rows = screen_rows();
    assert_eq!(
        Split::new(&rows, SplitLevel::Plate, 6).unwrap_err(),
        SplitError::NoFold {
            level: "plate",
            fold: 6,
            folds: 6
        }
    );
    rows.iter_mut().for_each(|r| r.series = None);
    let err = Split::new(&rows, SplitLevel::Series, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "series splits need a `series` column in the manifest"
    );
    rows.iter_mut().for_each(|r| r.plate = "P".into());
    assert_eq!(
        Split::new(&rows, SplitLevel::Plate, 0).unwrap_err(),
        SplitError::TooFew {
            level: "plate",
            unit: "plate",
            count: 1
        }
    );
    // A label only on the held-out plate is reported.
    let mut rows = screen_rows();
    rows.iter_mut()
        .filter(|r| r.plate == "S1P1")
        .for_each(|r| r.label = Some("only-here".into()));
    let s = Split::new(&rows, SplitLevel::Plate, 0).unwrap();
    assert_eq!(s.held_out, ["S1P1"]);
    assert_eq!(s.unseen_labels, ["only-here"]);
}

#[test]
fn the_cache_follows_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("acq");
    for (i, plate) in ["P1", "P1", "P2", "P2"].iter().enumerate() {
        tiff(&root, &format!("{plate}/s{i}.tif"), 10 * i as u16);
    }
    let manifest = write(
        tmp.path(),
        "m.csv",
        "plate,well,site,label,path_w1\nP1,B02,1,a,P1/s0.tif\nP1,B03,1,b,P1/s1.tif\nP2,B02,1,a,P2/s2.tif\nP2,B03,1,b,P2/s3.tif\n",
    );
    let data = Dataset::open(&root, &manifest, &["w1".into()]).unwrap();
    assert_eq!(data.classes, ["a", "b"]);
    assert_eq!(data.labels, [0, 1, 0, 1]);
    let spec = |clip| PreprocessSpec {
        channels: vec!["w1".into()],
        normalization: Normalization::Percentile {
            low: vec![0.0],
            high: vec![100.0],
            clip,
        },
        geometry: Geometry::Resize {
            height: 2,
            width: 2,
        },
    };
    let read = ReadOptions::default();
    let cache = tmp.path().join("cache");
    let hidden = ProgressBar::hidden();
    let first = dataset::load_images(
        &data.manifest,
        &root,
        &spec(false),
        &read,
        Some(&cache),
        &hidden,
    )
    .unwrap();
    assert_eq!(first.image(3), [0.3f32, 0.31, 0.32, 0.33].as_slice());
    let key = dataset::cache_path(&data.manifest, &root, &spec(false), &read, &cache);
    assert!(key.is_file());
    // Another spec is another cache entry.
    assert_ne!(
        key,
        dataset::cache_path(&data.manifest, &root, &spec(true), &read, &cache)
    );
    // A rewritten image invalidates the entry, and the new pixels are read.
    std::thread::sleep(std::time::Duration::from_millis(20));
    tiff(&root, "P2/s3.tif", 50);
    let rewritten = dataset::cache_path(&data.manifest, &root, &spec(false), &read, &cache);
    assert_ne!(key, rewritten);
    let second = dataset::load_images(
        &data.manifest,
        &root,
        &spec(false),
        &read,
        Some(&cache),
        &hidden,
    )
    .unwrap();
    assert_eq!(second.image(3), [0.5, 0.51, 0.52, 0.53].as_slice());
    // A damaged cache file is an error naming it, not garbage.
    std::fs::write(&rewritten, b"not safetensors").unwrap();
    let err = dataset::load_images(
        &data.manifest,
        &root,
        &spec(false),
        &read,
        Some(&cache),
        &hidden,
    )
    .unwrap_err();
    assert!(
        matches!(err, DatasetError::Cache(ref p, _) if *p == rewritten),
        "{err}"
    );
}

#[test]
fn decode_failures_are_listed_by_manifest_line() {
    let tmp = tempfile::tempdir().unwrap();
    tiff(tmp.path(), "ok.tif", 5);
    write(tmp.path(), "broken.tif", "II*\0 not really");
    let manifest = write(
        tmp.path(),
        "m.csv",
        "plate,well,site,label,path_w1\nP1,B02,1,a,ok.tif\nP1,B03,1,b,broken.tif\n",
    );
    let data = Dataset::open(tmp.path(), &manifest, &["w1".into()]).unwrap();
    let spec = PreprocessSpec {
        channels: vec!["w1".into()],
        normalization: Normalization::SelfStandardize { eps: 1e-6 },
        geometry: Geometry::Resize {
            height: 2,
            width: 2,
        },
    };
    let err = dataset::load_images(
        &data.manifest,
        tmp.path(),
        &spec,
        &ReadOptions::default(),
        None,
        &ProgressBar::hidden(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("1 problem(s)") && err.contains("line 3:") && err.contains("broken.tif"),
        "{err}"
    );
}

#[test]
fn plate_maps_and_scans_explain_what_they_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, message) in [
        (
            "well,label\nB02,a\nB2,b\n",
            "plate \"\" well B02 is listed twice",
        ),
        ("well,label\nB02,\n", "line 2: label is empty"),
        ("well,compound\nB02,a\n", "unknown column `compound`"),
        ("plate,label\nP1,a\n", "needs `well` and `label` columns"),
    ] {
        let path = write(tmp.path(), "map.csv", text);
        let err = PlateMap::read(&path).unwrap_err().to_string();
        assert!(err.contains(message), "{text:?}: {err}");
    }

    let root = tmp.path().join("acq");
    for name in [
        "P1_B02_s1_w1.tif",
        "P1_B02_s1_w2.tif",
        "P1_B03_s1_w1.tif",
        "P1_C04_s1_w1.tif",
        "notes.txt",
    ] {
        tiff(&root, &format!("P1/{name}"), 1);
    }
    // A plate-specific row wins over the all-plates row.
    let map = PlateMap::read(&write(
        tmp.path(),
        "map.csv",
        "plate,well,label\n,B02,generic\nP1,B02,specific\n,B03,x\n",
    ))
    .unwrap();
    let scheme = NamingScheme::preset(Preset::Imagexpress).unwrap();
    let channels = vec!["w1".to_owned(), "w2".to_owned()];
    let err = dataset::scan_acquisition(&root, &scheme, &channels, &map)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("site P1/B03/1: no file for channel(s) [\"w2\"]"),
        "{err}"
    );
    let (m, report) = dataset::scan_acquisition(&root, &scheme, &channels[..1], &map).unwrap();
    assert_eq!(m.rows.len(), 2);
    assert_eq!(m.rows[0].label.as_deref(), Some("specific"));
    assert_eq!(report.unannotated_sites, 1, "C04 has no plate-map entry");
    assert_eq!(report.unnamed_count, 1, "{:?}", report.unnamed);

    // Several z planes of one site cannot become one manifest row.
    let yoko = tmp.path().join("yoko");
    tiff(&yoko, "P/P_B02_T0001F001L01A01Z01C01.tif", 1);
    tiff(&yoko, "P/P_B02_T0001F001L01A01Z02C01.tif", 1);
    let scheme = NamingScheme::preset(Preset::Yokogawa).unwrap();
    let map = PlateMap::read(&write(tmp.path(), "m2.csv", "well,label\nB02,a\n")).unwrap();
    let err = dataset::scan_acquisition(&yoko, &scheme, &["c1".into()], &map)
        .unwrap_err()
        .to_string();
    assert!(err.contains("several time points or z planes"), "{err}");
}
