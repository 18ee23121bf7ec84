//! `ssvp serve` as a process: it listens, loads, answers what `ssvp detect` writes for the same
//! images (bit for bit at one image per pass), exits 0 on SIGTERM after draining, and refuses
//! bad flags before listening.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{fails_with, ok, records, s, ssvp, synth};
use serde_json::Value;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ssvp serve ARGS --port 0 --log-format json` and waits for it to be ready.
pub(crate) fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssvp"))
        .arg("serve")
        .args(args)
        .args(["--port", "0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssvp serve");
    let (tx, log) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while addr.is_none() {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("ssvp serve said where it listens");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening"))
        {
            addr = v["addr"].as_str().map(|a| a.parse().unwrap());
        }
    }
    let server = Server {
        child,
        addr: addr.unwrap(),
        log,
    };
    while request(server.addr, "GET", "/readyz", "", &[]).0 != 200 {
        assert!(Instant::now() < deadline, "not ready in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// One request on a fresh connection; (status, body).
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full answer");
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    (status, raw[end + 4..].to_vec())
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn image_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn serve_answers_what_detect_writes_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, "disc", 6, 96, 9);
    let good = data.join("disc/train/good");
    let test = data.join("disc/test");
    let common_args = [
        "--backbones",
        "tiny",
        "--map-size",
        "96",
        "--batch-size",
        "1",
        "--normal",
        s(&good),
    ];

    let out = tmp.path().join("detect");
    let mut args = vec!["detect", "--out", s(&out), s(&test)];
    args.extend(common_args);
    ok(&ssvp(&args));
    let written: Vec<Value> = records(&out);

    let mut serve_args = vec!["--drain-delay", "0.2"];
    serve_args.extend(common_args);
    let mut server = start(&serve_args);
    for file in image_files(&test) {
        let bytes = std::fs::read(&file).unwrap();
        let (status, body) = request(server.addr, "POST", "/v1/detect", "image/png", &bytes);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let rel = file.strip_prefix(&test).unwrap();
        let record = written
            .iter()
            .find(|r| Path::new(r["path"].as_str().unwrap()).ends_with(rel))
            .unwrap_or_else(|| panic!("no record of {}", rel.display()));
        let d = &record["detection"];
        for field in [
            "score",
            "score_distance",
            "map_stats",
            "regions",
            "width",
            "height",
            "mode",
        ] {
            assert_eq!(answer[field], d[field], "{field} of {}", rel.display());
        }
    }
    let (status, body) = request(server.addr, "POST", "/v1/detect", "image/gif", b"GIF89a");
    assert_eq!(status, 415, "{}", String::from_utf8_lossy(&body));

    sigterm(&server.child);
    let status = wait_exit(&mut server.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = server.log.try_iter().collect();
    let messages: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m["message"] == "request" && m["route"] == "/v1/detect" && m["status"] == 200),
        "a request line: {log:?}"
    );
    assert!(messages.iter().any(|m| m["message"]
        .as_str()
        .is_some_and(|s| s.starts_with("shutting down"))));
    assert!(
        messages.iter().any(|m| m["message"] == "stopped"),
        "{log:?}"
    );
}

/// Ctrl-C starts the drain (readiness 503, still serving for --drain-delay); a second Ctrl-C
/// stops at once instead of waiting out a drain delay of a minute.
#[test]
fn a_second_ctrl_c_stops_the_drain_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synth(&data, "disc", 2, 64, 3);
    let good = data.join("disc/train/good");
    let mut server = start(&[
        "--backbones",
        "tiny",
        "--normal",
        s(&good),
        "--drain-delay",
        "60",
    ]);
    sigint(&server.child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(server.addr, "GET", "/readyz", "", &[]).0 != 503 {
        assert!(Instant::now() < deadline, "the drain did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still draining: alive, serving, not exited.
    assert_eq!(request(server.addr, "GET", "/healthz", "", &[]).0, 200);
    assert!(server.child.try_wait().unwrap().is_none());
    let second = Instant::now();
    sigint(&server.child);
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(second.elapsed() < Duration::from_secs(10));
    // Every line up to the end of the process's stderr.
    let mut log = Vec::new();
    while let Ok(line) = server.log.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    assert!(log.iter().any(|l| l.contains("second signal")), "{log:?}");
}

#[test]
fn serve_refuses_bad_flags_before_listening() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = ["serve", "--backbones", "tiny", "--port", "0"];
    let run = |extra: &[&str]| {
        let mut args = tiny.to_vec();
        args.extend(extra);
        ssvp(&args)
    };
    fails_with(&run(&["--mutual"]), "cannot score mutually");
    fails_with(&run(&[]), "nothing to score with");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&run(&["--normal", s(&empty)]), "no image");
    let key = tmp.path().join("key");
    std::fs::write(&key, "  \n").unwrap();
    fails_with(
        &run(&["--normal", s(&empty), "--api-key-file", s(&key)]),
        "no image",
    );
    let good = tmp.path().join("good");
    synth(&good, "disc", 4, 64, 1);
    let refs = good.join("disc/train/good");
    fails_with(
        &run(&["--normal", s(&refs), "--api-key-file", s(&key)]),
        "API key is empty",
    );
    fails_with(
        &run(&[
            "--normal",
            s(&refs),
            "--api-key-file",
            s(&tmp.path().join("nope")),
        ]),
        "API key file",
    );
    fails_with(
        &run(&["--normal", s(&refs), "--model-name", "a/b"]),
        "model name",
    );
    fails_with(
        &run(&["--normal", s(&refs), "--request-timeout=-1"]),
        "--request-timeout",
    );
    fails_with(
        &run(&["--checkpoint", s(&tmp.path().join("no-run"))]),
        "no-run",
    );

    // The model flags are checked before the port is opened: on a port that is taken, a bad
    // flag is what the error names, not the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let on_taken_port = |extra: &[&str]| {
        let mut args = vec!["serve", "--backbones", "tiny", "--port", &port];
        args.extend(extra);
        ssvp(&args)
    };
    // Good flags: the port is what fails (so the port is really taken).
    fails_with(&on_taken_port(&["--normal", s(&refs)]), "cannot listen");
    let not_json = tmp.path().join("calibration.json");
    std::fs::write(&not_json, "{").unwrap();
    let bank = tmp.path().join("no.bank");
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "[backbones\n").unwrap();
    for (extra, needle) in [
        (vec!["--bank", s(&bank)], "the bank"),
        (
            vec!["--normal", s(&refs), "--calibration", s(&not_json)],
            "is not a calibration file",
        ),
        (
            vec!["--checkpoint", s(&tmp.path().join("no-run"))],
            "no-run",
        ),
        (
            vec!["--normal", s(&refs), "--config", s(&config)],
            "bad.toml",
        ),
    ] {
        let out = on_taken_port(&extra);
        fails_with(&out, needle);
        assert!(
            !common::stderr(&out).contains("cannot listen"),
            "{extra:?}: {}",
            common::stderr(&out)
        );
    }
    drop(taken);
    // The OpenAPI document is the committed one.
    let out = ssvp(&["serve", "--print-openapi"]);
    ok(&out);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap() == committed);
}
