//! `blindfold bench broker`: a broker in its own process on loopback, N concurrent
//! clients running the full auth → attest → resource flow with `sample` evidence for S
//! seconds; then the same load while the broker is killed with SIGKILL half-way,
//! restarted, and its audit log checked against the releases the clients saw.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_owner::Error;
use serde_json::{json, Value};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bug(e: impl std::fmt::Display) -> Error {
    Error::Bug(e.to_string())
}

fn start(dir: &std::path::Path, port: u16) -> Result<Server, Error> {
    let exe = std::env::current_exe().map_err(bug)?;
    let child = Command::new(exe)
        .args([
            "broker",
            "serve",
            "--insecure-http",
            "--rate-limit",
            "1000000000",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(bug)?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(Error::Bug("the broker did not start".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server(child))
}

struct Load {
    ok: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    elapsed: f64,
}

fn load(
    url: &str,
    dataset: &str,
    clients: usize,
    seconds: f64,
    kill_at: Option<(f64, &mut Server)>,
) -> Result<Load, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(bug)?;
    let opts = Arc::new(FetchOptions {
        broker: url.into(),
        insecure_http: true,
        ..FetchOptions::default()
    });
    let client = blindfold_attest::client(&opts).map_err(bug)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut handles = vec![];
    for _ in 0..clients {
        let (opts, client, dataset) = (opts.clone(), client.clone(), dataset.to_owned());
        handles.push(rt.spawn(async move {
            let ev = EvidenceSource::InsecureSample { measurement: None };
            let (mut ok, mut err, mut lat) = (0u64, 0u64, vec![]);
            while Instant::now() < deadline {
                let t = Instant::now();
                match blindfold_attest::fetch_key_async(&client, &opts, &dataset, &ev).await {
                    Ok(_) => {
                        ok += 1;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(_) => {
                        err += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (ok, err, lat)
        }));
    }
    if let Some((at, server)) = kill_at {
        std::thread::sleep(Duration::from_secs_f64(at));
        server.0.kill().map_err(bug)?; // SIGKILL
        let _ = server.0.wait();
    }
    let mut l = Load {
        ok: 0,
        errors: 0,
        latencies_ms: vec![],
        elapsed: 0.0,
    };
    for h in handles {
        let (ok, err, lat) = rt.block_on(h).map_err(bug)?;
        l.ok += ok;
        l.errors += err;
        l.latencies_ms.extend(lat);
    }
    l.elapsed = start.elapsed().as_secs_f64();
    l.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(l)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn register(url: &str, dir: &std::path::Path, id: &str) -> Result<(), Error> {
    let token = std::fs::read_to_string(dir.join("admin.token")).map_err(bug)?;
    blindfold_broker::client::AdminClient::new(url, &token, None, true)
        .map_err(bug)?
        .register(&blindfold_broker::Registration {
            dataset_id: id.into(),
            key: STANDARD.encode([9u8; 32]),
            manifest_sha256: "cd".repeat(32),
            version: 1,
            policy: "tee = [\"sample\"]\n".into(),
        })
        .map_err(bug)
}

fn audit_counts(dir: &std::path::Path) -> Result<(u64, u64, bool), Error> {
    let c = rusqlite::Connection::open(dir.join("broker.db")).map_err(bug)?;
    let entries = blindfold_broker::audit::entries(&c).map_err(bug)?;
    let granted = entries
        .iter()
        .filter(|e| e.event == "release" && e.outcome == "granted")
        .count() as u64;
    let key = blindfold_broker::audit_key(dir).map_err(bug)?;
    let ok = blindfold_broker::audit::verify(&c, &key)
        .map_err(bug)?
        .is_ok();
    Ok((entries.len() as u64, granted, ok))
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(bug)?
        .local_addr()
        .map_err(bug)?
        .port())
}

/// Runs both phases; returns the final JSON object.
pub fn run(clients: usize, seconds: f64, log: &mut dyn FnMut(&str)) -> Result<Value, Error> {
    let id = "b1".repeat(16);
    // Phase 1: steady load.
    let d1 = tempfile::tempdir().map_err(bug)?;
    blindfold_broker::init(d1.path(), &[]).map_err(bug)?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let server = start(d1.path(), port)?;
    register(&url, d1.path(), &id)?;
    log(&format!(
        "phase 1: {clients} clients for {seconds} s against {url}"
    ));
    let l = load(&url, &id, clients, seconds, None)?;
    drop(server);
    let (written, granted, chain_ok) = audit_counts(d1.path())?;
    let expected = 1 + 2 * l.ok;
    log(&format!(
        "phase 1: {} releases in {:.1} s, {} errors, audit {written}/{expected} entries, {granted} grants, chain {}",
        l.ok,
        l.elapsed,
        l.errors,
        if chain_ok { "intact" } else { "BROKEN" }
    ));
    // Phase 2: SIGKILL half-way, restart, check.
    let d2 = tempfile::tempdir().map_err(bug)?;
    blindfold_broker::init(d2.path(), &[]).map_err(bug)?;
    let port2 = free_port()?;
    let url2 = format!("http://127.0.0.1:{port2}");
    let mut s2 = start(d2.path(), port2)?;
    register(&url2, d2.path(), &id)?;
    let k = load(&url2, &id, clients, seconds, Some((seconds / 2.0, &mut s2)))?;
    let restarted = start(d2.path(), port2)?;
    let (_, granted2, chain2) = audit_counts(d2.path())?;
    drop(restarted);
    let kill = json!({"acknowledged": k.ok, "granted_in_log": granted2, "chain_ok": chain2, "lost": k.ok.saturating_sub(granted2)});
    log(&format!(
        "phase 2 (SIGKILL at {:.1} s, restart): {} releases acknowledged, {} grants in the log after restart ({} lost), chain {}",
        seconds / 2.0,
        k.ok,
        granted2,
        k.ok.saturating_sub(granted2),
        if chain2 { "intact" } else { "BROKEN" }
    ));
    Ok(json!({
        "releases_per_s": l.ok as f64 / l.elapsed,
        "p50_ms": pct(&l.latencies_ms, 0.50),
        "p99_ms": pct(&l.latencies_ms, 0.99),
        "errors": l.errors,
        "audit_expected": expected,
        "audit_written": written,
        "audit_chain_ok": chain_ok,
        "sigkill": kill,
        "clients": clients,
        "seconds": seconds,
    }))
}
