//! SCBD's decoder and swap grid end to end on the tiny screen.

mod common;
use common::{setup, trainer};

/// Train `method` for 30 steps with `config`'s text written to `<name>.toml`
/// beside it, output in the folder `name`.
fn fit(config: &std::path::Path, text: &str, name: &str, method: &str) -> std::path::PathBuf {
    let path = config.with_file_name(format!("{name}.toml"));
    std::fs::write(
        &path,
        text.replace("out = \"run\"", &format!("out = \"{name}\"")),
    )
    .expect("temp dir writable");
    let o = trainer(&[
        "fit".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
        "--method".as_ref(),
        method.as_ref(),
        "--steps".as_ref(),
        "30".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    config.with_file_name(name)
}

#[test]
fn a_decoder_run_draws_a_swap_grid_and_other_runs_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(
        tmp.path(),
        "[trainer.method]\nname = \"scbd\"\nparams = { decoder = true, decoder_lr = 1e-2 }\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let run = fit(&config, &text, "scbd", "scbd");
    let png = tmp.path().join("swap.png");
    let swap = |run: &std::path::Path| {
        trainer(&[
            "swap".as_ref(),
            "--run".as_ref(),
            run.as_os_str(),
            "--out".as_ref(),
            png.as_os_str(),
            "--zoom".as_ref(),
            "1".as_ref(),
        ])
    };
    let o = swap(&run);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The tiny screen's iid test set holds its 4 classes: a 5 x 5 grid of 32 px fields.
    let shown = stdout.lines().nth(1).and_then(|l| l.split(": ").nth(1));
    assert_eq!(shown.map(|s| s.split(", ").count()), Some(4), "{stdout}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (5 * 35 + 3, 5 * 35 + 3));

    // Without the decoder, and for another method, the refusal says why.
    let plain = text.replace("decoder = true", "decoder = false");
    let erm = &text[..text.find("[trainer.method]").unwrap()];
    for (name, text, method, why) in [
        (
            "plain",
            plain.as_str(),
            "scbd",
            "trained without a decoder (method parameter decoder = true)",
        ),
        (
            "erm",
            erm,
            "erm",
            "a swap grid needs an SCBD run, this one trained erm",
        ),
    ] {
        let o = swap(&fit(&config, text, name, method));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(why), "{stderr}");
    }
}
