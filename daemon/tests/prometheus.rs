//! A real Prometheus server (Debian's `prometheus` package) scrapes the
//! daemon during a replay, and its HTTP API returns the embedded-sites
//! counter; `promtool` accepts the shipped alert rules.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bundle, free_port, get, start, write_tiff};

/// Prometheus, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{name} is missing: install Debian's `prometheus` package (scripts/test.sh does)"
    );
    Command::new(name)
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops/prometheus-alerts.yml");
    let out = tool("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 5 rules found"));
}

#[test]
fn prometheus_scrapes_the_embedded_sites_counter() {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    let (daemon_port, prom_port) = (free_port(), free_port());
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
             [daemon.batch]\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_interval = \"300ms\"\n\
             [daemon.http]\nlisten = \"127.0.0.1:{daemon_port}\"\n"
        ),
    )
    .expect("config");
    std::fs::write(
        tmp.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: bfx\n    static_configs:\n      - targets: ['127.0.0.1:{daemon_port}']\n"),
    )
    .expect("prometheus config");
    let _prometheus = Prometheus(
        tool("prometheus")
            .arg(format!(
                "--config.file={}",
                tmp.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let _daemon = start(&config);
    let sites = 12;
    for s in 0..sites {
        for (c, ch) in ["w1", "w2"].iter().enumerate() {
            let path = tmp
                .path()
                .join(format!("incoming/PP1/PP1_B{:02}_s1_{ch}.tif", s + 1));
            write_tiff(&path, 40, 40, (s * 2 + c) as u64);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = get(
            prom_port,
            "/api/v1/query?query=sum(bfx_sites_embedded_total)",
        );
        if let Some((200, body)) = &answer {
            let v: serde_json::Value = serde_json::from_str(body).expect("Prometheus answers JSON");
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if value == Some(sites as f64) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {sites} embedded sites: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, up) = get(prom_port, "/api/v1/query?query=up%7Bjob%3D%22bfx%22%7D").expect("query");
    assert!(up.contains("\"1\""), "{up}");
}
