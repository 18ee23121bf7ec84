//! `ssvp fetch` against a fake Hugging Face hub on the loopback interface: the endpoints the
//! downloader uses (`HEAD`/`GET` of `/<repo>/resolve/<rev>/<file>`, the redirect of LFS files
//! to a CDN address with `Range` support), a download cut in the middle and resumed, a digest
//! mismatch, a gated repository; and the offline, no-network and `tiny` paths.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use super::common::stderr;

const COMMIT: &str = "c0ffee0000000000000000000000000000000001";
const REPO: &str = "facebook/dinov2-small";

/// Runs `ssvp` with a hermetic hub environment: the cache in `home`, no token, and the extra
/// variables given.
pub fn ssvp_hub(home: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssvp"));
    for var in [
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", home).envs(vars.iter().copied());
    cmd.args(args).output().expect("run ssvp")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One file the fake hub serves.
#[derive(Clone)]
struct HubFile {
    bytes: Vec<u8>,
    /// LFS files answer the `HEAD` with a redirect and `X-Linked-Etag` = their SHA-256.
    lfs: bool,
}

#[derive(Default)]
struct HubState {
    /// `repo/file` -> file.
    files: HashMap<String, HubFile>,
    /// Repositories that answer 401 GatedRepo.
    gated: Vec<String>,
    /// Cut the next body `GET` after this many bytes.
    cut_next_get_after: Option<usize>,
    /// The etag announced for LFS files differs from their content.
    wrong_digest: bool,
    /// `(method, path, Range header)` of every request.
    log: Vec<(String, String, Option<String>)>,
}

/// A fake hub on 127.0.0.1; dropped with the test (its thread ends with the process).
struct FakeHub {
    url: String,
    state: Arc<Mutex<HubState>>,
}

impl FakeHub {
    fn start(state: HubState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                let base = base.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state, &base);
                });
            }
        });
        Self { url, state }
    }

    fn gets(&self) -> Vec<(String, Option<String>)> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(m, _, _)| m == "GET")
            .map(|(_, p, r)| (p.clone(), r.clone()))
            .collect()
    }
}

fn sha256(bytes: &[u8]) -> String {
    ssvp_features::sha256_hex(bytes)
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn serve(mut stream: TcpStream, state: &Mutex<HubState>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut st = state.lock().unwrap();
    st.log.push((method.clone(), path.clone(), range.clone()));

    // The CDN: bytes by SHA-256, with Range.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = st.files.values().find(|f| sha256(&f.bytes) == sha).cloned();
        let Some(file) = file else {
            respond(&mut stream, "404 Not Found", &[], b"");
            return Ok(());
        };
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
            .unwrap_or(0);
        let total = file.bytes.len();
        let body = &file.bytes[start.min(total)..];
        let status = if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let headers = vec![
            ("Content-Length".to_string(), body.len().to_string()),
            (
                "Content-Range".to_string(),
                format!("bytes {start}-{}/{total}", total.saturating_sub(1)),
            ),
        ];
        if method == "GET" {
            if let Some(cut) = st.cut_next_get_after.take() {
                drop(st);
                // Announce the whole body, send part of it, hang up.
                respond(&mut stream, status, &headers, &body[..cut.min(body.len())]);
                return Ok(());
            }
        }
        drop(st);
        respond(
            &mut stream,
            status,
            &headers,
            if method == "GET" { body } else { b"" },
        );
        return Ok(());
    }

    // The hub: /<org>/<name>/resolve/<rev>/<file>.
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() < 5 || segs[2] != "resolve" {
        respond(&mut stream, "404 Not Found", &[], b"");
        return Ok(());
    }
    let repo = format!("{}/{}", segs[0], segs[1]);
    let file_name = segs[4];
    if st.gated.contains(&repo) {
        let headers = vec![
            ("X-Error-Code".to_string(), "GatedRepo".to_string()),
            ("Content-Length".to_string(), "0".to_string()),
        ];
        respond(&mut stream, "401 Unauthorized", &headers, b"");
        return Ok(());
    }
    let Some(file) = st.files.get(&format!("{repo}/{file_name}")).cloned() else {
        let headers = vec![
            ("X-Error-Code".to_string(), "EntryNotFound".to_string()),
            ("Content-Length".to_string(), "0".to_string()),
        ];
        respond(&mut stream, "404 Not Found", &headers, b"");
        return Ok(());
    };
    let mut headers = vec![("X-Repo-Commit".to_string(), COMMIT.to_string())];
    if file.lfs {
        let sha = sha256(&file.bytes);
        let announced = if st.wrong_digest {
            sha256(b"something else")
        } else {
            sha.clone()
        };
        headers.push(("X-Linked-Etag".into(), format!("\"{announced}\"")));
        headers.push(("X-Linked-Size".into(), file.bytes.len().to_string()));
        headers.push(("ETag".into(), "\"git-pointer-etag\"".into()));
        headers.push(("Location".into(), format!("{base}/cdn/{sha}")));
        headers.push(("Content-Length".into(), "0".into()));
        drop(st);
        respond(&mut stream, "302 Found", &headers, b"");
    } else {
        headers.push(("ETag".into(), format!("\"{:040x}\"", file.bytes.len())));
        // hf-hub's own client asks for `bytes=0-0` first and reads the size from Content-Range.
        let total = file.bytes.len();
        let (status, body) = match range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
        {
            Some((a, b)) => {
                let start = a.parse::<usize>().unwrap_or(0).min(total);
                let end = b.parse::<usize>().map_or(total, |e| (e + 1).min(total));
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{total}", end.saturating_sub(1)),
                ));
                ("206 Partial Content", &file.bytes[start..end.max(start)])
            }
            None => ("200 OK", &file.bytes[..]),
        };
        headers.push(("Content-Length".into(), body.len().to_string()));
        drop(st);
        respond(
            &mut stream,
            status,
            &headers,
            if method == "GET" { body } else { b"" },
        );
    }
    Ok(())
}

/// The tiny DINOv2 of the backbones' test fixtures when it is there (so that `doctor` can run
/// it), else a valid safetensors file of one tensor.
fn dinov2_files() -> (Vec<u8>, Vec<u8>, bool) {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ssvp-backbones/tests/fixtures/dinov2/s");
    match (
        std::fs::read(fixture.join("model.safetensors")),
        std::fs::read(fixture.join("config.json")),
    ) {
        (Ok(w), Ok(c)) => (w, c, true),
        _ => {
            let n = 50_000;
            let header = format!(
                r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
                4 * n
            );
            let mut w = (header.len() as u64).to_le_bytes().to_vec();
            w.extend(header.as_bytes());
            w.extend((0..4 * n).map(|i| (i % 251) as u8));
            (w, br#"{"model_type":"dinov2"}"#.to_vec(), false)
        }
    }
}

fn dinov2_hub() -> (FakeHub, Vec<u8>, bool) {
    let (weights, config, real) = dinov2_files();
    let mut state = HubState::default();
    state.files.insert(
        format!("{REPO}/model.safetensors"),
        HubFile {
            bytes: weights.clone(),
            lfs: true,
        },
    );
    state.files.insert(
        format!("{REPO}/config.json"),
        HubFile {
            bytes: config,
            lfs: false,
        },
    );
    (FakeHub::start(state), weights, real)
}

fn repo_dir(home: &Path) -> PathBuf {
    home.join("hub").join("models--facebook--dinov2-small")
}

#[test]
fn tiny_needs_nothing() {
    let home = tempfile::tempdir().unwrap();
    let out = ssvp_hub(home.path(), &[("HF_HUB_OFFLINE", "1")], &["fetch", "tiny"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("nothing to fetch"),
        "{}",
        stdout(&out)
    );
    assert!(!home.path().join("hub").exists());
}

#[test]
fn offline_nothing_can_be_fetched() {
    let home = tempfile::tempdir().unwrap();
    let out = ssvp_hub(
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        &["fetch", "anomalydino"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("nothing can be fetched"),
        "{err}"
    );
    // No preset named: the list of presets, not a download.
    let out = ssvp_hub(home.path(), &[], &["fetch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("anomalydino"), "{}", stderr(&out));
}

#[test]
fn without_a_network_it_says_the_hub_cannot_be_reached() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = ssvp_hub(
        home.path(),
        &[("HF_ENDPOINT", &endpoint)],
        &["fetch", "anomalydino", "paper"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach the hub"), "{err}");
    // Said once, not once per repository.
    assert_eq!(err.matches("cannot reach").count(), 1, "{err}");
}

#[test]
fn a_cut_download_resumes_and_the_cache_feeds_doctor() {
    let home = tempfile::tempdir().unwrap();
    let (hub, weights, real_model) = dinov2_hub();
    let half = weights.len() / 2;
    hub.state.lock().unwrap().cut_next_get_after = Some(half);
    let env = [("HF_ENDPOINT", hub.url.as_str())];

    // 1. The connection drops halfway: a failure that says to run again, the part kept.
    let out = ssvp_hub(home.path(), &env, &["fetch", "anomalydino"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("run the same command again"), "{err}");
    let blobs = repo_dir(home.path()).join("blobs");
    let partial = blobs.join(format!("{}.incomplete", sha256(&weights)));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half as u64);

    // Doctor sees the unfinished download and says to fetch again.
    let out = ssvp_hub(
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        &["doctor", "anomalydino", "--no-smoke"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("INCOMPLETE") && text.contains("unfinished download"),
        "{text}"
    );
    assert!(text.contains("ssvp fetch anomalydino"), "{text}");

    // 2. Run again: the download continues from the byte where it stopped.
    let out = ssvp_hub(home.path(), &env, &["fetch", "anomalydino"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("resumed at") && text.contains("sha256 ok"),
        "{text}"
    );
    let gets = hub.gets();
    let last_weights_get = gets
        .iter()
        .rev()
        .find(|(p, _)| p.starts_with("/cdn/"))
        .unwrap();
    assert_eq!(
        last_weights_get.1.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert!(!partial.exists());
    // The HF layout: refs/main -> commit, snapshot links -> blobs.
    let dir = repo_dir(home.path());
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = dir.join("snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(
        std::fs::symlink_metadata(snapshot.join("model.safetensors"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(snapshot.join("config.json").is_file());

    // 3. A third run finds everything cached and downloads nothing.
    let before = hub.gets().len();
    let out = ssvp_hub(home.path(), &env, &["fetch", "anomalydino", "--verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("already cached"), "{}", stdout(&out));
    assert_eq!(hub.gets().len(), before, "nothing is downloaded again");

    // 4. Doctor, offline: the preset is cached and complete, digests included.
    let mut args = vec!["doctor", "anomalydino", "--verify"];
    if !real_model {
        args.push("--no-smoke");
    }
    let out = ssvp_hub(home.path(), &[("HF_HUB_OFFLINE", "1")], &args);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("anomalydino"))
        .unwrap();
    assert!(row.contains("cached, verified"), "{row}");
    if real_model {
        // The tiny DINOv2 loaded from the cache offline and ran one image.
        assert!(row.contains(" ms") && row.ends_with("ok"), "{row}");
    }
    assert!(text.contains("PASS"), "{text}");
}

#[test]
fn a_digest_mismatch_is_refused_and_nothing_is_kept() {
    let home = tempfile::tempdir().unwrap();
    let (hub, weights, _) = dinov2_hub();
    hub.state.lock().unwrap().wrong_digest = true;
    let out = ssvp_hub(
        home.path(),
        &[("HF_ENDPOINT", hub.url.as_str())],
        &["fetch", "anomalydino"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("SHA-256") && err.contains(&sha256(&weights)),
        "{err}"
    );
    let blobs = repo_dir(home.path()).join("blobs");
    let left: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!repo_dir(home.path()).join("snapshots").exists());
}

#[test]
fn a_gated_repo_says_where_to_accept_the_licence_and_to_set_hf_token() {
    let home = tempfile::tempdir().unwrap();
    let repo = "facebook/dinov3-vits16-pretrain-lvd1689m";
    let hub = FakeHub::start(HubState {
        gated: vec![repo.to_string()],
        ..HubState::default()
    });
    let out = ssvp_hub(
        home.path(),
        &[("HF_ENDPOINT", hub.url.as_str())],
        &["fetch", "dinov3-s"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("gated"), "{err}");
    assert!(err.contains(&format!("{}/{repo}", hub.url)), "{err}");
    assert!(err.contains("export HF_TOKEN="), "{err}");
}

/// A sharded checkpoint named by its hub id: the loader fetches the index and then the shards
/// it lists (into the same snapshot), and the model runs (`ssvp embed`).
#[test]
fn a_sharded_checkpoint_is_fetched_with_its_shards() {
    let (weights, config, real) = dinov2_files();
    if !real {
        return; // the fixture is needed to run the model
    }
    // One shard holding every tensor of the fixture, and the index that names it.
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let shard = "model-00001-of-00001.safetensors";
    let weight_map: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), serde_json::Value::from(shard)))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    let mut state = HubState::default();
    for (file, bytes, lfs) in [
        (
            "model.safetensors.index.json",
            serde_json::to_vec(&index).unwrap(),
            false,
        ),
        (shard, weights.clone(), true),
        ("config.json", config, false),
    ] {
        state
            .files
            .insert(format!("{REPO}/{file}"), HubFile { bytes, lfs });
    }
    let hub = FakeHub::start(state);
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    super::common::synth(&work.path().join("data"), "disc", 2, 56, 0);
    let image = work.path().join("data/disc/train/good/000.png");
    let out_file = work.path().join("dinov2.safetensors");
    let out = ssvp_hub(
        home.path(),
        &[("HF_ENDPOINT", hub.url.as_str())],
        &[
            "embed",
            "--backbone",
            "dinov2",
            "--weights",
            REPO,
            "--image",
            super::common::s(&image),
            "--size",
            "56",
            "--out",
            super::common::s(&out_file),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_file.is_file());
    assert!(
        hub.gets().iter().any(|(p, _)| p.ends_with(shard)),
        "{:?}",
        hub.gets()
    );
}
