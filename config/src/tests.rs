use std::path::{Path, PathBuf};
use std::time::Duration;

use bfx_core::naming::Preset;

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

const MINIMAL: &str = r#"
[daemon]
bundle = "bundle"
store = "/data/out.zarr"
[daemon.naming]
preset = "opera"
[daemon.watch]
roots = ["incoming"]
"#;

fn daemon_error(text: &str) -> String {
    parse_daemon(text, Path::new("/etc/bfx/daemon.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn the_example_configs_parse() {
    let daemon = load_daemon(&example("daemon.toml")).unwrap();
    assert_eq!(daemon.naming.preset, Preset::Imagexpress);
    assert_eq!(daemon.watch.roots, vec![PathBuf::from("/data/acquisition")]);
    assert_eq!(daemon.batch, daemon::BatchConfig::default());
    let trainer = load_trainer(&example("trainer.toml")).unwrap();
    assert_eq!(trainer.method.name, "abra");
    assert_eq!(trainer.preprocess.channels, ["w1", "w2", "w3", "w4"]);
    assert_eq!(trainer.out, example("runs/abra-grid"));
}

#[test]
fn defaults_fill_a_minimal_daemon_config_and_paths_resolve_against_its_folder() {
    let c = parse_daemon(MINIMAL, Path::new("/etc/bfx/daemon.toml")).unwrap();
    assert_eq!(c.bundle, PathBuf::from("/etc/bfx/bundle"));
    assert_eq!(c.store, PathBuf::from("/data/out.zarr"));
    assert_eq!(c.watch.roots, vec![PathBuf::from("/etc/bfx/incoming")]);
    assert_eq!(c.watch.mode, daemon::WatchMode::Both);
    assert_eq!(c.watch.settle, Duration::from_secs(2));
    assert_eq!(c.batch.max_size, 32);
    assert_eq!(c.inference.intra_op_threads, 1);
    assert!(!c.inference.spinning);
    assert!(c.inference.first);
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.assemble.field_size, None);
    let sized = format!("{MINIMAL}[daemon.assemble]\nfield_size = [1080, 1920]\n");
    let sized = parse_daemon(&sized, Path::new("/etc/bfx/daemon.toml")).unwrap();
    assert_eq!(sized.assemble.field_size, Some([1080, 1920]));
    let relative = parse_daemon(MINIMAL, Path::new("daemon.toml")).unwrap();
    assert_eq!(relative.bundle, PathBuf::from("./bundle"));
}

#[test]
fn out_of_range_values_name_the_key() {
    let cases = [
        (
            "[daemon.batch]\nmax_size = 0",
            "daemon.batch.max_size must be >= 1, got 0",
        ),
        (
            "[daemon.batch]\nmax_delay = \"0s\"",
            "daemon.batch.max_delay must be longer than 0s",
        ),
        (
            "[daemon.inference]\nintra_op_threads = 0",
            "daemon.inference.intra_op_threads must be >= 1, got 0",
        ),
        (
            "[daemon.quarantine]\nmode = \"move\"",
            "daemon.quarantine.dir is required when daemon.quarantine.mode = \"move\"",
        ),
        (
            "[daemon.correction]\nadabn_min_sites = 100\nadabn_sample_sites = 10",
            "daemon.correction.adabn_sample_sites must be >= 100, got 10 (daemon.correction.adabn_min_sites)",
        ),
        (
            "[daemon.assemble]\nfield_size = [0, 512]",
            "daemon.assemble.field_size is 0x512: height and width must be at least 1 pixel",
        ),
        (
            "[daemon.commit]\nmax_interval = \"1m\"",
            "daemon.shutdown_timeout (30s) must be at least daemon.commit.max_interval (60s) so a shutdown can commit",
        ),
    ];
    for (extra, message) in cases {
        assert_eq!(
            daemon_error(&format!("{MINIMAL}{extra}\n")),
            format!("/etc/bfx/daemon.toml: {message}")
        );
    }
    let no_channels = MINIMAL.replace(
        "store = \"/data/out.zarr\"",
        "store = \"/data/out.zarr\"\nchannels = []",
    );
    assert_eq!(
        daemon_error(&no_channels),
        "/etc/bfx/daemon.toml: daemon.channels must list at least one channel when set"
    );
    let no_roots = MINIMAL.replace("roots = [\"incoming\"]", "roots = []");
    assert_eq!(
        daemon_error(&no_roots),
        "/etc/bfx/daemon.toml: daemon.watch.roots must list at least one acquisition folder"
    );
    let custom = MINIMAL.replace(
        "preset = \"opera\"",
        "preset = \"custom\"\npattern = '(?P<well>\\w+)'",
    );
    assert_eq!(
        daemon_error(&custom),
        "/etc/bfx/daemon.toml: daemon.naming.pattern is invalid: `pattern` needs a `channel` group"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_their_location() {
    let typo = daemon_error(&format!("{MINIMAL}[daemon.batch]\nmax_sise = 4\n"));
    assert!(
        typo.contains("unknown field `max_sise`") && typo.contains("max_size"),
        "{typo}"
    );
    assert!(typo.contains("line 10"), "{typo}");
    let wrong = daemon_error(&MINIMAL.replace("preset = \"opera\"", "preset = \"operetta\""));
    assert!(
        wrong.contains("unknown variant `operetta`") && wrong.contains("imagexpress"),
        "{wrong}"
    );
    let format = daemon_error(&format!("{MINIMAL}plate_format = 100\n").replace(
        "preset = \"opera\"",
        "preset = \"opera\"\nplate_format = 100",
    ));
    assert!(
        format.contains("100 is not a standard plate format"),
        "{format}"
    );
    let duration = daemon_error(&format!("{MINIMAL}[daemon.batch]\nmax_delay = \"soon\"\n"));
    assert!(duration.contains("max_delay"), "{duration}");
    let missing = daemon_error("[daemon]\nstore = \"x\"\n");
    assert!(missing.contains("missing field `bundle`"), "{missing}");
    // Each program reads its own table; the other may be incomplete.
    let section = daemon_error("[trainer]\n");
    assert_eq!(
        section,
        "/etc/bfx/daemon.toml: no [daemon] table; see config/examples/daemon.toml for a complete example"
    );
    let both = format!("{MINIMAL}[trainer]\nout = 3\n");
    parse_daemon(&both, Path::new("bfx.toml")).unwrap();
    assert!(
        parse_trainer(&both, Path::new("bfx.toml"))
            .unwrap_err()
            .to_string()
            .contains("invalid type")
    );
    let top = daemon_error(&format!("{MINIMAL}[deamon]\n"));
    assert!(top.contains("unknown field `deamon`"), "{top}");
    let err = load_daemon(Path::new("/nonexistent/daemon.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/daemon.toml: cannot read the configuration"),
        "{err}"
    );
}

#[test]
fn trainer_values_are_checked() {
    let text = std::fs::read_to_string(example("trainer.toml")).unwrap();
    let bad = |from: &str, to: &str| {
        assert!(text.contains(from), "{from}");
        parse_trainer(&text.replace(from, to), Path::new("fit.toml"))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad("# lr = 1e-4", "lr = 0.0"),
        "fit.toml: trainer.optim.lr must be > 0, got 0"
    );
    assert_eq!(
        bad("# batch_size = 32", "batch_size = 0"),
        "fit.toml: trainer.optim.batch_size must be >= 1, got 0"
    );
    assert_eq!(
        bad(
            "channels = [\"w1\", \"w2\", \"w3\", \"w4\"]",
            "channels = [\"w1\", \"w1\"]"
        ),
        "fit.toml: trainer.preprocess is invalid: invalid preprocessing spec: channel \"w1\" is listed twice"
    );
    let level = bad("# level = \"iid\"", "level = \"well\"");
    assert!(level.contains("unknown variant `well`"), "{level}");
}

#[test]
fn split_levels_parse_by_name_and_number() {
    use crate::trainer::SplitLevel;
    for (text, level) in [
        ("iid", SplitLevel::Iid),
        ("0", SplitLevel::Iid),
        ("1", SplitLevel::Section),
        ("Section", SplitLevel::Section),
        ("2", SplitLevel::Plate),
        ("plate", SplitLevel::Plate),
        ("3", SplitLevel::Series),
        ("series", SplitLevel::Series),
    ] {
        assert_eq!(text.parse::<SplitLevel>(), Ok(level), "{text}");
    }
    let err = "4".parse::<SplitLevel>().unwrap_err();
    assert!(
        err.contains("use iid (0), section (1), plate (2) or series (3)"),
        "{err}"
    );
}
