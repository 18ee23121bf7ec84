//! `report.html`: the report of a run, one folder with the pictures it shows.
//!
//! It opens anywhere, offline: the style sheet and the one small script (table sorting) are
//! inline, text uses the system fonts, the histogram is inline SVG, and images are referenced
//! by relative URLs into `thumbs/` and `overlays/` beside the report, so the output directory
//! is copied or zipped as a whole. Nothing is fetched from the network. Opened without its
//! folders, the page still reads: the summary, histogram and table are in the file, and each
//! missing picture keeps its frame with its alt text (wrapped inside the frame) and a note
//! says where the pictures live.
//!
//! Sections: a summary of the run (counts, thresholds, calibration, model, settings, map colour
//! scale, time per image), a histogram of the raw scores, a sortable table of every image
//! (flagged first, then by score), and image cards (original and overlay side by side) for at
//! most [`MAX_CARDS`] scored images.
//!
//! Every text taken from the records or the run (paths, messages, names) is HTML-escaped, and
//! every file path is percent-encoded before it becomes a URL.

use std::cmp::Ordering;
use std::fmt::{self, Write};

use super::records::{Record, Status};
use super::RunInfo;
use crate::detection::{Detection, Timings};

/// Image cards are written for at most this many scored images (in the table's default order):
/// a run of thousands of images would otherwise make a page too heavy to scroll. The table
/// always lists every image.
pub const MAX_CARDS: usize = 500;

/// Histogram bins over the range of the scores.
const HIST_BINS: usize = 30;
/// Regions listed per image card; the rest are counted.
const MAX_CARD_REGIONS: usize = 10;

/// Decision colours: red-orange and blue stay distinguishable for the common colour-vision
/// deficiencies; grey for images without a decision.
const COLOR_FLAGGED: &str = "#e4572e";
const COLOR_OK: &str = "#4c78a8";
const COLOR_UNDECIDED: &str = "#9a9a9a";

/// Break points of matplotlib's `jet` ramps: sampling the colormap exactly there makes the CSS
/// gradient (linear between stops) the same piecewise-linear ramp the overlays are painted with.
const JET_STOPS: [f32; 12] = [
    0.0, 0.11, 0.125, 0.34, 0.35, 0.375, 0.64, 0.65, 0.66, 0.89, 0.91, 1.0,
];

/// `write!` into a `String`, which cannot fail.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        let _ = write!($dst, $($arg)*);
    }};
}

/// The HTML report of a run (it shows the pictures of `thumbs/` and `overlays/` beside it): `records` in any order (the report sorts them),
/// `info` the run's description, `title` the page's heading.
///
/// Image files are linked by the records' [`OutputFiles`](super::OutputFiles) paths, which
/// must be relative to the directory the report is written to.
pub fn render(records: &[Record], info: &RunInfo, title: &str) -> String {
    let rows = ordered_rows(records);
    let mut out = String::with_capacity(24 * 1024 + records.len() * 1200);
    head(&mut out, title);
    out.push_str("<body>\n<main>\n");
    w!(
        out,
        "<header>\n<h1>{}</h1>\n<p class=\"sub\">ssvp {} · {} image{}</p>\n\
         <nav><a href=\"#summary\">Summary</a> · <a href=\"#scores\">Scores</a> · \
         <a href=\"#table\">Images</a> · <a href=\"#cards\">Details</a></nav>\n</header>\n",
        Esc(title),
        Esc(&info.ssvp_version),
        rows.len(),
        plural(rows.len())
    );
    summary(&mut out, &rows, info);
    histogram(&mut out, &rows, info.threshold);
    table(&mut out, &rows);
    cards(&mut out, &rows);
    w!(
        out,
        "</main>\n<footer>Written by ssvp {}. This page loads its images from the \
         <code>thumbs/</code> and <code>overlays/</code> folders next to it and nothing from the \
         network.</footer>\n",
        Esc(&info.ssvp_version)
    );
    w!(out, "<script>\n{SORT_SCRIPT}</script>\n</body>\n</html>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Rows and their order

/// One record in the report's default order.
struct Row<'a> {
    /// Position in the default order: the anchors `row-{id}` and `img-{id}`.
    id: usize,
    rec: &'a Record,
    /// The detection of a scored image (`None` for a failed one).
    det: Option<&'a Detection>,
    /// Whether the image has a card.
    card: bool,
}

/// The decision of a scored image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    Flagged,
    Ok,
    Undecided,
}

impl Decision {
    fn of(det: &Detection) -> Self {
        match det.anomalous {
            Some(true) => Decision::Flagged,
            Some(false) => Decision::Ok,
            None => Decision::Undecided,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Decision::Flagged => "flagged",
            Decision::Ok => "ok",
            Decision::Undecided => "—",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Decision::Flagged => "flagged",
            Decision::Ok => "ok",
            Decision::Undecided => "undecided",
        }
    }
}

impl Row<'_> {
    fn decision(&self) -> Option<Decision> {
        self.det.map(Decision::of)
    }

    fn class(&self) -> &'static str {
        self.decision().map_or("failed", Decision::class)
    }

    /// The score to sort by: NaN is treated as missing so that it sorts last, not first.
    fn score(&self) -> Option<f64> {
        self.det.map(|d| d.score).filter(|s| !s.is_nan())
    }

    /// Error kind and message of an image that was not scored.
    fn error(&self) -> Option<(String, String)> {
        if self.det.is_some() {
            return None;
        }
        Some(match &self.rec.error {
            Some(e) => (kind_name(e.kind), e.message.clone()),
            None if self.rec.status == Status::Error => {
                ("error".into(), "no error message was recorded".into())
            }
            None => ("missing".into(), "the record has no detection".into()),
        })
    }
}

/// The error kind as it is spelled in the JSON records (`invalid_input`, ...).
fn kind_name(kind: crate::error::ErrorKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{kind:?}"),
    }
}

/// The records flagged first, then by score, highest first, failed images last (ties keep the
/// input order): the images to look at come first, and the cards follow the same order.
fn ordered_rows(records: &[Record]) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = records
        .iter()
        .map(|rec| Row {
            id: 0,
            rec,
            det: rec.detection.as_ref().filter(|_| rec.status == Status::Ok),
            card: false,
        })
        .collect();
    rows.sort_by(|a, b| {
        let flagged = |r: &Row| r.decision() == Some(Decision::Flagged);
        flagged(b)
            .cmp(&flagged(a))
            .then_with(|| match (a.score(), b.score()) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
    });
    let mut carded = 0;
    for (id, row) in rows.iter_mut().enumerate() {
        row.id = id;
        if row.det.is_some() && carded < MAX_CARDS {
            row.card = true;
            carded += 1;
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Head, style, script

fn head(out: &mut String, title: &str) {
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"ssvp\">\n<title>{}</title>\n<style>\n{STYLE}",
        Esc(title)
    );
    w!(
        out,
        ".cbar-grad{{background:linear-gradient(to right,{})}}\n\
         .sw.flagged,.hist .flagged{{background:{COLOR_FLAGGED};fill:{COLOR_FLAGGED}}}\n\
         .sw.ok,.hist .ok{{background:{COLOR_OK};fill:{COLOR_OK}}}\n\
         .sw.undecided,.hist .undecided{{background:{COLOR_UNDECIDED};fill:{COLOR_UNDECIDED}}}\n\
         tr.flagged td:first-child,.card.flagged{{border-left-color:{COLOR_FLAGGED}}}\n\
         </style>\n</head>\n",
        jet_gradient()
    );
}

/// The CSS stops of the `jet` colour bar, from the same colormap the overlays use.
fn jet_gradient() -> String {
    JET_STOPS
        .iter()
        .map(|&t| {
            let [r, g, b] = ssvp_image::jet(t);
            format!("#{r:02x}{g:02x}{b:02x} {}%", fmt_g(f64::from(t) * 100.0, 4))
        })
        .collect::<Vec<_>>()
        .join(",")
}

const STYLE: &str = r#"*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;font-size:15px;line-height:1.45;color:#1d1f23;background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:16px 24px 32px}
header h1{margin:8px 0 0;font-size:1.6em;overflow-wrap:anywhere}
.sub{margin:2px 0 6px;color:#5b6068}
nav a,a{color:#1f5fa8}
h2{font-size:1.25em;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #d8dbe0}
h3{font-size:1em;margin:0 0 6px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.92em}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}
.panel{background:#fff;border:1px solid #d8dbe0;border-radius:6px;padding:10px 14px}
.panel dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
.panel dt{color:#5b6068}
.panel dd{margin:0;overflow-wrap:anywhere;font-variant-numeric:tabular-nums}
.counts{display:flex;flex-wrap:wrap;gap:8px 20px;margin:0;padding:0;list-style:none}
.counts b{display:block;font-size:1.5em;line-height:1.2}
.counts li{color:#5b6068}
.counts li b{color:#1d1f23}
.note{color:#5b6068;margin:6px 0}
.cbar{position:relative;margin:4px 0 2px}
.cbar-grad{height:14px;border:1px solid #888;border-radius:2px}
.cbar-ticks{display:flex;justify-content:space-between;font-size:.85em;color:#5b6068;font-variant-numeric:tabular-nums}
.cbar-mark{position:absolute;top:-3px;height:20px;border-left:2px solid #fff;outline:1px solid #000;margin-left:-1px}
.hist{display:block;width:100%;max-width:900px;height:auto;background:#fff;border:1px solid #d8dbe0;border-radius:6px}
.hist text{font-size:12px;fill:#3a3e45;font-family:inherit}
.hist .axis{stroke:#3a3e45;stroke-width:1}
.hist .grid{stroke:#e6e8ec;stroke-width:1}
.hist .threshold{stroke:#000;stroke-width:1.5;stroke-dasharray:5 3}
.hist text.thr{font-weight:600;fill:#000}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;margin:6px 0;padding:0;list-style:none;color:#3a3e45}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.tablewrap{overflow-x:auto;background:#fff;border:1px solid #d8dbe0;border-radius:6px}
table.sortable{border-collapse:collapse;width:100%;font-size:.93em}
table.sortable th,table.sortable td{padding:4px 8px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
table.sortable thead th{position:sticky;top:0;background:#eef0f3;z-index:1;white-space:nowrap}
table.sortable th button{font:inherit;font-weight:600;color:inherit;background:none;border:0;padding:0;cursor:pointer}
table.sortable th[aria-sort=ascending] button::after{content:" \25B2"}
table.sortable th[aria-sort=descending] button::after{content:" \25BC"}
table.sortable td:first-child{border-left:4px solid transparent;overflow-wrap:anywhere;min-width:16em}
table.sortable td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable tr.failed{background:#fdf3f2}
table.sortable tr:target{outline:2px solid #1f5fa8}
td.err{color:#8a1c10;overflow-wrap:anywhere;min-width:14em}
.kind{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;background:#f3d9d5;border-radius:3px;padding:0 4px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px}
.card{background:#fff;border:1px solid #d8dbe0;border-left:4px solid #d8dbe0;border-radius:6px;padding:10px 12px}
.card:target{outline:2px solid #1f5fa8}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px;margin-bottom:8px}
.pair figure{margin:0;min-width:0}
.pair img{display:block;width:100%;height:auto;background:#eceef1;border-radius:3px;overflow:hidden;overflow-wrap:anywhere;font-size:.8em;color:#5b6068}
.pair figcaption{font-size:.8em;color:#5b6068;text-align:center}
.noimg{display:flex;align-items:center;justify-content:center;width:100%;aspect-ratio:4/3;background:#eceef1;color:#7a7f87;border:1px dashed #b9bdc4;border-radius:3px;font-size:.9em}
.card .path{overflow-wrap:anywhere}
.card p{margin:2px 0}
.card ol{margin:4px 0 0;padding-left:1.6em;font-size:.9em;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:.85em;font-weight:600}
.badge.flagged{background:#c2410c}
.badge.ok{background:#3b6694}
.badge.undecided{background:#777}
footer{max-width:1280px;margin:0 auto;padding:12px 24px 24px;color:#5b6068;font-size:.85em}
"#;

/// Sorts the image table by the clicked column: numbers by the cell's `data-sort` value, text
/// by its content; empty cells last in either direction; numbers start descending (highest
/// score first), text ascending; a second click reverses. Ties keep the current order.
const SORT_SCRIPT: &str = r#"(function () {
  var table = document.getElementById("results");
  if (!table || !table.tHead || !table.tBodies.length) return;
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function key(row, col, num) {
    var cell = row.cells[col];
    if (!cell) return null;
    var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (v === "") return null;
    if (!num) return v;
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    var button = th.querySelector("button");
    if (!button) return;
    button.addEventListener("click", function () {
      var num = th.getAttribute("data-type") === "num";
      var now = th.getAttribute("aria-sort");
      var asc = now ? now === "descending" : !num;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.map.call(body.rows, function (r, i) {
        return { k: key(r, col, num), i: i, r: r };
      });
      rows.sort(function (a, b) {
        if (a.k === null || b.k === null) {
          return (a.k === null) - (b.k === null) || a.i - b.i;
        }
        var d = num ? a.k - b.k : a.k.localeCompare(b.k, undefined, { numeric: true, sensitivity: "base" });
        return (asc ? d : -d) || a.i - b.i;
      });
      var frag = document.createDocumentFragment();
      rows.forEach(function (x) { frag.appendChild(x.r); });
      body.appendChild(frag);
    });
  });
})();
"#;

// ---------------------------------------------------------------------------------------------
// Summary

fn summary(out: &mut String, rows: &[Row], info: &RunInfo) {
    let scored: Vec<&Detection> = rows.iter().filter_map(|r| r.det).collect();
    let count = |d: Decision| scored.iter().filter(|x| Decision::of(x) == d).count();
    let (flagged, ok, undecided) = (
        count(Decision::Flagged),
        count(Decision::Ok),
        count(Decision::Undecided),
    );
    out.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<div class=\"panels\">\n");

    // Counts.
    out.push_str("<div class=\"panel\">\n<h3>Images</h3>\n<ul class=\"counts\">\n");
    for (n, what) in [
        (rows.len(), "images"),
        (scored.len(), "scored"),
        (rows.len() - scored.len(), "failed"),
        (flagged, "flagged anomalous"),
        (ok, "not flagged"),
        (undecided, "not decided"),
    ] {
        w!(out, "<li><b>{n}</b>{what}</li>\n");
    }
    out.push_str("</ul>\n");
    if let Some(shard) = &info.shard {
        w!(
            out,
            "<p class=\"note\">Shard {} of a larger batch.</p>\n",
            Esc(shard)
        );
    }
    out.push_str("</div>\n");

    // Decision.
    out.push_str("<div class=\"panel\">\n<h3>Decision</h3>\n<dl>\n");
    dd(
        out,
        "threshold (raw score)",
        &info
            .threshold
            .map_or_else(|| "none: no decisions".to_string(), |t| fmt_g(t, 6)),
    );
    dd(out, "threshold from", &info.threshold_source);
    dd(
        out,
        "pixel threshold",
        &info.pixel_threshold.map_or_else(
            || "none: no regions".to_string(),
            |t| fmt_g(f64::from(t), 6),
        ),
    );
    if let Some(fpr) = info.target_fpr {
        dd(out, "target false-alarm rate", &fmt_pct(fpr));
    }
    if let Some(n) = info.calibration_images {
        dd(out, "calibration images", &format!("{n} normal"));
    }
    if let Some(fpr) = info.holdout_fpr {
        dd(out, "held-out false-alarm rate", &fmt_pct(fpr));
    }
    out.push_str("</dl>\n</div>\n");

    // Model and settings.
    let m = &info.model;
    let s = &info.settings;
    out.push_str("<div class=\"panel\">\n<h3>Model</h3>\n<dl>\n");
    dd(
        out,
        "checkpoint",
        if m.checkpoint.is_empty() {
            "(unnamed)"
        } else {
            &m.checkpoint
        },
    );
    w!(
        out,
        "<dt>head</dt><dd><code title=\"{}\">{}</code></dd>\n",
        Esc(&m.head),
        Esc(&short_digest(&m.head))
    );
    dd(out, "backbones", &m.backbone_names);
    w!(
        out,
        "<dt>backbones id</dt><dd><code title=\"{}\">{}</code></dd>\n",
        Esc(&m.backbones),
        Esc(&short_digest(&m.backbones))
    );
    dd(out, "class name", &s.class_name);
    dd(out, "map size", &format!("{0} × {0}", s.map_size));
    dd(
        out,
        "smoothing",
        &format!("Gaussian σ = {} px", fmt_g(s.postprocess.gaussian_sigma, 4)),
    );
    dd(
        out,
        "tiling",
        &s.tiling.map_or_else(
            || "off (images scored whole)".to_string(),
            |t| format!("{0} × {0} px tiles, ≥ {1} px overlap", t.size, t.overlap),
        ),
    );
    out.push_str("</dl>\n</div>\n");

    // Map colours.
    let [lo, hi] = info.map_scale;
    out.push_str("<div class=\"panel\">\n<h3>Map colours</h3>\n<div class=\"cbar\">");
    out.push_str("<div class=\"cbar-grad\" role=\"img\" aria-label=\"jet colour scale\"></div>");
    if let Some(t) = info.pixel_threshold {
        let u = (t - lo) / (hi - lo);
        if u.is_finite() && (0.0..=1.0).contains(&u) {
            w!(
                out,
                "<span class=\"cbar-mark\" style=\"left:{:.2}%\" title=\"pixel threshold {}\"></span>",
                u * 100.0,
                fmt_g(f64::from(t), 6)
            );
        }
    }
    w!(
        out,
        "</div>\n<div class=\"cbar-ticks\"><span>{}</span><span>{}</span><span>{}</span></div>\n",
        fmt_g(f64::from(lo), 4),
        fmt_g((f64::from(lo) + f64::from(hi)) / 2.0, 4),
        fmt_g(f64::from(hi), 4)
    );
    w!(
        out,
        "<p class=\"note\">Overlays colour map values on the fixed scale [{}, {}] \
         (values outside saturate), the same in every image{}.</p>\n",
        fmt_g(f64::from(lo), 6),
        fmt_g(f64::from(hi), 6),
        if info.pixel_threshold.is_some() {
            "; the mark is the pixel threshold, regions are outlined in white"
        } else {
            ""
        }
    );
    let other = rows
        .iter()
        .filter(|r| r.rec.map_scale.is_some_and(|s| s != info.map_scale))
        .count();
    if other > 0 {
        w!(
            out,
            "<p class=\"note\">{other} image{} used another scale (see their records).</p>\n",
            plural(other)
        );
    }
    out.push_str("</div>\n");

    // Timings.
    out.push_str("<div class=\"panel\">\n<h3>Time per image</h3>\n");
    if scored.is_empty() {
        out.push_str("<p class=\"note\">No image was scored.</p>\n");
    } else {
        let mut sum = Timings::default();
        for d in &scored {
            sum.add(&d.timings);
        }
        let n = scored.len() as f64;
        out.push_str("<dl>\n");
        for (stage, ms) in [
            ("decode", sum.decode_ms),
            ("preprocess", sum.preprocess_ms),
            ("backbones", sum.backbones_ms),
            ("head", sum.head_ms),
            ("postprocess", sum.postprocess_ms),
            ("regions", sum.regions_ms),
        ] {
            w!(out, "<dt>{stage}</dt><dd>{:.1} ms</dd>\n", ms / n);
        }
        w!(
            out,
            "<dt><b>total</b></dt><dd><b>{:.1} ms</b></dd>\n",
            sum.total_ms() / n
        );
        let tiles: usize = scored.iter().map(|d| d.tiles).sum();
        if tiles > scored.len() {
            w!(
                out,
                "<dt>tiles</dt><dd>{} per image</dd>\n",
                fmt_g(tiles as f64 / n, 3)
            );
        }
        out.push_str("</dl>\n");
        out.push_str(
            "<p class=\"note\">Means over the scored images; batched stages are shared \
             equally among the images of a batch.</p>\n",
        );
    }
    out.push_str("</div>\n</div>\n</section>\n");
}

/// One `<dt>`/`<dd>` pair, both escaped.
fn dd(out: &mut String, term: &str, value: &str) {
    w!(out, "<dt>{}</dt><dd>{}</dd>\n", Esc(term), Esc(value));
}

/// The first 12 characters of a digest: enough to tell models apart at a glance.
fn short_digest(digest: &str) -> String {
    if digest.is_empty() {
        return "(none)".into();
    }
    digest.chars().take(12).collect()
}

// ---------------------------------------------------------------------------------------------
// Histogram

/// Width, height and margins of the histogram's SVG canvas (user units).
const SVG_W: f64 = 760.0;
const SVG_H: f64 = 280.0;
const M_LEFT: f64 = 56.0;
const M_RIGHT: f64 = 20.0;
const M_TOP: f64 = 30.0;
const M_BOTTOM: f64 = 44.0;

/// One bar: `[x0, x1)` in score units and its counts per decision (flagged, ok, undecided).
struct Bin {
    x0: f64,
    x1: f64,
    counts: [usize; 3],
}

fn decision_slot(d: Decision) -> usize {
    match d {
        Decision::Flagged => 0,
        Decision::Ok => 1,
        Decision::Undecided => 2,
    }
}

/// The axis range and the bins of `scores`: `HIST_BINS` equal bins over `[min, max]`, or, when
/// every score is the same, one narrow bin in the middle of a small range around it (a range
/// of width zero has no scale).
fn bins(scores: &[(f64, Decision)]) -> (f64, f64, Vec<Bin>) {
    let min = scores.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let max = scores.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
    if max <= min {
        let pad = (min.abs() * 0.05).max(1e-3);
        let mut counts = [0; 3];
        for &(_, d) in scores {
            counts[decision_slot(d)] += 1;
        }
        let bin = Bin {
            x0: min - pad / 10.0,
            x1: min + pad / 10.0,
            counts,
        };
        return (min - pad, max + pad, vec![bin]);
    }
    let width = (max - min) / HIST_BINS as f64;
    let mut bins: Vec<Bin> = (0..HIST_BINS)
        .map(|i| Bin {
            x0: min + i as f64 * width,
            x1: if i + 1 == HIST_BINS {
                max
            } else {
                min + (i + 1) as f64 * width
            },
            counts: [0; 3],
        })
        .collect();
    for &(s, d) in scores {
        // The maximum falls on the last bin's closed right edge.
        let i = (((s - min) / (max - min)) * HIST_BINS as f64) as usize;
        bins[i.min(HIST_BINS - 1)].counts[decision_slot(d)] += 1;
    }
    (min, max, bins)
}

/// Evenly spaced "nice" tick values (steps of 1, 2 or 5 × 10^k) inside `[lo, hi]`, about
/// `target` of them, with the decimals that show the step exactly.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / target.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return (vec![lo], 3);
    }
    let mut k = raw.log10().floor() as i32;
    let base = 10f64.powi(k);
    let m = raw / base;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        k += 1;
        1.0
    };
    let step = nice * 10f64.powi(k);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // Multiplying the index (rather than accumulating the step) keeps 0.3 from being 0.30000004.
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    (ticks, (-k).max(0) as usize)
}

fn histogram(out: &mut String, rows: &[Row], threshold: Option<f64>) {
    out.push_str("<section id=\"scores\">\n<h2>Score distribution</h2>\n");
    let scored: Vec<(f64, Decision)> = rows
        .iter()
        .filter_map(|r| r.det)
        .map(|d| (d.score, Decision::of(d)))
        .collect();
    let finite: Vec<(f64, Decision)> = scored.iter().copied().filter(|s| s.0.is_finite()).collect();
    if finite.is_empty() {
        w!(
            out,
            "<p class=\"note\">No scores to show: {}.</p>\n</section>\n",
            if scored.is_empty() {
                "no image was scored"
            } else {
                "no image has a finite score"
            }
        );
        return;
    }
    let (lo, hi, bins) = bins(&finite);
    let pw = SVG_W - M_LEFT - M_RIGHT;
    let ph = SVG_H - M_TOP - M_BOTTOM;
    let x = |v: f64| M_LEFT + (v - lo) / (hi - lo) * pw;
    let max_count = bins
        .iter()
        .map(|b| b.counts.iter().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    // Whole-number count ticks, the top one at or above the tallest bar.
    let (y_ticks, _) = nice_ticks(0.0, max_count as f64, 4);
    let y_step = y_ticks.get(1).map_or(1.0, |t| t.round().max(1.0));
    let y_top = (max_count as f64 / y_step).ceil() * y_step;
    let y = |c: f64| M_TOP + ph - c / y_top * ph;

    w!(
        out,
        "<svg class=\"hist\" viewBox=\"0 0 {SVG_W} {SVG_H}\" role=\"img\" \
         aria-labelledby=\"hist-title\">\n<title id=\"hist-title\">Histogram of {} image \
         scores</title>\n",
        finite.len()
    );
    // Count axis: grid lines and labels.
    let mut c = 0.0;
    while c <= y_top + 1e-9 {
        let yy = y(c);
        w!(
            out,
            "<line class=\"grid\" x1=\"{M_LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{c}</text>\n",
            M_LEFT + pw,
            M_LEFT - 6.0,
            yy + 4.0
        );
        c += y_step;
    }
    // Bars, stacked bottom to top: not flagged, not decided, flagged.
    for b in &bins {
        let total: usize = b.counts.iter().sum();
        if total == 0 {
            continue;
        }
        let (x0, x1) = (x(b.x0), x(b.x1));
        let width = (x1 - x0 - 1.0).max(1.0);
        w!(
            out,
            "<g><title>[{}, {}]: {total} image{} ({} flagged, {} not flagged, {} not decided)\
             </title>",
            fmt_g(b.x0, 4),
            fmt_g(b.x1, 4),
            plural(total),
            b.counts[0],
            b.counts[1],
            b.counts[2]
        );
        let mut below = 0usize;
        for (slot, class) in [(1, "ok"), (2, "undecided"), (0, "flagged")] {
            let n = b.counts[slot];
            if n == 0 {
                continue;
            }
            let (top, bottom) = (y((below + n) as f64), y(below as f64));
            w!(
                out,
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{width:.1}\" \
                 height=\"{:.1}\"/>",
                x0 + 0.5,
                bottom - top
            );
            below += n;
        }
        out.push_str("</g>\n");
    }
    // Axes and score ticks.
    let base = M_TOP + ph;
    w!(
        out,
        "<line class=\"axis\" x1=\"{M_LEFT}\" x2=\"{:.1}\" y1=\"{base:.1}\" y2=\"{base:.1}\"/>\
         <line class=\"axis\" x1=\"{M_LEFT}\" x2=\"{M_LEFT}\" y1=\"{M_TOP}\" y2=\"{base:.1}\"/>\n",
        M_LEFT + pw
    );
    // Labels with the step's decimals (0.45, 0.50): as precise as the ticks are, never more.
    let (ticks, decimals) = nice_ticks(lo, hi, 6);
    for t in ticks {
        let xx = x(t);
        w!(
            out,
            "<line class=\"axis\" x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{base:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.decimals$}</text>\n",
            base + 5.0,
            base + 18.0
        );
    }
    w!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">raw score</text>\n\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">images</text>\n",
        M_LEFT + pw / 2.0,
        SVG_H - 6.0,
        M_TOP + ph / 2.0
    );
    // The threshold, clamped to the plot when it lies outside the scores.
    if let Some(t) = threshold.filter(|t| t.is_finite()) {
        let (at, note) = if t < lo {
            (lo, " (below all scores)")
        } else if t > hi {
            (hi, " (above all scores)")
        } else {
            (t, "")
        };
        let xx = x(at);
        let (anchor, dx) = if xx > M_LEFT + pw / 2.0 {
            ("end", -4.0)
        } else {
            ("start", 4.0)
        };
        w!(
            out,
            "<line class=\"threshold\" x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{base:.1}\"/>\
             <text class=\"thr\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">threshold {}{note}\
             </text>\n",
            M_TOP - 14.0,
            xx + dx,
            M_TOP - 4.0,
            fmt_g(t, 4)
        );
    }
    out.push_str("</svg>\n<ul class=\"legend\">");
    for (class, label, slot) in [
        ("flagged", "flagged", 0),
        ("ok", "not flagged", 1),
        ("undecided", "not decided", 2),
    ] {
        let n: usize = bins.iter().map(|b| b.counts[slot]).sum();
        w!(
            out,
            "<li><span class=\"sw {class}\"></span>{label} ({n})</li>"
        );
    }
    out.push_str("</ul>\n");
    if bins.len() == 1 {
        w!(
            out,
            "<p class=\"note\">All {} scores are equal ({}).</p>\n",
            finite.len(),
            fmt_g(finite[0].0, 6)
        );
    } else {
        w!(
            out,
            "<p class=\"note\">{} scores in {HIST_BINS} bins of width {} over [{}, {}].</p>\n",
            finite.len(),
            fmt_g((hi - lo) / HIST_BINS as f64, 3),
            fmt_g(lo, 6),
            fmt_g(hi, 6)
        );
    }
    if finite.len() < scored.len() {
        let n = scored.len() - finite.len();
        w!(
            out,
            "<p class=\"note\">{n} image{} with a non-finite score left out.</p>\n",
            plural(n)
        );
    }
    out.push_str("</section>\n");
}

// ---------------------------------------------------------------------------------------------
// Table

/// Columns of the image table: heading and whether it sorts numerically.
const COLUMNS: [(&str, bool); 10] = [
    ("path", false),
    ("score", true),
    ("calibrated", true),
    ("p-value", true),
    ("decision", true),
    ("regions", true),
    ("largest region (px)", true),
    ("map max", true),
    ("size", true),
    ("error", false),
];

fn table(out: &mut String, rows: &[Row]) {
    out.push_str("<section id=\"table\">\n<h2>Images</h2>\n");
    if rows.is_empty() {
        out.push_str("<p class=\"note\">The run has no images.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<p class=\"note\">Flagged images first, then by score. Click a column heading to sort \
         by it (needs JavaScript); click a path to see the image.</p>\n\
         <div class=\"tablewrap\">\n<table id=\"results\" class=\"sortable\">\n<thead><tr>",
    );
    for (name, num) in COLUMNS {
        w!(
            out,
            "<th scope=\"col\" data-type=\"{}\"><button type=\"button\">{name}</button></th>",
            if num { "num" } else { "text" }
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        table_row(out, row);
    }
    out.push_str("</tbody>\n</table>\n</div>\n</section>\n");
}

/// A numeric cell: shown as `text`, sorted by `value` (empty: sorts last).
fn num_cell(out: &mut String, value: Option<f64>, text: &str) {
    match value {
        Some(v) => w!(
            out,
            "<td class=\"num\" data-sort=\"{v}\">{}</td>",
            Esc(text)
        ),
        None => out.push_str("<td class=\"num\" data-sort=\"\"></td>"),
    }
}

fn table_row(out: &mut String, row: &Row) {
    let id = row.id;
    w!(out, "<tr id=\"row-{id}\" class=\"{}\">", row.class());
    if row.card {
        w!(
            out,
            "<td><a href=\"#img-{id}\">{}</a></td>",
            Esc(&row.rec.path)
        );
    } else {
        w!(out, "<td>{}</td>", Esc(&row.rec.path));
    }
    let d = row.det;
    let score = d.map(|d| d.score);
    num_cell(
        out,
        score,
        &score.map(|s| format!("{s:.4}")).unwrap_or_default(),
    );
    let cal = d.and_then(|d| d.calibrated_score);
    num_cell(
        out,
        cal,
        &cal.map(|s| format!("{s:.3}")).unwrap_or_default(),
    );
    let p = d.and_then(|d| d.p_value);
    num_cell(out, p, &p.map(|p| fmt_g(p, 3)).unwrap_or_default());
    match row.decision() {
        Some(dec) => {
            let rank = match dec {
                Decision::Flagged => 2.0,
                Decision::Ok => 1.0,
                Decision::Undecided => 0.0,
            };
            num_cell(out, Some(rank), dec.label());
        }
        None => num_cell(out, None, ""),
    }
    // Without a pixel threshold no regions were looked for: "0 regions" would be misleading.
    let regions = d
        .filter(|d| d.pixel_threshold.is_some())
        .map(|d| &d.regions);
    let n = regions.map(|r| r.len() as f64);
    num_cell(out, n, &n.map(|n| n.to_string()).unwrap_or_default());
    let largest = regions
        .and_then(|r| r.iter().map(|r| r.area).max())
        .map(|a| a as f64);
    num_cell(
        out,
        largest,
        &largest.map(|a| a.to_string()).unwrap_or_default(),
    );
    let map_max = d.map(|d| f64::from(d.map_stats.max));
    num_cell(
        out,
        map_max,
        &map_max.map(|m| format!("{m:.3}")).unwrap_or_default(),
    );
    let size = image_size(row);
    num_cell(
        out,
        size.map(|(w, h)| (w * h) as f64),
        &size.map(|(w, h)| format!("{w}×{h}")).unwrap_or_default(),
    );
    match row.error() {
        Some((kind, message)) => w!(
            out,
            "<td class=\"err\"><span class=\"kind\">{}</span> {}</td>",
            Esc(&kind),
            Esc(&message)
        ),
        None => out.push_str("<td></td>"),
    }
    out.push_str("</tr>\n");
}

/// The image's size: the scored size (after EXIF orientation), else the stored size of a file
/// that decoded its header but failed later.
fn image_size(row: &Row) -> Option<(usize, usize)> {
    row.det
        .map(|d| (d.width, d.height))
        .or_else(|| row.rec.source.as_ref().map(|s| (s.width, s.height)))
        .filter(|&(w, h)| w > 0 && h > 0)
}

// ---------------------------------------------------------------------------------------------
// Cards

fn cards(out: &mut String, rows: &[Row]) {
    out.push_str("<section id=\"cards\">\n<h2>Image details</h2>\n");
    let scored = rows.iter().filter(|r| r.det.is_some()).count();
    let shown = rows.iter().filter(|r| r.card).count();
    if scored == 0 {
        out.push_str("<p class=\"note\">No image was scored.</p>\n</section>\n");
        return;
    }
    if shown < scored {
        w!(
            out,
            "<p class=\"note\">Showing the first {shown} of {scored} scored images (flagged \
             first, then by score); the other {} are listed in the table only.</p>\n",
            scored - shown
        );
    }
    // The pictures are files beside the report: say so where they show, for a report.html
    // that travelled alone (its text, table and histogram are in the file itself).
    out.push_str(
        "<p class=\"note\">The pictures are the files in <code>thumbs/</code> and \
         <code>overlays/</code> beside this report (the maps in <code>maps/</code>): keep or \
         send the whole folder, not report.html alone.</p>\n",
    );
    out.push_str("<div class=\"cards\">\n");
    for row in rows.iter().filter(|r| r.card) {
        if let Some(det) = row.det {
            card(out, row, det);
        }
    }
    out.push_str("</div>\n</section>\n");
}

fn card(out: &mut String, row: &Row, det: &Detection) {
    let rec = row.rec;
    let dec = Decision::of(det);
    w!(
        out,
        "<article class=\"card {}\" id=\"img-{}\">\n<div class=\"pair\">\n",
        dec.class(),
        row.id
    );
    let size = image_size(row);
    let link = rec.files.overlay.as_deref();
    thumb(
        out,
        rec.files.thumbnail.as_deref(),
        link,
        &format!("{} (image)", rec.path),
        "image",
        size,
    );
    thumb(
        out,
        rec.files.overlay_thumbnail.as_deref(),
        link,
        &format!("{} (anomaly map overlay)", rec.path),
        "anomaly map",
        size,
    );
    out.push_str("</div>\n");
    w!(
        out,
        "<h3 class=\"path\"><a href=\"#row-{}\" title=\"back to the table\">{}</a></h3>\n",
        row.id,
        Esc(&rec.path)
    );
    w!(
        out,
        "<p><span class=\"badge {}\">{}</span> score <b>{:.4}</b> ({})",
        dec.class(),
        match dec {
            Decision::Undecided => "not decided",
            d => d.label(),
        },
        det.score,
        score_parts(det)
    );
    if let Some(c) = det.calibrated_score {
        w!(out, " · calibrated {c:.3}");
    }
    if let Some(p) = det.p_value {
        w!(out, " · p-value {}", fmt_g(p, 3));
    }
    out.push_str("</p>\n");
    w!(out, "<p>{}×{} px", det.width, det.height);
    if let Some(src) = &rec.source {
        w!(out, " · {} {}", Esc(&src.format), Esc(&src.color));
        if src.exif_orientation > 1 {
            w!(out, " · EXIF orientation {}", src.exif_orientation);
        }
    }
    if det.tiles > 1 {
        w!(out, " · {} tiles", det.tiles);
    }
    w!(
        out,
        " · map max {:.3}, mean {:.3} · {:.0} ms</p>\n",
        det.map_stats.max,
        det.map_stats.mean,
        det.timings.total_ms()
    );
    match det.pixel_threshold {
        None => out.push_str("<p class=\"note\">No regions (no pixel threshold).</p>\n"),
        Some(_) if det.regions.is_empty() => {
            out.push_str("<p class=\"note\">No region above the pixel threshold.</p>\n")
        }
        Some(t) => {
            w!(
                out,
                "<p>{} region{} above {}:</p>\n<ol>",
                det.regions.len(),
                plural(det.regions.len()),
                fmt_g(f64::from(t), 4)
            );
            for r in det.regions.iter().take(MAX_CARD_REGIONS) {
                let [x, y, w, h] = r.bbox;
                w!(
                    out,
                    "<li>box x {x}, y {y}, {w}×{h} · area {} px · peak {:.3}</li>",
                    r.area,
                    r.peak
                );
            }
            out.push_str("</ol>\n");
            if det.regions.len() > MAX_CARD_REGIONS {
                w!(
                    out,
                    "<p class=\"note\">… and {} more (see the JSONL record).</p>\n",
                    det.regions.len() - MAX_CARD_REGIONS
                );
            }
        }
    }
    out.push_str("</article>\n");
}

/// One thumbnail of a card, linked to the full-size overlay when there is one; a placeholder
/// when the file is missing. The image's size goes into `width`/`height` so the browser
/// reserves the right box before the lazy image loads (otherwise every unloaded image is 0 px
/// tall and "lazy" loads them all at once).
fn thumb(
    out: &mut String,
    src: Option<&str>,
    link: Option<&str>,
    alt: &str,
    caption: &str,
    size: Option<(usize, usize)>,
) {
    out.push_str("<figure>");
    match src.filter(|s| !s.is_empty()) {
        Some(src) => {
            if let Some(link) = link.filter(|s| !s.is_empty()) {
                w!(out, "<a href=\"{}\">", Url(link));
            }
            w!(
                out,
                "<img src=\"{}\" alt=\"{}\" loading=\"lazy\" decoding=\"async\"",
                Url(src),
                Esc(alt)
            );
            if let Some((w, h)) = size {
                w!(out, " width=\"{w}\" height=\"{h}\"");
            }
            out.push('>');
            if link.is_some_and(|s| !s.is_empty()) {
                out.push_str("</a>");
            }
        }
        None => {
            out.push_str("<div class=\"noimg\" role=\"img\" aria-label=\"no image\"");
            if let Some((w, h)) = size {
                w!(out, " style=\"aspect-ratio:{w}/{h}\"");
            }
            out.push_str(">no image</div>");
        }
    }
    w!(out, "<figcaption>{}</figcaption></figure>\n", Esc(caption));
}

// ---------------------------------------------------------------------------------------------
// Escaping and formatting

/// HTML-escapes text for element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes a relative file path for a URL: every byte of its UTF-8 except the unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) and `/` becomes `%XX`. That covers spaces, `#` and `?`
/// (which would start a fragment or query), `%` itself, and `:` (so that a first segment like
/// `c:` is never read as a scheme). The result needs no HTML escaping.
struct Url<'a>(&'a str);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                f.write_char(b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Decimals that show `v` to `sig` significant digits in fixed notation.
fn sig_decimals(v: f64, sig: usize) -> usize {
    if !(v.is_finite() && v > 0.0) {
        return sig.saturating_sub(1);
    }
    (sig as i32 - 1 - v.log10().floor() as i32).max(0) as usize
}

/// `v` to `sig` significant digits without trailing zeros, like C's `%g`: fixed notation for
/// magnitudes from 1e-4 to 1e15, scientific outside.
fn fmt_g(v: f64, sig: usize) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if (-4..15).contains(&exp) {
        trim_zeros(format!("{:.*}", sig_decimals(v.abs(), sig), v))
    } else {
        let s = format!("{:.*e}", sig.saturating_sub(1), v);
        match s.split_once('e') {
            Some((mantissa, e)) => format!("{}e{e}", trim_zeros(mantissa.to_string())),
            None => s,
        }
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A rate in [0, 1] as a percentage with 3 significant digits.
fn fmt_pct(v: f64) -> String {
    format!("{} %", fmt_g(v * 100.0, 3))
}

/// The parts of an image's score, as its mode has them: `global 0.41, local 0.73`.
fn score_parts(det: &Detection) -> String {
    let mut parts = vec![Esc(&det.mode).to_string()];
    if let (Some(g), Some(l)) = (det.score_global, det.score_local) {
        parts.push(format!("global {g:.4}, local {l:.4}"));
    }
    if let (Some(h), Some(_)) = (det.score_head, det.score_distance) {
        parts.push(format!("head {h:.4}"));
    }
    if let Some(d) = det.score_distance {
        parts.push(format!("distance {d:.4}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::MapStats;
    use crate::error::ErrorKind;
    use crate::output::records::{OutputFiles, RecordError, SourceRecord};
    use crate::settings::{DetectorSettings, ModelIdentity};
    use crate::tiling::Tiling;
    use ssvp_eval::maps::regions::Region;
    use ssvp_eval::postprocess::{AnomalyMap, PostprocessConfig};

    fn info(threshold: Option<f64>) -> RunInfo {
        RunInfo {
            ssvp_version: "0.1.0".into(),
            model: ModelIdentity {
                checkpoint: "runs/visa <best>".into(),
                head: "0123456789abcdef0123".into(),
                bank: String::new(),
                backbones: "fedcba9876543210".into(),
                backbone_names: "ViT-L/14@336 + DINOv3 ViT-L/16".into(),
                made_with: None,
            },
            settings: DetectorSettings {
                class_name: "pcb & \"wire\"".into(),
                map_size: 518,
                postprocess: PostprocessConfig::default(),
                tiling: Some(Tiling {
                    size: 1024,
                    overlap: 128,
                }),
                memory: None,
            },
            threshold,
            threshold_source: "calibration".into(),
            pixel_threshold: Some(0.5),
            map_scale: [0.0, 1.0],
            target_fpr: Some(0.01),
            calibration_images: Some(200),
            holdout_fpr: Some(0.0125),
            shard: Some("1/4".into()),
        }
    }

    fn region(x: usize, area: usize, peak: f32) -> Region {
        Region {
            bbox: [x, 2, 10, 5],
            area,
            peak,
            mean: peak / 2.0,
            centroid: [x as f64 + 5.0, 4.5],
        }
    }

    fn detection(score: f64, anomalous: Option<bool>, regions: Vec<Region>) -> Detection {
        Detection {
            width: 640,
            height: 480,
            class_name: "pcb".into(),
            score,
            mode: "head".into(),
            score_head: Some(score),
            score_global: Some(score),
            score_local: Some(score),
            score_distance: None,
            calibrated_score: anomalous.map(|_| score),
            p_value: anomalous.map(|a| if a { 0.004 } else { 0.4 }),
            anomalous,
            threshold: anomalous.map(|_| 0.5),
            pixel_threshold: Some(0.5),
            regions,
            map_stats: MapStats {
                min: 0.0,
                max: score as f32,
                mean: 0.1,
            },
            tiles: 1,
            timings: Timings {
                decode_ms: 2.0,
                preprocess_ms: 1.0,
                backbones_ms: 30.0,
                clip_ms: 14.0,
                dino_ms: 16.0,
                head_ms: 3.0,
                memory_ms: 0.0,
                postprocess_ms: 4.0,
                regions_ms: 0.5,
            },
            map: AnomalyMap {
                width: 0,
                height: 0,
                data: Vec::new(),
            },
        }
    }

    fn scored(path: &str, det: Detection) -> Record {
        let stem = path.rsplit_once('.').map_or(path, |(s, _)| s);
        Record {
            path: path.into(),
            status: Status::Ok,
            error: None,
            source: Some(SourceRecord {
                format: "png".into(),
                width: 640,
                height: 480,
                color: "rgb8".into(),
                exif_orientation: 1,
            }),
            detection: Some(det),
            files: OutputFiles {
                map: Some(format!("maps/{stem}.png")),
                overlay: Some(format!("overlays/{stem}.jpg")),
                thumbnail: Some(format!("thumbs/{stem}.jpg")),
                overlay_thumbnail: Some(format!("thumbs/{stem}.overlay.jpg")),
            },
            map_scale: Some([0.0, 1.0]),
        }
    }

    fn records() -> Vec<Record> {
        let mut odd = scored(
            "data/odd dir/<b>a&b #1?.png",
            detection(0.3, Some(false), vec![]),
        );
        // A missing thumbnail gets a placeholder.
        odd.files.thumbnail = None;
        vec![
            scored("good/000.png", detection(0.2, Some(false), vec![])),
            Record {
                path: "bad/broken.png".into(),
                status: Status::Error,
                error: Some(RecordError {
                    kind: ErrorKind::InvalidInput,
                    message: "cannot decode <truncated> file".into(),
                }),
                source: None,
                detection: None,
                files: OutputFiles::default(),
                map_scale: None,
            },
            scored(
                "bad/001.png",
                detection(
                    0.9,
                    Some(true),
                    vec![region(3, 40, 0.95), region(100, 12, 0.7)],
                ),
            ),
            odd,
        ]
    }

    /// The values of every `name="..."` attribute in `html`.
    fn attr_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
        let pat = format!(" {name}=\"");
        html.match_indices(&pat)
            .map(|(i, _)| {
                let rest = &html[i + pat.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect()
    }

    fn assert_self_contained(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>\n"));
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(html.contains("name=\"viewport\""));
        for bad in [
            "http://", "https://", "<link", "src=\"//", "@import", "url(",
        ] {
            assert!(!html.contains(bad), "the report contains {bad}");
        }
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<script src"));
        for value in attr_values(html, "src")
            .into_iter()
            .chain(attr_values(html, "href"))
        {
            let scheme = value.split_once(':').is_some_and(|(s, _)| !s.contains('/'));
            assert!(
                !value.is_empty() && !value.starts_with('/') && !scheme,
                "not a relative URL: {value:?}"
            );
        }
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn the_report_is_self_contained_and_escaped() {
        let html = render(&records(), &info(Some(0.5)), "Batch <1> & \"co\"");
        assert_self_contained(&html);
        // Text is escaped everywhere it appears.
        assert!(html.contains("<title>Batch &lt;1&gt; &amp; &quot;co&quot;</title>"));
        assert!(html.contains("data/odd dir/&lt;b&gt;a&amp;b #1?.png"));
        assert!(!html.contains("<b>a&b"));
        assert!(html.contains("cannot decode &lt;truncated&gt; file"));
        assert!(html.contains("<span class=\"kind\">invalid_input</span>"));
        assert!(html.contains("pcb &amp; &quot;wire&quot;"));
        assert!(html.contains("runs/visa &lt;best&gt;"));
        // Image URLs are percent-encoded and relative.
        assert!(html.contains("src=\"thumbs/data/odd%20dir/%3Cb%3Ea%26b%20%231%3F.overlay.jpg\""));
        assert!(html.contains("href=\"overlays/bad/001.jpg\""));
        assert!(html.contains("loading=\"lazy\""));
        // The missing thumbnail has a placeholder.
        assert_eq!(html.matches(">no image</div>").count(), 1);
        // Opened without its folders, the report says where the pictures are, and a picture
        // that does not load keeps its frame: alt text, its size, wrapped inside the frame.
        assert!(html.contains("not report.html alone"));
        assert!(html.contains("alt=\"bad/001.png (image)\""));
        assert!(html.contains(".pair figure{margin:0;min-width:0}"));
        assert!(html.contains("overflow-wrap:anywhere;font-size:.8em"));
        // Summary.
        assert!(html.contains("<code title=\"0123456789abcdef0123\">0123456789ab</code>"));
        assert!(html.contains("<li><b>4</b>images</li>"));
        assert!(html.contains("<li><b>1</b>failed</li>"));
        assert!(html.contains("<li><b>1</b>flagged anomalous</li>"));
        assert!(html.contains("1.25 %"));
        assert!(html.contains("Shard 1/4"));
        assert!(html.contains("linear-gradient(to right,#000080 0%"));
        // The histogram with its threshold line.
        assert!(html.contains("<svg class=\"hist\""));
        assert!(html.contains("<line class=\"threshold\""));
        assert!(html.contains(">threshold 0.5</text>"));
        // Default order: flagged first, then by score, failed last; anchors link rows and cards.
        let pos = |s: &str| html.find(s).unwrap();
        assert!(
            pos("<tr id=\"row-0\" class=\"flagged\"><td><a href=\"#img-0\">bad/001.png")
                < pos("<tr id=\"row-1\" class=\"ok\"><td><a href=\"#img-1\">data/odd")
        );
        assert!(html.contains("<tr id=\"row-2\" class=\"ok\"><td><a href=\"#img-2\">good/000.png"));
        assert!(html.contains("<tr id=\"row-3\" class=\"failed\"><td>bad/broken.png</td>"));
        assert!(html.contains("<article class=\"card flagged\" id=\"img-0\">"));
        assert!(!html.contains("id=\"img-3\""));
        // Region list of the flagged card.
        assert!(html.contains("2 regions above 0.5"));
        assert!(html.contains("<li>box x 3, y 2, 10×5 · area 40 px · peak 0.950</li>"));
        for href in attr_values(&html, "href")
            .into_iter()
            .filter(|h| h.starts_with('#'))
        {
            assert!(
                html.contains(&format!("id=\"{}\"", &href[1..])),
                "dangling {href}"
            );
        }
    }

    #[test]
    fn edge_cases_render() {
        // No records at all.
        let html = render(&[], &info(None), "empty");
        assert_self_contained(&html);
        assert!(html.contains("No scores to show: no image was scored."));
        assert!(!html.contains("<svg"));
        // Only a failed image.
        let failed: Vec<Record> = records()
            .into_iter()
            .filter(|r| r.detection.is_none())
            .collect();
        let html = render(&failed, &info(Some(0.5)), "failed");
        assert_self_contained(&html);
        assert!(html.contains("No scores to show"));
        // All scores equal: one bin, threshold inside the padded range.
        let same: Vec<Record> = (0..3)
            .map(|i| scored(&format!("s/{i}.png"), detection(0.42, None, vec![])))
            .collect();
        let html = render(&same, &info(Some(0.42)), "same");
        assert_self_contained(&html);
        assert!(html.contains("All 3 scores are equal (0.42)."));
        assert_eq!(html.matches("<rect ").count(), 1);
        assert!(html.contains("<li><b>3</b>not decided</li>"));
        // A threshold above every score is clamped to the edge and says so.
        let html = render(&records(), &info(Some(2.0)), "high");
        assert!(html.contains("threshold 2 (above all scores)"));
        let html = render(&records(), &info(Some(-1.0)), "low");
        assert!(html.contains("threshold -1 (below all scores)"));
        // A non-finite score is left out of the histogram, not a panic.
        let mut nan = records();
        nan[0].detection.as_mut().unwrap().score = f64::NAN;
        let html = render(&nan, &info(Some(0.5)), "nan");
        assert!(html.contains("1 image with a non-finite score left out."));
    }

    #[test]
    fn cards_are_capped() {
        let many: Vec<Record> = (0..MAX_CARDS + 7)
            .map(|i| {
                let s = i as f64 / (MAX_CARDS + 7) as f64;
                scored(&format!("m/{i}.png"), detection(s, Some(s > 0.5), vec![]))
            })
            .collect();
        let html = render(&many, &info(Some(0.5)), "many");
        assert_eq!(html.matches("<article ").count(), MAX_CARDS);
        assert_eq!(html.matches("<tr id=").count(), MAX_CARDS + 7);
        assert!(html.contains(&format!(
            "Showing the first {MAX_CARDS} of {} scored images",
            MAX_CARDS + 7
        )));
        // Bins hold every score.
        let total: usize = bins(
            &many
                .iter()
                .map(|r| (r.detection.as_ref().unwrap().score, Decision::Ok))
                .collect::<Vec<_>>(),
        )
        .2
        .iter()
        .map(|b| b.counts[1])
        .sum();
        assert_eq!(total, MAX_CARDS + 7);
    }

    #[test]
    fn helpers() {
        assert_eq!(Esc("a<b>&\"c'").to_string(), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(Esc("héllo").to_string(), "héllo");
        assert_eq!(
            Url("thumbs/a b/#c?d%e:f/é.jpg").to_string(),
            "thumbs/a%20b/%23c%3Fd%25e%3Af/%C3%A9.jpg"
        );
        assert_eq!(fmt_g(0.5, 6), "0.5");
        assert_eq!(fmt_g(0.123456789, 4), "0.1235");
        assert_eq!(fmt_g(123.456, 3), "123");
        assert_eq!(fmt_g(1.5e-7, 3), "1.5e-7");
        assert_eq!(fmt_g(0.0, 3), "0");
        assert_eq!(fmt_pct(0.01), "1 %");
        let (ticks, decimals) = nice_ticks(0.12, 0.87, 6);
        assert_eq!(decimals, 1);
        assert_eq!(ticks.len(), 4);
        assert!((ticks[0] - 0.2).abs() < 1e-12 && (ticks[3] - 0.8).abs() < 1e-12);
        assert_eq!(nice_ticks(0.0, 7.0, 4).0, vec![0.0, 2.0, 4.0, 6.0]);
    }
}
