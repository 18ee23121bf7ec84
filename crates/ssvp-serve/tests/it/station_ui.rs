//! The station's UI in a real browser: Debian's headless Chromium driven over the DevTools
//! protocol (`headless_chrome`), against a server on a loopback port that runs a station over a
//! tiny seeded references detector. Each test does what a person at the line does and asserts
//! what that person sees (the DOM, read through the `data-testid`s of the page):
//!
//! - [`an_operator_inspects_tunes_and_corrects_the_station`]: parts uploaded from the page and
//!   one from the line, pushed live; a part marked defective; the threshold tried on the
//!   histogram (the counts change in the browser, with no request) and applied; a false alarm
//!   marked good (the change list, the new bank version, GOOD) and undone; a don't-care
//!   rectangle drawn over a defect with the mouse (the part turns GOOD); the review table
//!   sorted, filtered and exported.
//! - [`a_station_with_an_api_key_asks_for_it`]: the page asks for the key, refuses a wrong
//!   one, loads the parts with the right one; the API without the key answers 401.
//!
//! Neither may log a JavaScript error or a Content-Security-Policy violation, or show an error
//! toast. Chromium: `$SSVP_CHROMIUM`, else `/usr/bin/chromium` (Debian's `chromium` package);
//! without it the tests fail, unless `SSVP_SKIP_BROWSER_TESTS=1`. Screenshots of every view are
//! written to `target/station-screenshots/`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::browser::tab::point::Point;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Browser as Cdp, Input, Page as Cdpage};
use headless_chrome::{Browser, LaunchOptions, Tab};
use image::RgbImage;
use serde_json::{json, Value};
use ssvp_detect::calibrate::NormalScore;
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_detect::{Calibration, Detector, DontCare, InputImage};
use ssvp_serve::{ServeOptions, StationSetup};

use crate::common::{self, part, png, Running};

/// The longest wait for anything the page shows.
const WAIT: Duration = Duration::from_secs(20);

/// The API key of the second test.
const KEY: &str = "station-key-3f9a";

// ------------------------------------------------------------------------------ the browser

/// The Chromium to drive, or `None` when the browser tests are skipped.
fn chromium() -> Option<PathBuf> {
    if std::env::var("SSVP_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("station UI browser test skipped: SSVP_SKIP_BROWSER_TESTS=1");
        return None;
    }
    let path = std::env::var_os("SSVP_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "the station UI tests need Chromium and found none at {}: install Debian's `chromium` \
         package (`apt-get install chromium`), or point SSVP_CHROMIUM at a Chromium binary, or \
         set SSVP_SKIP_BROWSER_TESTS=1 to skip these tests",
        path.display()
    );
    Some(path)
}

/// `target/station-screenshots/`, created.
fn screenshot_dir() -> PathBuf {
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    // target/<profile>/deps/it-<hash>
    let from_exe = || {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.parent()?.to_path_buf())
    };
    let target = from_env
        .or_else(from_exe)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("station-screenshots");
    std::fs::create_dir_all(&dir).expect("creates the screenshot directory");
    dir
}

/// Installed before the page's own script (DevTools scripts are not subject to the page's
/// CSP): records errors, CSP violations and error toasts, and gives the test short DOM
/// helpers under `__t`.
const PROBE: &str = r#"
window.__errors = [];
window.__toasts = [];
window.addEventListener('error', (e) => {
  const t = e.target;
  if (t && t !== window && t.tagName) window.__errors.push(`resource failed: <${t.tagName.toLowerCase()}> ${t.src || t.href || ''}`);
  else window.__errors.push(`error: ${e.message} at ${e.filename}:${e.lineno}`);
}, true);
window.addEventListener('unhandledrejection', (e) => window.__errors.push(`unhandled rejection: ${e.reason && e.reason.stack || e.reason}`));
document.addEventListener('securitypolicyviolation', (e) => window.__errors.push(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`));
document.addEventListener('DOMContentLoaded', () => {
  const box = document.getElementById('toasts');
  if (!box) return;
  new MutationObserver((ms) => {
    for (const m of ms) for (const n of m.addedNodes) {
      if (n.nodeType === 1) window.__toasts.push({ kind: n.dataset.kind || '', text: n.textContent.replace(/×$/, '').trim() });
    }
  }).observe(box, { childList: true });
});
window.__t = {
  q: (id, root) => (root || document).querySelector(`[data-testid="${id}"]`),
  all: (id, root) => [...(root || document).querySelectorAll(`[data-testid="${id}"]`)],
  text: (id, root) => { const e = __t.q(id, root); return e ? e.textContent.trim() : null; },
  shown: (e) => !!e && !e.closest('[hidden]') && e.getClientRects().length > 0,
  card: (id) => document.querySelector(`[data-testid="live-card"][data-part-id="${id}"]`),
  imgReady: (e) => !!e && e.complete && e.naturalWidth > 0,
};
"#;

/// One Chromium with one tab on the station's page, and what its console said.
struct Page {
    tab: Arc<Tab>,
    base: String,
    shots: PathBuf,
    /// Exceptions, console errors and warnings, log entries of level warning or error.
    console: Arc<Mutex<Vec<String>>>,
    /// The browser last: it closes when the page is dropped.
    _browser: Browser,
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string is JSON")
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

impl Page {
    fn launch(chromium: PathBuf, base: String) -> Self {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(300))
            .args(vec![
                OsStr::new("--force-device-scale-factor=1"),
                OsStr::new("--lang=en-US"),
                OsStr::new("--no-default-browser-check"),
            ])
            .build()
            .expect("launch options");
        let browser = Browser::new(options).unwrap_or_else(|e| {
            panic!(
                "Chromium did not start ({e:#}); install Debian's `chromium` package, set \
                 SSVP_CHROMIUM, or SSVP_SKIP_BROWSER_TESTS=1"
            )
        });
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(WAIT);
        let console = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&console);
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let line = match event {
                Event::RuntimeExceptionThrown(e) => {
                    let d = &e.params.exception_details;
                    let what = d
                        .exception
                        .as_ref()
                        .and_then(|x| x.description.clone())
                        .unwrap_or_else(|| d.text.clone());
                    Some(format!(
                        "exception: {what} at {}:{}",
                        d.url.clone().unwrap_or_default(),
                        d.line_number
                    ))
                }
                Event::RuntimeConsoleAPICalled(e) => {
                    let kind = format!("{:?}", e.params.Type);
                    (kind == "Error" || kind == "Warning" || kind == "Assert").then(|| {
                        let args: Vec<String> = e
                            .params
                            .args
                            .iter()
                            .map(|a| {
                                a.value
                                    .as_ref()
                                    .map(|v| v.to_string())
                                    .or_else(|| a.description.clone())
                                    .unwrap_or_default()
                            })
                            .collect();
                        format!("console.{}: {}", kind.to_lowercase(), args.join(" "))
                    })
                }
                Event::LogEntryAdded(e) => {
                    let entry = &e.params.entry;
                    let level = format!("{:?}", entry.level);
                    (level == "Error" || level == "Warning").then(|| {
                        format!(
                            "log {:?} {}: {} {}",
                            entry.source,
                            level.to_lowercase(),
                            entry.text,
                            entry.url.clone().unwrap_or_default()
                        )
                    })
                }
                _ => None,
            };
            if let Some(line) = line {
                sink.lock().unwrap().push(line);
            }
        }))
        .expect("listens");
        tab.enable_runtime().expect("Runtime domain");
        tab.enable_log().expect("Log domain");
        tab.call_method(Cdpage::AddScriptToEvaluateOnNewDocument {
            source: PROBE.to_string(),
            world_name: None,
            include_command_line_api: None,
            run_immediately: None,
        })
        .expect("installs the probe");
        Self {
            tab,
            base,
            shots: screenshot_dir(),
            console,
            _browser: browser,
        }
    }

    /// Opens `hash` (`#/live`, …) on the station.
    fn open(&self, hash: &str) {
        self.tab
            .navigate_to(&format!("{}/{hash}", self.base))
            .and_then(|t| t.wait_until_navigated())
            .unwrap_or_else(|e| panic!("opening {hash}: {e:#}"));
    }

    /// The value of `expr` (awaited), through JSON; a JavaScript error fails the test.
    fn js(&self, expr: &str) -> Value {
        let code = format!(
            "(async () => {{ try {{ return JSON.stringify({{ ok: await ({expr}) }}); }} \
             catch (e) {{ return JSON.stringify({{ err: String(e && e.stack || e) }}); }} }})()"
        );
        let result = self
            .tab
            .evaluate(&code, true)
            .unwrap_or_else(|e| panic!("evaluating `{expr}`: {e:#}"));
        let text = result
            .value
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("`{expr}` gave no JSON: {result:?}"))
            .to_string();
        let v: Value = serde_json::from_str(&text).expect("JSON");
        if let Some(err) = v.get("err") {
            panic!("`{expr}` threw: {err}");
        }
        v.get("ok").cloned().unwrap_or(Value::Null)
    }

    /// Polls `expr` until it is truthy; answers its value. On a timeout: a screenshot
    /// `failed-*.png`, and a failure naming what was awaited, the last value and the errors.
    fn wait(&self, what: &str, expr: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.js(expr);
            if truthy(&v) {
                return v;
            }
            if started.elapsed() > WAIT {
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .take(60)
                    .collect();
                let shot = self.shot(&format!("failed-{name}.png"));
                panic!(
                    "waited {WAIT:?} for {what}: `{expr}` is {v}; page errors {}; console {:?}; \
                     screenshot {}",
                    self.js("[window.__errors, window.__toasts]"),
                    self.console.lock().unwrap(),
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Waits until `testid`'s text is `expected`.
    fn wait_text(&self, testid: &str, expected: &str) {
        self.wait(
            &format!("`{testid}` to read `{expected}`"),
            &format!("__t.text({}) === {}", js_str(testid), js_str(expected)),
        );
    }

    fn text(&self, testid: &str) -> String {
        match self.js(&format!("__t.text({})", js_str(testid))) {
            Value::String(s) => s,
            other => panic!("no `{testid}` on the page ({other})"),
        }
    }

    /// Clicks the element `element` (a JavaScript expression) with the mouse, once it is
    /// shown, enabled, and on top at its centre (a person could click it).
    fn click(&self, what: &str, element: &str) {
        let at = self.wait(
            &format!("{what} to be clickable"),
            &format!(
                "(() => {{ const e = {element}; if (!__t.shown(e) || e.disabled) return null; \
                 e.scrollIntoView({{ block: 'center', inline: 'center' }}); \
                 const r = e.getBoundingClientRect(); const x = r.left + r.width / 2; \
                 const y = r.top + r.height / 2; const top = document.elementFromPoint(x, y); \
                 return top && (top === e || e.contains(top)) ? {{ x, y }} : null; }})()"
            ),
        );
        let point = Point {
            x: at["x"].as_f64().unwrap(),
            y: at["y"].as_f64().unwrap(),
        };
        self.tab
            .click_point(point)
            .unwrap_or_else(|e| panic!("clicking {what}: {e:#}"));
    }

    fn click_id(&self, testid: &str) {
        self.click(
            &format!("`{testid}`"),
            &format!("__t.q({})", js_str(testid)),
        );
    }

    /// Fills the who/why dialog and confirms it.
    fn confirm(&self, who: &str, why: &str) {
        self.wait("the who/why dialog", "__t.q('whowhy-dialog').open");
        self.js(&format!(
            "(() => {{ for (const [id, v] of [['whowhy-who', {}], ['whowhy-why', {}]]) {{ \
             const e = __t.q(id); e.value = v; e.dispatchEvent(new Event('input', {{ bubbles: true }})); }} \
             return true; }})()",
            js_str(who),
            js_str(why)
        ));
        self.click_id("whowhy-submit");
        self.wait(
            "the who/why dialog to close",
            "!__t.q('whowhy-dialog').open",
        );
    }

    /// Sets a form control's value as a person would (an `input` and a `change` event).
    fn set_value(&self, testid: &str, value: &str) {
        self.js(&format!(
            "(() => {{ const e = __t.q({}); e.value = {}; \
             e.dispatchEvent(new Event('input', {{ bubbles: true }})); \
             e.dispatchEvent(new Event('change', {{ bubbles: true }})); return true; }})()",
            js_str(testid),
            js_str(value)
        ));
    }

    /// A PNG of the whole page (beyond the window when it is longer) in the screenshot folder.
    fn shot(&self, name: &str) -> PathBuf {
        // From the top, so the sticky bar is where a person sees it.
        let size = self.js(
            "(scrollTo(0, 0), { w: document.documentElement.clientWidth, \
               h: Math.min(3000, document.documentElement.scrollHeight) })",
        );
        let clip = Cdpage::Viewport {
            x: 0.0,
            y: 0.0,
            width: size["w"].as_f64().unwrap_or(1280.0),
            height: size["h"].as_f64().unwrap_or(900.0),
            scale: 1.0,
        };
        let data = self
            .tab
            .call_method(Cdpage::CaptureScreenshot {
                format: Some(Cdpage::CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: Some(clip),
                from_surface: Some(true),
                capture_beyond_viewport: Some(true),
                optimize_for_speed: None,
            })
            .expect("a screenshot")
            .data;
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 PNG");
        let path = self.shots.join(name);
        std::fs::write(&path, bytes).expect("writes the screenshot");
        path
    }

    /// A real mouse drag (pressed, moved in steps, released) between two viewport points.
    fn drag(&self, from: (f64, f64), to: (f64, f64)) {
        use Input::DispatchMouseEventTypeOption::{MouseMoved, MousePressed, MouseReleased};
        let send = |kind, (x, y): (f64, f64), button, buttons| {
            self.tab
                .call_method(Input::DispatchMouseEvent {
                    Type: kind,
                    x,
                    y,
                    modifiers: None,
                    timestamp: None,
                    button: Some(button),
                    buttons: Some(buttons),
                    click_count: Some(1),
                    force: None,
                    tangential_pressure: None,
                    tilt_x: None,
                    tilt_y: None,
                    twist: None,
                    delta_x: None,
                    delta_y: None,
                    pointer_Type: None,
                })
                .expect("a mouse event");
        };
        send(MouseMoved, from, Input::MouseButton::None, 0);
        send(MousePressed, from, Input::MouseButton::Left, 1);
        for i in 1..=8 {
            let f = f64::from(i) / 8.0;
            let p = (from.0 + (to.0 - from.0) * f, from.1 + (to.1 - from.1) * f);
            send(MouseMoved, p, Input::MouseButton::Left, 1);
        }
        send(MouseReleased, to, Input::MouseButton::Left, 0);
    }

    /// Fails on any JavaScript error, CSP violation, error toast or console error/warning
    /// (except lines `allowed` accepts).
    fn assert_clean(&self, allowed: impl Fn(&str) -> bool) {
        let page = self.js("[window.__errors, window.__toasts.filter((t) => t.kind === 'error')]");
        assert_eq!(
            page,
            json!([[], []]),
            "the page logged errors or showed error toasts"
        );
        let console: Vec<String> = self
            .console
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !allowed(l))
            .cloned()
            .collect();
        assert!(
            console.is_empty(),
            "the browser's console has errors: {console:#?}"
        );
    }
}

// ------------------------------------------------------------------------------ the station

/// A server with a station on a loopback port, on its own runtime (the browser is driven from
/// the test's thread).
struct Station {
    running: Running,
    rt: tokio::runtime::Runtime,
    base: String,
    _dirs: Vec<tempfile::TempDir>,
}

fn input(name: &str, bytes: &[u8]) -> InputImage {
    decode_image(bytes, name, &DecodeOptions::default()).expect("decodes")
}

/// The references detector of the tests (4 good parts) and its calibration on 16 other good
/// parts (target false-alarm rate 0.1).
fn detector() -> (Detector, Calibration, tempfile::TempDir) {
    let refs = tempfile::tempdir().unwrap();
    let detector = common::references_detector(refs.path(), common::options());
    let goods: Vec<InputImage> = (200..216)
        .map(|s| input(&format!("cal{s}.png"), &png(&part(s, false))))
        .collect();
    let normal: Vec<NormalScore> = detector
        .detect(&goods)
        .expect("scores")
        .iter()
        .map(NormalScore::of)
        .collect();
    let calibration = Calibration::fit(
        &normal,
        0.1,
        0.0,
        0,
        detector.identity().clone(),
        detector.settings(),
    )
    .expect("calibrates");
    (detector, calibration, refs)
}

impl Station {
    fn start(detector: Detector, api_key: Option<&str>, mut dirs: Vec<tempfile::TempDir>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = ServeOptions {
            api_key: api_key.map(str::to_string),
            drain_delay: Duration::from_millis(10),
            shutdown_timeout: Duration::from_secs(5),
            station: Some(StationSetup {
                dir: dir.path().join("station"),
                watch: None,
                options: Default::default(),
            }),
            ..ServeOptions::default()
        };
        dirs.push(dir);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(common::spawn(detector, options));
        let base = format!("http://{}", running.addr);
        Self {
            running,
            rt,
            base,
            _dirs: dirs,
        }
    }

    /// One request to the station's API; answers the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let answer = self
            .rt
            .block_on(common::http(
                self.running.addr,
                method,
                path,
                &headers,
                body,
            ))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (answer.status, answer.body)
    }

    /// `GET path` as JSON (200 required).
    fn get(&self, path: &str, key: Option<&str>) -> Value {
        let (status, body) = self.request("GET", path, key, &[], &[]);
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        common::json(&body)
    }

    /// Uploads an image as the line would (a raw body, no browser): the part.
    fn upload(&self, name: &str, bytes: &[u8], key: Option<&str>) -> Value {
        let (status, body) = self.request(
            "POST",
            &format!("/station/api/parts?name={name}"),
            key,
            &[("Content-Type", "image/png")],
            bytes,
        );
        assert_eq!(
            status,
            200,
            "upload {name}: {}",
            String::from_utf8_lossy(&body)
        );
        common::json(&body)
    }

    fn stop(mut self) {
        if let Some(stop) = self.running.stop.take() {
            let _ = stop.send(());
        }
        let done = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), &mut self.running.done).await
        });
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "the server stopped badly: {done:?}"
        );
    }
}

/// A part under brighter light: good, but unlike the references (a false alarm).
fn bright(img: RgbImage) -> RgbImage {
    let mut img = img;
    for p in img.pixels_mut() {
        for c in &mut p.0 {
            *c = c.saturating_add(70);
        }
    }
    img
}

/// The scratch of `part(280, true)`: pixels x 20..38, y 20..24 of 96. The don't-care rectangle
/// drawn over it, image-normalised, with a margin.
const REGION: [f64; 4] = [12.0 / 96.0, 12.0 / 96.0, 46.0 / 96.0, 32.0 / 96.0];

fn region_polygon() -> Vec<(f64, f64)> {
    let [x0, y0, x1, y1] = REGION;
    vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
}

/// Scores (as the API reports them) by part name.
fn score_of(parts: &[Value], name: &str) -> f64 {
    parts
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["score"].as_f64())
        .unwrap_or_else(|| panic!("no part `{name}` in {parts:?}"))
}

fn id_of(parts: &[Value], name: &str) -> i64 {
    parts
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["id"].as_i64())
        .unwrap_or_else(|| panic!("no part `{name}`"))
}

/// `fmtPct` of the page: `12.5 %`.
fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// The number a score cell shows.
fn number(text: &str) -> f64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a number"))
}

// ------------------------------------------------------------------------------ the tests

#[test]
fn an_operator_inspects_tunes_and_corrects_the_station() {
    let Some(chromium) = chromium() else { return };
    let started = Instant::now();
    let gate = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _shared = gate.block_on(common::shared());

    // ---- the parts, and what the detector makes of a defect under a don't-care region
    let (detector, calibration, refs) = detector();
    let goods = [
        ("good-300.png", png(&part(300, false))),
        ("good-301.png", png(&part(301, false))),
        ("good-302.png", png(&part(302, false))),
    ];
    let false_alarm = ("bright-303.png", png(&bright(part(303, false))));
    let d1 = ("scratch-280.png", png(&part(280, true)));
    let d2 = ("scratch-279.png", png(&part(279, true)));
    let line = ("line-cam1-0007.png", png(&part(304, false)));
    let d1_masked = detector
        .clone()
        .with_dont_care(Some(DontCare::new(vec![region_polygon()]).unwrap()))
        .detect(&[input(d1.0, &d1.1)])
        .unwrap()[0]
        .score;
    let detector = detector.with_calibration(calibration).unwrap();
    let station = Station::start(detector, None, vec![refs]);
    let page = Page::launch(chromium, station.base.clone());

    // ---- 1. Live: upload from the page, one part from the line, pushed live
    page.open("#/live");
    page.wait(
        "the live connection",
        "__t.q('status-conn').dataset.state === 'live'",
    );
    page.wait("the empty live view", "__t.shown(__t.q('live-empty'))");
    let files = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, bytes) in goods.iter().chain([&false_alarm, &d1, &d2]) {
        let p = files.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        paths.push(p.to_string_lossy().into_owned());
    }
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    page.tab
        .find_element("[data-testid=upload-input]")
        .expect("the file input")
        .set_input_files(&paths)
        .expect("chooses the files");
    page.wait(
        "6 uploads done",
        "__t.all('upload-item').length === 6 && \
         __t.all('upload-item').every((e) => e.dataset.status === 'ok')",
    );
    page.wait("6 live cards", "__t.all('live-card').length === 6");
    // A part from the line, not from this page: only the event stream can show it.
    station.upload(line.0, &line.1, None);
    page.wait(
        "the line's part pushed live",
        &format!(
            "__t.all('card-name').some((e) => e.textContent === {})",
            js_str(line.0)
        ),
    );
    let parts = station.get("/station/api/parts?limit=500", None)["parts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts.len(), 7);
    // What each card shows is the server's decision.
    for p in &parts {
        let shown = page.js(&format!(
            "__t.card({}).querySelector('[data-testid=decision-badge]').textContent",
            p["id"]
        ));
        let expected = if p["anomalous"] == true {
            "DEFECT"
        } else {
            "GOOD"
        };
        assert_eq!(shown, expected, "the card of {}", p["name"]);
    }
    for name in [d1.0, d2.0] {
        let anomalous = parts.iter().find(|p| p["name"] == name).unwrap()["anomalous"].clone();
        assert_eq!(
            anomalous, true,
            "{name} is a defect at the calibrated threshold"
        );
    }
    page.wait("the counts", "__t.text('count-parts') === '7'");
    page.shot("live.png");

    let (f_id, d1_id, d2_id) = (
        id_of(&parts, false_alarm.0),
        id_of(&parts, d1.0),
        id_of(&parts, d2.0),
    );
    // The threshold the operator applies: the false alarm and both defects above it, the other
    // good parts (and the first defect once its scratch is hidden) below.
    let below = goods
        .iter()
        .chain([&line])
        .map(|(n, _)| score_of(&parts, n))
        .fold(d1_masked, f64::max);
    let above = [false_alarm.0, d1.0, d2.0]
        .iter()
        .map(|n| score_of(&parts, n))
        .fold(f64::INFINITY, f64::min);
    assert!(
        below < above * 0.97,
        "the scenario needs a gap between the good parts ({below}) and the false alarm and \
         defects ({above}); scores {parts:?}"
    );
    let threshold = (below + above) / 2.0;

    // ---- 1b. A defect, opened from its card, marked defective
    page.click(
        "the card of the second defect",
        &format!("__t.card({d2_id})"),
    );
    page.wait_text("part-name", d2.0);
    page.wait(
        "the part's image and map",
        "__t.imgReady(__t.q('part-image')) && __t.imgReady(__t.q('part-map'))",
    );
    page.wait_text("part-decision-big", "DEFECT");
    page.wait(
        "a detected region",
        "__t.all('detected-region-row').length > 0",
    );
    page.shot("part.png");
    page.click_id("mark-defective");
    page.confirm("ana", "scratch seen on the part");
    page.wait(
        "the part marked defective",
        "__t.q('part-feedback').dataset.feedback === 'defective'",
    );

    // ---- 2. Threshold: try values on the histogram, then apply one
    page.click_id("nav-threshold");
    page.wait("the slider", "!__t.q('threshold-slider').disabled");
    page.wait(
        "the calibration's bound in the legend",
        "(__t.text('calibration-bound') || '').startsWith('conformal bound of the calibration: ')",
    );
    let version_before = station.get("/station/api/state", None)["threshold"]["version"]
        .as_i64()
        .unwrap();
    page.wait_text("threshold-version", &format!("version {version_before}"));
    let scores = station.get("/station/api/scores", None);
    let all: Vec<f64> = scores["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let calib: Vec<f64> = scores["calibration_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let d2_score = score_of(&parts, d2.0);
    // Count fetches from now on: trying values must not ask the server.
    page.js("(() => { window.__fetches = 0; const f = window.fetch; \
         window.fetch = (...a) => { window.__fetches++; return f(...a); }; return true; })()");
    let lowest = all.iter().copied().fold(f64::INFINITY, f64::min);
    let range =
        page.js("[Number(__t.q('threshold-slider').min), Number(__t.q('threshold-slider').max)]");
    let (min, max) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
    assert!(
        min < lowest && d2_score < max,
        "the slider spans the scores: {range} {all:?}"
    );
    let mut seen = Vec::new();
    for t in [(min + lowest) / 2.0, threshold, (d2_score + max) / 2.0] {
        page.set_value("threshold-slider", &t.to_string());
        let flagged = all.iter().filter(|s| **s > t).count();
        let false_alarms = calib.iter().filter(|s| **s > t).count();
        let missed = usize::from(d2_score <= t);
        let expected = json!([
            flagged.to_string(),
            pct(false_alarms as f64 / calib.len() as f64),
            format!("{missed} of 1"),
        ]);
        let shown =
            page.js("['flagged-count', 'false-alarm-rate', 'misses'].map((id) => __t.text(id))");
        assert_eq!(shown, expected, "the counts at the trial threshold {t}");
        seen.push(shown);
    }
    assert_ne!(seen[0], seen[1], "moving the slider changes what is shown");
    assert_ne!(seen[1], seen[2], "moving the slider changes what is shown");
    assert_eq!(
        page.js("window.__fetches"),
        json!(0),
        "trying thresholds sent requests"
    );
    page.set_value("threshold-slider", &threshold.to_string());
    page.click_id("threshold-apply");
    page.confirm("ana", "the bright parts are fine");
    let version = version_before + 1;
    page.wait_text("threshold-version", &format!("version {version}"));
    page.wait(
        "the status line's new threshold",
        &format!("__t.text('status-threshold').startsWith('Threshold v{version} = ')"),
    );
    page.wait_text("threshold-who", "ana");
    page.wait_text("threshold-source", "operator");
    let applied = station.get("/station/api/state", None)["threshold"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (applied - threshold).abs() <= 1e-9 * threshold.abs(),
        "applied {applied}, slider {threshold}"
    );
    page.shot("threshold.png");

    // ---- 3. The false alarm: marked good, then undone
    page.click_id("nav-live");
    page.click("the false alarm's card", &format!("__t.card({f_id})"));
    page.wait_text("part-name", false_alarm.0);
    page.wait_text("part-decision-big", "DEFECT");
    let f_score = score_of(&parts, false_alarm.0);
    assert!(f_score > threshold);
    page.wait(
        "the part's image and map",
        "__t.imgReady(__t.q('part-image')) && __t.imgReady(__t.q('part-map'))",
    );
    page.wait_text("status-bank", "Bank v1 · 4 refs");
    page.click_id("mark-good");
    page.confirm("ana", "bright light, the part is fine");
    page.wait("the change list", "__t.shown(__t.q('changes-panel'))");
    page.wait_text("changes-bank", "new bank v2");
    let row = page.wait(
        "the false alarm in the change list",
        &format!(
            "(() => {{ const r = __t.all('change-row').find((e) => e.dataset.partId === '{f_id}'); \
             return r && [__t.q('change-before', r).dataset.decision, __t.q('change-after', r).dataset.decision]; }})()"
        ),
    );
    assert_eq!(row, json!(["defect", "good"]));
    let changes = station.get("/station/api/changes/2", None)["changes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        page.js("__t.all('change-row').length"),
        json!(changes),
        "the change list shows every change"
    );
    page.wait(
        "the new bank in the status line",
        "__t.text('status-bank').startsWith('Bank v2 · 5 refs')",
    );
    page.wait_text("part-decision-big", "GOOD");
    page.wait(
        "the part marked good",
        "__t.q('part-feedback').dataset.feedback === 'good'",
    );
    page.wait_text("part-in-bank", "yes (a reference)");
    let marked = number(&page.text("part-score"));
    assert!(
        marked < threshold,
        "a part marked good scores below the threshold: {marked} vs {threshold}"
    );
    page.shot("part-marked-good.png");
    page.click_id("undo-button");
    page.confirm("ana", "undo: checking the light first");
    page.wait_text("changes-bank", "bank v1");
    page.wait(
        "the status line's old bank",
        "__t.text('status-bank').startsWith('Bank v1 · 4 refs')",
    );
    // Undo puts bank version 1 back exactly, with the threshold in force just before the
    // undone change: the operator's Apply.
    let after_undo = station.get("/station/api/state", None)["threshold"].clone();
    assert_eq!(after_undo["version"], json!(version), "{after_undo}");
    assert_eq!(after_undo["value"].as_f64(), Some(applied));
    page.wait_text("part-decision-big", "DEFECT");
    page.wait(
        "the label undone",
        "__t.q('part-feedback').dataset.feedback === 'none'",
    );
    let restored = station.get(&format!("/station/api/parts/{f_id}"), None);
    assert_eq!(restored["anomalous"], true);
    let back = restored["score"].as_f64().unwrap();
    assert!(
        (back - f_score).abs() <= 1e-6 * f_score.abs(),
        "undo restores the score: {back} vs {f_score}"
    );
    assert_eq!(page.text("part-in-bank"), "no");
    page.shot("part-undone.png");

    // ---- 4. A don't-care rectangle drawn over the first defect
    page.js(&format!("(location.hash = '#/part/{d1_id}', true)"));
    page.wait_text("part-name", d1.0);
    page.wait_text("part-decision-big", "DEFECT");
    page.wait(
        "the part's image and map",
        "__t.imgReady(__t.q('part-image')) && __t.imgReady(__t.q('part-map'))",
    );
    page.click_id("region-mode-rect");
    page.wait(
        "the rectangle mode",
        "__t.q('region-canvas').dataset.mode === 'rect'",
    );
    let canvas = page.wait(
        "the canvas on screen",
        "(() => { const c = __t.q('region-canvas'); c.scrollIntoView({ block: 'center' }); \
         const r = c.getBoundingClientRect(); \
         return r.width > 100 && r.top >= 0 && r.bottom <= innerHeight && \
           { left: r.left, top: r.top, width: r.width, height: r.height }; })()",
    );
    let (left, top, width, height) = (
        canvas["left"].as_f64().unwrap(),
        canvas["top"].as_f64().unwrap(),
        canvas["width"].as_f64().unwrap(),
        canvas["height"].as_f64().unwrap(),
    );
    let at = |x: f64, y: f64| (left + x * width, top + y * height);
    let [x0, y0, x1, y1] = REGION;
    assert_eq!(
        page.js(&format!(
            "document.elementFromPoint({}, {}) === __t.q('region-canvas')",
            at(x0, y0).0,
            at(x0, y0).1
        )),
        json!(true),
        "the canvas is on top where the drag starts"
    );
    page.drag(at(x0, y0), at(x1, y1));
    page.wait(
        "the drawn rectangle in the list",
        "__t.all('region-item').length === 1 && __t.all('region-item')[0].dataset.saved === 'false'",
    );
    page.shot("regions.png");
    page.click_id("regions-save");
    page.confirm("ana", "the fixture's clamp sits there");
    page.wait(
        "the saved region",
        "__t.all('region-item').length === 1 && __t.all('region-item')[0].dataset.saved === 'true'",
    );
    page.wait(
        "the new bank in the status line",
        "__t.text('status-bank').startsWith('Bank v3')",
    );
    page.wait_text("part-decision-big", "GOOD");
    let state = station.get("/station/api/state", None);
    let regions = state["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 1, "one region: {state}");
    let drawn: Vec<(f64, f64)> = regions[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let xs = drawn.iter().map(|p| p.0);
    let ys = drawn.iter().map(|p| p.1);
    let (dx0, dx1) = (xs.clone().fold(1.0, f64::min), xs.fold(0.0, f64::max));
    let (dy0, dy1) = (ys.clone().fold(1.0, f64::min), ys.fold(0.0, f64::max));
    for (got, want) in [(dx0, x0), (dy0, y0), (dx1, x1), (dy1, y1)] {
        assert!(
            (got - want).abs() < 0.01,
            "the saved rectangle {drawn:?} is where it was drawn {REGION:?}"
        );
    }
    let d1_now = station.get(&format!("/station/api/parts/{d1_id}"), None);
    assert_eq!(
        d1_now["anomalous"], false,
        "the region hides the scratch: {d1_now}"
    );
    let d2_now = station.get(&format!("/station/api/parts/{d2_id}"), None);
    assert_eq!(
        d2_now["anomalous"], true,
        "a scratch elsewhere is still found"
    );

    // ---- 5. Review: every part, sorted by score, filtered, exported
    page.click_id("nav-review");
    page.wait(
        "every part in the table",
        "__t.all('review-row').length === 7",
    );
    assert_eq!(page.js("__t.q('pager-info').dataset.total"), json!("7"));
    page.click_id("sort-score");
    page.wait(
        "the rows sorted by score, highest first",
        "__t.q('sort-score').dataset.order === 'desc' && __t.all('review-row').length === 7 && \
         __t.all('cell-score').map((e) => Number(e.textContent)).every((v, i, a) => !i || a[i - 1] >= v)",
    );
    let first = page.js("__t.all('review-row')[0].dataset.partId");
    let now = station.get("/station/api/parts?limit=500", None)["parts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        first,
        json!(now
            .iter()
            .max_by(|a, b| a["score"]
                .as_f64()
                .partial_cmp(&b["score"].as_f64())
                .unwrap())
            .unwrap()["id"]
            .to_string()),
        "the highest score first"
    );
    page.click_id("sort-score");
    page.wait(
        "the rows sorted by score, lowest first",
        "__t.q('sort-score').dataset.order === 'asc' && __t.all('review-row').length === 7 && \
         __t.all('cell-score').map((e) => Number(e.textContent)).every((v, i, a) => !i || a[i - 1] <= v)",
    );
    page.shot("review.png");
    let flagged = station.get("/station/api/state", None)["counts"]["anomalous"]
        .as_i64()
        .unwrap();
    assert!(
        flagged >= 2,
        "the false alarm and the second defect are flagged"
    );
    page.set_value("filter-decision", "anomalous");
    page.wait(
        "only the flagged parts",
        &format!(
            "__t.all('review-row').length === {flagged} && \
             __t.all('cell-decision').every((e) => e.dataset.decision === 'defect')"
        ),
    );
    page.set_value("filter-decision", "");
    page.wait("every part again", "__t.all('review-row').length === 7");
    // By label, highest first: the part marked defective leads (the mark good was undone).
    page.click_id("sort-feedback");
    page.wait(
        "the part marked defective first",
        "__t.q('sort-feedback').dataset.order === 'desc' && __t.all('review-row').length === 7 && \
         __t.all('cell-feedback')[0].textContent.includes('defective')",
    );

    let downloads = tempfile::tempdir().unwrap();
    let path = downloads.path().to_string_lossy().into_owned();
    let allowed = page
        .tab
        .call_method(Cdp::SetDownloadBehavior {
            behavior: Cdp::SetDownloadBehaviorBehaviorOption::Allow,
            browser_context_id: None,
            download_path: Some(path.clone()),
            events_enabled: None,
        })
        .is_ok()
        || page
            .tab
            .call_method(Cdpage::SetDownloadBehavior {
                behavior: Cdpage::SetDownloadBehaviorBehaviorOption::Allow,
                download_path: Some(path),
            })
            .is_ok();
    page.click_id("export-csv");
    page.wait("the export done", "!__t.q('export-csv').disabled");
    let csv = if allowed {
        let started = Instant::now();
        loop {
            let done = std::fs::read_dir(downloads.path())
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "csv"));
            if let Some(p) = done {
                break std::fs::read_to_string(p).unwrap();
            }
            assert!(
                started.elapsed() < WAIT,
                "no CSV was downloaded into {}",
                downloads.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        eprintln!("downloads cannot be allowed in this Chromium: the export is fetched directly");
        let (status, body) = station.request("GET", "/station/api/export.csv", None, &[], &[]);
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,name,sha256,"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 7, "{csv}");
    for p in &parts {
        let prefix = format!("{},{},", p["id"], p["name"].as_str().unwrap());
        assert!(
            rows.iter().any(|r| r.starts_with(&prefix)),
            "{prefix} in the export:\n{csv}"
        );
    }

    page.assert_clean(|_| false);
    drop(page);
    station.stop();
    eprintln!(
        "station UI scenario: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshot_dir().display()
    );
}

#[test]
fn a_station_with_an_api_key_asks_for_it() {
    let Some(chromium) = chromium() else { return };
    let gate = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _shared = gate.block_on(common::shared());
    let (detector, _, refs) = detector();
    let station = Station::start(detector, Some(KEY), vec![refs]);
    for (i, seed) in [(1, 400), (2, 401)] {
        station.upload(
            &format!("keyed-{i}.png"),
            &png(&part(seed, false)),
            Some(KEY),
        );
    }
    // The API refuses a request without the key, or with a wrong one; the page loads without.
    let (status, _) = station.request("GET", "/station/api/state", None, &[], &[]);
    assert_eq!(status, 401);
    let (status, _) = station.request("GET", "/station/api/parts", Some("wrong"), &[], &[]);
    assert_eq!(status, 401);
    let (status, _) = station.request("GET", "/", None, &[], &[]);
    assert_eq!(status, 200);

    let page = Page::launch(chromium, station.base.clone());
    page.open("#/live");
    page.wait("the key dialog", "__t.q('key-dialog').open");
    assert!(page.text("key-dialog").contains("needs an API key"));
    assert_eq!(page.js("__t.all('live-card').length"), json!(0));
    page.set_value("key-input", "not-the-key");
    page.click_id("key-submit");
    page.wait(
        "the wrong key refused",
        "__t.q('key-dialog').open && __t.text('key-dialog').includes('was not accepted')",
    );
    page.shot("key.png");
    assert_eq!(page.js("__t.all('live-card').length"), json!(0));
    page.set_value("key-input", KEY);
    page.click_id("key-submit");
    page.wait("the key accepted", "!__t.q('key-dialog').open");
    page.wait("the parts", "__t.all('live-card').length === 2");
    page.wait(
        "the live connection",
        "__t.q('status-conn').dataset.state === 'live'",
    );
    page.wait(
        "the status line",
        "__t.text('status-bank').startsWith('Bank v1')",
    );
    // Refused requests are logged by the browser as failed loads; nothing else may be.
    page.assert_clean(|l| l.contains("401"));
    // The page's policy is in force, and the probe would have seen a violation: an inline
    // script is refused.
    page.js(
        "(document.body.append(Object.assign(document.createElement('script'), \
         { textContent: 'window.__inline = true' })), true)",
    );
    page.wait(
        "the inline script refused",
        "window.__errors.some((e) => e.startsWith('CSP violation: script-src'))",
    );
    assert_eq!(page.js("window.__inline === true"), json!(false));
    drop(page);
    station.stop();
}
