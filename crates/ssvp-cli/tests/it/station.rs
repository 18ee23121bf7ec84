//! The station as a process: SIGKILL at any moment (during uploads, during a feedback action
//! that rebuilds the bank) loses no acknowledged part or feedback and never leaves a half bank
//! version, and a restart resumes the same state; `ssvp detect --station` decides as the
//! station does.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fails_with, ok, records, s, ssvp};
use serde_json::{json, Value};

use crate::serve::{request, start, Server};

/// The demo's tiny bank, calibration and parts (made once per test).
fn demo(dir: &Path) -> PathBuf {
    let out = dir.join("demo");
    ok(&ssvp(&["demo", "--out", s(&out)]));
    out
}

fn station_args<'a>(
    demo: &'a Path,
    station: &'a Path,
    bank: &'a str,
    cal: &'a str,
) -> Vec<&'a str> {
    let _ = demo;
    vec![
        "--bank",
        bank,
        "--calibration",
        cal,
        "--station",
        s(station),
    ]
}

fn parts(demo: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["good", "hole", "stain", "crack", "color_spot"] {
        let dir = demo.join("parts/today").join(sub);
        let mut here: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        here.sort();
        files.extend(here);
    }
    files
}

/// One request that may fail (the server is being killed): `None` when no full answer came.
fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = String::from_utf8_lossy(raw.get(9..12)?).parse().ok()?;
    let body = raw[end + 4..].to_vec();
    // A 200 whose body was cut is not an acknowledgement.
    if status == 200 && serde_json::from_slice::<Value>(&body).is_err() {
        return None;
    }
    Some((status, body))
}

fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = request(server.addr, "GET", path, "", &[]);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn kill(server: Server) {
    // Drop sends SIGKILL and reaps the process.
    drop(server);
}

#[test]
fn a_killed_station_loses_no_acknowledged_part_or_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo(dir.path());
    let station = dir.path().join("station");
    let (bank, cal) = (demo.join("bank.safetensors"), demo.join("calibration.json"));
    let args = station_args(&demo, &station, s(&bank), s(&cal));
    let files = parts(&demo);

    // Uploads from two clients, killed in the middle, three times over.
    let acknowledged: Arc<Mutex<Vec<Value>>> = Arc::default();
    for round in 0..3 {
        let server = start(&args);
        let addr = server.addr;
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let files = files.clone();
                let acknowledged = Arc::clone(&acknowledged);
                std::thread::spawn(move || {
                    for (i, f) in files.iter().enumerate().skip(w).step_by(2) {
                        let mut bytes = std::fs::read(f).unwrap();
                        // Distinct bytes per round: a new part each time (PNG ignores
                        // trailing bytes).
                        bytes.extend_from_slice(format!("round {round} {i}").as_bytes());
                        let path = format!("/station/api/parts?name=r{round}-{i}.png");
                        match try_request(addr, "POST", &path, "image/png", &bytes) {
                            Some((200, body)) => acknowledged
                                .lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap()),
                            Some(_) => {}
                            None => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + 100 * round));
        kill(server);
        for w in workers {
            w.join().unwrap();
        }
    }
    let server = start(&args);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "some uploads were acknowledged");
    println!(
        "{} uploads acknowledged before the kills",
        acknowledged.len()
    );
    let stored = get_json(&server, "/station/api/parts?limit=500");
    let stored = stored["parts"].as_array().unwrap();
    for a in &acknowledged {
        let found = stored
            .iter()
            .find(|p| p["id"] == a["id"])
            .unwrap_or_else(|| panic!("acknowledged part {} lost", a["id"]));
        assert_eq!(
            (found["name"].clone(), found["sha256"].clone()),
            (a["name"].clone(), a["sha256"].clone())
        );
        let (status, _) = request(
            server.addr,
            "GET",
            &format!("/station/api/parts/{}/image", a["id"]),
            "",
            &[],
        );
        assert_eq!(status, 200);
    }

    // Feedback killed at every moment of its bank rebuild: acknowledged marks survive; an
    // unacknowledged one is either all there (bank version, label, part in the bank) or not at
    // all.
    let mut server = server;
    let ids: Vec<i64> = stored.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    // How long one mark takes here, uninterrupted; the kills land across that span and after.
    let started = std::time::Instant::now();
    let body = json!({"label": "good", "who": "kill-test", "why": "timing"}).to_string();
    let path = format!("/station/api/parts/{}/feedback", ids[0]);
    let (status, _) = request(
        server.addr,
        "POST",
        &path,
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 200);
    let span = started.elapsed().as_millis() as u64;
    let mut marked = vec![ids[0]];
    let delays = [
        0,
        span / 8,
        span / 4,
        span / 2,
        3 * span / 4,
        7 * span / 8,
        2 * span,
    ];
    for (k, delay_ms) in delays.into_iter().enumerate() {
        let id = ids[k + 1];
        let before = get_json(&server, "/station/api/state")["bank"]["version"]
            .as_i64()
            .unwrap();
        let addr = server.addr;
        let mark = std::thread::spawn(move || {
            let body = json!({"label": "good", "who": "kill-test", "why": "round"}).to_string();
            try_request(
                addr,
                "POST",
                &format!("/station/api/parts/{id}/feedback"),
                "application/json",
                body.as_bytes(),
            )
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(server);
        let answer = mark.join().unwrap();
        server = start(&args);
        let state = get_json(&server, "/station/api/state");
        let version = state["bank"]["version"].as_i64().unwrap();
        let part = get_json(&server, &format!("/station/api/parts/{id}"));
        let acked = matches!(answer, Some((200, _)));
        if acked {
            marked.push(id);
        }
        let applied = version == before + 1;
        assert!(
            applied || version == before,
            "bank version {before} -> {version}"
        );
        assert!(
            !acked || applied,
            "an acknowledged mark was lost (part {id})"
        );
        assert_eq!(part["in_bank"], applied, "part {id}: a half bank version");
        assert_eq!(
            part["feedback"] == "good",
            applied,
            "part {id}: label without its version"
        );
        if applied && !acked {
            marked.push(id);
        }
        println!("mark killed after {delay_ms} ms: acknowledged {acked}, applied {applied}");
    }
    // Every mark that was applied is still there after one more restart.
    kill(server);
    let server = start(&args);
    for id in marked {
        let part = get_json(&server, &format!("/station/api/parts/{id}"));
        assert_eq!(
            (part["in_bank"].as_bool(), part["feedback"].as_str()),
            (Some(true), Some("good"))
        );
    }
}

#[test]
fn detect_decides_as_the_station_does() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo(dir.path());
    let station = dir.path().join("station");
    let (bank, cal) = (demo.join("bank.safetensors"), demo.join("calibration.json"));
    let args = station_args(&demo, &station, s(&bank), s(&cal));
    let part_file = demo.join("parts/today/good/006.png");
    {
        let server = start(&args);
        let bytes = std::fs::read(&part_file).unwrap();
        let (status, body) = request(
            server.addr,
            "POST",
            "/station/api/parts?name=p.png",
            "image/png",
            &bytes,
        );
        assert_eq!(status, 200);
        let part: Value = serde_json::from_slice(&body).unwrap();
        let score = part["score"].as_f64().unwrap();
        // A threshold just below it makes it a false alarm; then it is marked good.
        let body = json!({"value": score - 1e-6, "who": "ana", "why": "tight"}).to_string();
        let (status, _) = request(
            server.addr,
            "POST",
            "/station/api/threshold",
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 200);
        let body = json!({"label": "good", "who": "ana", "why": "fine"}).to_string();
        let path = format!("/station/api/parts/{}/feedback", part["id"]);
        let (status, answer) = request(
            server.addr,
            "POST",
            &path,
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    let out = dir.path().join("out");
    ok(&ssvp(&[
        "detect",
        "--bank",
        s(&bank),
        "--calibration",
        s(&cal),
        "--station",
        s(&station),
        "--out",
        s(&out),
        s(&part_file),
    ]));
    let record = &records(&out)[0]["detection"];
    assert!(record["score"].as_f64().unwrap() < 1e-3, "{record}");
    assert_eq!(record["anomalous"], false);
    let threshold = record["threshold"].as_f64().unwrap();
    let (_, state) = {
        let server = start(&args);
        request(server.addr, "GET", "/station/api/state", "", &[])
    };
    let state: Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(
        threshold,
        state["threshold"]["value"].as_f64().unwrap(),
        "the operator's threshold"
    );
    // Without a station there, detect says so.
    fails_with(
        &ssvp(&[
            "detect",
            "--bank",
            s(&bank),
            "--station",
            s(&dir.path().join("none")),
            "--out",
            s(&dir.path().join("o2")),
            s(&part_file),
        ]),
        "no station there",
    );
}

#[test]
fn bad_station_flags_are_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let missing = dir.path().join("no-such-folder");
    let bank = dir.path().join("missing.safetensors");
    fails_with(
        &ssvp(&["serve", "--bank", s(&bank), "--station", s(&file)]),
        "not a directory",
    );
    fails_with(
        &ssvp(&[
            "serve",
            "--bank",
            s(&bank),
            "--station",
            s(dir.path()),
            "--watch",
            s(&missing),
        ]),
        "--watch",
    );
    // --watch without a station has nowhere to store what it scores.
    fails_with(
        &ssvp(&["serve", "--bank", s(&bank), "--watch", s(dir.path())]),
        "--station",
    );
}
