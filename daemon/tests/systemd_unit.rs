//! The shipped systemd unit passes `systemd-analyze verify`, and its
//! `systemd-analyze security` exposure stays below 2.0.

use std::path::Path;
use std::process::Command;

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze cannot run ({e}); install it with `apt-get install systemd` (scripts/test.sh does)")
        })
}

#[test]
fn the_unit_verifies_and_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/bfx-daemon.service");
    let text = std::fs::read_to_string(&unit).expect("unit file");
    assert!(text.contains("ExecStart=/usr/local/bin/bfx-daemon run"));
    // The daemon lowers its threads other than inference with setpriority
    // (bfx_daemon::priority), which @resources holds: the unit denies the
    // group, so it must allow that call back after, or the call kills it.
    let deny = text.find("SystemCallFilter=~@privileged @resources");
    let allow = text.find("SystemCallFilter=setpriority");
    assert!(
        matches!((deny, allow), (Some(d), Some(a)) if a > d),
        "the unit must deny @resources, then allow setpriority back"
    );
    // Any other denied call is an error the daemon handles, not SIGSYS.
    assert!(text.contains("\nSystemCallErrorNumber=EPERM\n"));
    // verify wants the executable to exist: point it at the built binary.
    let tmp = tempfile::tempdir().expect("temp dir");
    let copy = tmp.path().join("bfx-daemon.service");
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/bfx-daemon",
            env!("CARGO_BIN_EXE_bfx-daemon"),
        ),
    )
    .expect("copy");
    let copy = copy.to_str().expect("UTF-8 path");
    let out = analyze(&["verify", "--man=no", copy]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = analyze(&["security", "--offline=yes", "--no-pager", copy]);
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for bfx-daemon.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure < 2.0, "exposure {exposure}:\n{report}");
}
