//! The station's database: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives a kill or a power cut, and a kill before the commit leaves nothing of
//! it. Every change the station makes (a part and its first result, a feedback action with its
//! bank version, threshold and re-scores, an undo) is one transaction.
//!
//! The tables:
//!
//! | table | rows |
//! |---|---|
//! | `parts` | every image seen: name, content SHA-256, size, source, when |
//! | `results` | every score a part got (first, and after each bank change), with the decision then |
//! | `current_results` | per part its latest result, its score (indexed, for sorting) and map picture |
//! | `feedback` | every label an operator gave, with who and why; `undone` once its version is undone |
//! | `bank_versions` | the reference bank (by content SHA-256) and don't-care regions of each version |
//! | `thresholds` | every threshold version: value, where it came from, what it rests on |
//! | `current` | the bank and threshold versions in force (one row) |
//! | `changes` | per bank version, the parts whose decision the change turned, before and after |
//! | `audit` | who did what, when and why |

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use ssvp_detect::{Error, ErrorKind, Result};

/// Bumped when the tables change in a way an older binary cannot read.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    feedback TEXT CHECK (feedback IN ('good', 'defective'))
);
CREATE INDEX IF NOT EXISTS parts_name ON parts(name);
CREATE INDEX IF NOT EXISTS parts_feedback ON parts(feedback);
CREATE INDEX IF NOT EXISTS parts_sha ON parts(sha256);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id INTEGER NOT NULL REFERENCES parts(id),
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    event TEXT NOT NULL,
    bank_version INTEGER NOT NULL,
    threshold REAL,
    score REAL NOT NULL,
    anomalous INTEGER,
    detection TEXT NOT NULL,
    who TEXT,
    why TEXT
);
CREATE INDEX IF NOT EXISTS results_part ON results(part_id, id);
CREATE TABLE IF NOT EXISTS current_results (
    part_id INTEGER PRIMARY KEY REFERENCES parts(id),
    result_id INTEGER NOT NULL REFERENCES results(id),
    score REAL NOT NULL,
    map_png BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS current_score ON current_results(score);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id INTEGER NOT NULL REFERENCES parts(id),
    label TEXT NOT NULL CHECK (label IN ('good', 'defective')),
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    bank_version INTEGER,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bank_versions (
    version INTEGER PRIMARY KEY,
    parent INTEGER,
    bank_sha256 TEXT,
    regions TEXT NOT NULL,
    refs INTEGER NOT NULL,
    event TEXT NOT NULL,
    threshold_version INTEGER,
    calibration TEXT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    who TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS thresholds (
    version INTEGER PRIMARY KEY,
    value REAL,
    source TEXT NOT NULL,
    conformal INTEGER NOT NULL,
    rests_on INTEGER NOT NULL,
    target_fpr REAL,
    bank_version INTEGER NOT NULL,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    who TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS current (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bank_version INTEGER NOT NULL,
    threshold_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    bank_version INTEGER NOT NULL,
    part_id INTEGER NOT NULL,
    before_score REAL NOT NULL,
    before_anomalous INTEGER NOT NULL,
    after_score REAL NOT NULL,
    after_anomalous INTEGER NOT NULL,
    PRIMARY KEY (bank_version, part_id)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// A store failure is the station's (HTTP 500), never the request's.
pub(crate) fn db_error(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, format!("the station database: {e}"))
}

trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(db_error)
    }
}

/// Opens (creating) the database at `path` with the durability settings above.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).db()?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).db()?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .db()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{} cannot be put in WAL mode (got {mode}); is it on a network file system?",
                path.display()
            ),
        ));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .db()?;
    conn.execute_batch(SCHEMA).db()?;
    let version: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .db()?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                [SCHEMA_VERSION.to_string()],
            )
            .db()?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "{} has station schema {v}; this ssvp reads schema {SCHEMA_VERSION}",
                    path.display()
                ),
            ))
        }
    }
    Ok(conn)
}

/// Runs `work` in one transaction: all of it is committed, or none.
pub fn in_transaction<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let tx = conn.transaction().db()?;
    let out = work(&tx)?;
    tx.commit().db()?;
    Ok(out)
}

/// A value kept in the `meta` table.
pub fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .db()
}

/// Sets a value of the `meta` table.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .db()?;
    Ok(())
}

/// An operator's label of a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The part is good (a false alarm when it was flagged).
    Good,
    /// The part is defective (a miss when it passed).
    Defective,
}

impl Label {
    /// The label as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Good => "good",
            Label::Defective => "defective",
        }
    }

    /// Reads `good` or `defective`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "good" => Ok(Label::Good),
            "defective" => Ok(Label::Defective),
            other => Err(Error::invalid(format!(
                "the label must be `good` or `defective`, not `{other}`"
            ))),
        }
    }
}

fn label_of(s: Option<String>) -> Option<Label> {
    s.as_deref().and_then(|s| Label::parse(s).ok())
}

/// A new part as it arrives.
pub struct NewPart<'a> {
    /// Its file name (shown, never used as a path).
    pub name: &'a str,
    /// SHA-256 of its bytes (its file in the image store).
    pub sha256: &'a str,
    /// `image/png`, `image/jpeg`, ...
    pub content_type: &'a str,
    /// Pixels.
    pub width: usize,
    /// Pixels.
    pub height: usize,
    /// `upload`, `api` or `watch`.
    pub source: &'a str,
}

/// One score of a part.
pub struct NewResult<'a> {
    /// `scored` (on arrival), `rescored` (after a bank change).
    pub event: &'a str,
    /// The bank version it was scored with.
    pub bank_version: i64,
    /// The threshold it was decided at, if any.
    pub threshold: Option<f64>,
    /// The raw score.
    pub score: f64,
    /// The decision then.
    pub anomalous: Option<bool>,
    /// The detection without its map, as JSON.
    pub detection: &'a str,
    /// The map as a colour picture.
    pub map_png: &'a [u8],
    /// Who caused it (feedback re-scores).
    pub who: Option<&'a str>,
    /// Why.
    pub why: Option<&'a str>,
}

/// Inserts a part; answers its id.
pub fn insert_part(conn: &Connection, part: &NewPart<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO parts (name, sha256, content_type, width, height, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            part.name,
            part.sha256,
            part.content_type,
            part.width as i64,
            part.height as i64,
            part.source
        ],
    )
    .db()?;
    Ok(conn.last_insert_rowid())
}

/// Adds a result of a part and makes it the part's current one.
pub fn add_result(conn: &Connection, part_id: i64, result: &NewResult<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO results (part_id, event, bank_version, threshold, score, anomalous,
                              detection, who, why)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            part_id,
            result.event,
            result.bank_version,
            result.threshold,
            result.score,
            result.anomalous,
            result.detection,
            result.who,
            result.why
        ],
    )
    .db()?;
    let result_id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO current_results (part_id, result_id, score, map_png) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (part_id) DO UPDATE SET result_id = excluded.result_id,
             score = excluded.score, map_png = excluded.map_png",
        params![part_id, result_id, result.score, result.map_png],
    )
    .db()?;
    Ok(result_id)
}

/// Records an operator's label of a part (and the part's current label).
pub fn add_feedback(
    conn: &Connection,
    part_id: i64,
    label: Label,
    who: &str,
    why: &str,
    bank_version: Option<i64>,
) -> Result<i64> {
    conn.execute(
        "INSERT INTO feedback (part_id, label, who, why, bank_version) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![part_id, label.as_str(), who, why, bank_version],
    )
    .db()?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "UPDATE parts SET feedback = ?2 WHERE id = ?1",
        params![part_id, label.as_str()],
    )
    .db()?;
    Ok(id)
}

/// Marks the feedback that made bank version `version` undone, and gives each part it touched
/// its label from before.
pub fn undo_feedback_of(conn: &Connection, version: i64) -> Result<Vec<i64>> {
    let parts: Vec<i64> = conn
        .prepare("SELECT part_id FROM feedback WHERE bank_version = ?1 AND undone = 0")
        .db()?
        .query_map([version], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()?;
    conn.execute(
        "UPDATE feedback SET undone = 1 WHERE bank_version = ?1",
        [version],
    )
    .db()?;
    for id in &parts {
        let label: Option<String> = conn
            .query_row(
                "SELECT label FROM feedback WHERE part_id = ?1 AND undone = 0
                 ORDER BY id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .db()?;
        conn.execute(
            "UPDATE parts SET feedback = ?2 WHERE id = ?1",
            params![id, label],
        )
        .db()?;
    }
    Ok(parts)
}

/// A part with its current score.
#[derive(Clone, Debug, PartialEq)]
pub struct PartRow {
    /// Its id.
    pub id: i64,
    /// Its file name.
    pub name: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its media type.
    pub content_type: String,
    /// Pixels.
    pub width: usize,
    /// Pixels.
    pub height: usize,
    /// Where it came from.
    pub source: String,
    /// When it arrived (UTC, RFC 3339).
    pub at: String,
    /// The operator's current label.
    pub feedback: Option<Label>,
    /// The current score.
    pub score: f64,
    /// The bank version of the current score.
    pub bank_version: i64,
}

const PART_COLUMNS: &str = "p.id, p.name, p.sha256, p.content_type, p.width, p.height, p.source,
    p.at, p.feedback, c.score, r.bank_version";
const PART_JOIN: &str = "parts p JOIN current_results c ON c.part_id = p.id
    JOIN results r ON r.id = c.result_id";

fn part_row(r: &Row<'_>) -> rusqlite::Result<PartRow> {
    Ok(PartRow {
        id: r.get(0)?,
        name: r.get(1)?,
        sha256: r.get(2)?,
        content_type: r.get(3)?,
        width: r.get::<_, i64>(4)? as usize,
        height: r.get::<_, i64>(5)? as usize,
        source: r.get(6)?,
        at: r.get(7)?,
        feedback: label_of(r.get(8)?),
        score: r.get(9)?,
        bank_version: r.get(10)?,
    })
}

/// How a page of parts is chosen.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartQuery {
    /// Parts skipped.
    pub offset: usize,
    /// Parts answered (at most [`MAX_PAGE`]; 0 means 50).
    pub limit: usize,
    /// `created` (default), `score`, `decision` (as the score), `feedback` or `name`.
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    pub order: Option<String>,
    /// `anomalous` or `good`: the decision at the current threshold.
    pub decision: Option<String>,
    /// `good`, `defective` or `none`.
    pub feedback: Option<String>,
    /// The name contains this (case-insensitive).
    pub q: Option<String>,
}

/// The most parts one page holds.
pub const MAX_PAGE: usize = 500;

/// A page of parts and how many match in all.
pub fn parts(
    conn: &Connection,
    query: &PartQuery,
    threshold: Option<f64>,
) -> Result<(usize, Vec<PartRow>)> {
    let limit = match query.limit {
        0 => 50,
        n if n > MAX_PAGE => {
            return Err(Error::invalid(format!(
                "a page holds at most {MAX_PAGE} parts, not {n}"
            )))
        }
        n => n,
    };
    let sort = match query.sort.as_deref().unwrap_or("created") {
        "created" => "p.id",
        // Decisions are taken on the score, so they sort as the score does.
        "score" | "decision" => "c.score",
        "name" => "p.name",
        // Unlabelled, then `defective`, then `good` (ascending).
        "feedback" => "coalesce(p.feedback, '')",
        other => {
            return Err(Error::invalid(format!(
                "sort must be `created`, `score`, `decision`, `feedback` or `name`, not `{other}`"
            )))
        }
    };
    let order = match query.order.as_deref().unwrap_or("desc") {
        "desc" => "DESC",
        "asc" => "ASC",
        other => {
            return Err(Error::invalid(format!(
                "order must be `asc` or `desc`, not `{other}`"
            )))
        }
    };
    // Only fixed SQL text is spliced in; every value is a bound parameter.
    let mut filters: Vec<&str> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    match query.decision.as_deref() {
        None | Some("") | Some("all") => {}
        Some(d @ ("anomalous" | "good")) => {
            let Some(t) = threshold else {
                return Err(Error::invalid(
                    "no threshold is set, so no part has a decision to filter by",
                ));
            };
            // The decision rule of ssvp_detect::decision: anomalous above the threshold.
            filters.push(if d == "anomalous" {
                "c.score > ?"
            } else {
                "c.score <= ?"
            });
            values.push(t.into());
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "decision must be `anomalous` or `good`, not `{other}`"
            )))
        }
    }
    match query.feedback.as_deref() {
        None | Some("") | Some("all") => {}
        Some("none") => filters.push("p.feedback IS NULL"),
        Some(l @ ("good" | "defective")) => {
            filters.push("p.feedback = ?");
            values.push(l.to_string().into());
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "feedback must be `good`, `defective` or `none`, not `{other}`"
            )))
        }
    }
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        filters.push("instr(lower(p.name), lower(?)) > 0");
        values.push(q.to_string().into());
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let total: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {PART_JOIN} {filter}"),
            rusqlite::params_from_iter(values.iter()),
            |r| r.get(0),
        )
        .db()?;
    let mut page_values = values.clone();
    page_values.push((limit as i64).into());
    page_values.push((query.offset as i64).into());
    let sql = format!(
        "SELECT {PART_COLUMNS} FROM {PART_JOIN} {filter}
         ORDER BY {sort} {order}, p.id {order} LIMIT ? OFFSET ?"
    );
    let rows = conn
        .prepare(&sql)
        .db()?
        .query_map(rusqlite::params_from_iter(page_values.iter()), part_row)
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()?;
    Ok((total as usize, rows))
}

/// One part, or 404.
pub fn part(conn: &Connection, id: i64) -> Result<PartRow> {
    conn.query_row(
        &format!("SELECT {PART_COLUMNS} FROM {PART_JOIN} WHERE p.id = ?1"),
        [id],
        part_row,
    )
    .optional()
    .db()?
    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no part {id}")))
}

/// Whether a part with the image of SHA-256 `sha` is stored.
pub fn has_image(conn: &Connection, sha: &str) -> Result<bool> {
    conn.query_row(
        "SELECT 1 FROM parts WHERE sha256 = ?1 LIMIT 1",
        [sha],
        |_| Ok(()),
    )
    .optional()
    .db()
    .map(|r| r.is_some())
}

/// Every part's id, score and label, oldest first (the Threshold view decides them all).
pub fn all_scores(conn: &Connection) -> Result<Vec<(i64, f64, Option<Label>)>> {
    conn.prepare(
        "SELECT p.id, c.score, p.feedback FROM parts p JOIN current_results c
         ON c.part_id = p.id ORDER BY p.id",
    )
    .db()?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, label_of(r.get(2)?))))
    .db()?
    .collect::<rusqlite::Result<_>>()
    .db()
}

/// The ids of the parts with `label`.
pub fn parts_labelled(conn: &Connection, label: Label) -> Result<Vec<i64>> {
    conn.prepare("SELECT id FROM parts WHERE feedback = ?1 ORDER BY id")
        .db()?
        .query_map([label.as_str()], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()
}

/// The ids of parts worth re-scoring after a bank change: every labelled part, every part
/// flagged at `threshold`, and the newest `window`.
pub fn parts_to_rescore(
    conn: &Connection,
    threshold: Option<f64>,
    window: usize,
) -> Result<Vec<i64>> {
    conn.prepare(
        "SELECT p.id FROM parts p JOIN current_results c ON c.part_id = p.id
         WHERE p.feedback IS NOT NULL OR (?1 IS NOT NULL AND c.score > ?1)
            OR p.id IN (SELECT id FROM parts ORDER BY id DESC LIMIT ?2)
         ORDER BY p.id",
    )
    .db()?
    .query_map(params![threshold, window as i64], |r| r.get(0))
    .db()?
    .collect::<rusqlite::Result<_>>()
    .db()
}

/// The current result of a part: its detection JSON (without the map) and map picture.
pub fn current_result(conn: &Connection, id: i64) -> Result<(String, Vec<u8>)> {
    conn.query_row(
        "SELECT r.detection, c.map_png FROM current_results c JOIN results r
         ON r.id = c.result_id WHERE c.part_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .db()?
    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no part {id}")))
}

/// One line of a part's history: a score or a label.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// When (UTC).
    pub at: String,
    /// `scored`, `rescored`, `marked good`, `marked defective` (`… (undone)` once undone).
    pub event: String,
    /// The score then (scores only).
    pub score: Option<f64>,
    /// The threshold it was decided at (scores only).
    pub threshold: Option<f64>,
    /// The decision then (scores only).
    pub anomalous: Option<bool>,
    /// The bank version.
    pub bank_version: Option<i64>,
    /// Who.
    pub who: Option<String>,
    /// Why.
    pub why: Option<String>,
}

/// A part's results and labels, oldest first.
pub fn history(conn: &Connection, id: i64) -> Result<Vec<HistoryEntry>> {
    let mut out: Vec<(String, i64, HistoryEntry)> = Vec::new();
    let scores = conn
        .prepare(
            "SELECT at, event, score, threshold, anomalous, bank_version, who, why, id
             FROM results WHERE part_id = ?1",
        )
        .db()?
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(8)?,
                HistoryEntry {
                    at: r.get(0)?,
                    event: r.get(1)?,
                    score: Some(r.get(2)?),
                    threshold: r.get(3)?,
                    anomalous: r.get(4)?,
                    bank_version: Some(r.get(5)?),
                    who: r.get(6)?,
                    why: r.get(7)?,
                },
            ))
        })
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()?;
    out.extend(scores);
    let labels = conn
        .prepare(
            "SELECT at, label, undone, bank_version, who, why, id FROM feedback
             WHERE part_id = ?1",
        )
        .db()?
        .query_map([id], |r| {
            let undone: bool = r.get(2)?;
            let label: String = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(6)?,
                HistoryEntry {
                    at: r.get(0)?,
                    event: format!("marked {label}{}", if undone { " (undone)" } else { "" }),
                    score: None,
                    threshold: None,
                    anomalous: None,
                    bank_version: r.get(3)?,
                    who: Some(r.get(4)?),
                    why: Some(r.get(5)?),
                },
            ))
        })
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()?;
    out.extend(labels);
    // Labels sort before the re-score they caused at the same instant.
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then((a.2.score.is_some()).cmp(&b.2.score.is_some()))
            .then(a.1.cmp(&b.1))
    });
    Ok(out.into_iter().map(|(_, _, e)| e).collect())
}

/// A bank version as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct BankVersion {
    /// Its number (1 = the bank the station started with).
    pub version: i64,
    /// The version it was made from.
    pub parent: Option<i64>,
    /// The bank file's SHA-256 (`None`: the model has no bank).
    pub bank_sha256: Option<String>,
    /// The don't-care regions, as `DontCare` JSON.
    pub regions: String,
    /// Reference images in the bank.
    pub refs: usize,
    /// `start`, `marked good`, `regions`, `undo`.
    pub event: String,
    /// The threshold version made with it (restored by an undo to it).
    pub threshold_version: Option<i64>,
    /// The calibration in force with it, as JSON.
    pub calibration: Option<String>,
    /// When.
    pub at: String,
    /// Who.
    pub who: String,
    /// Why.
    pub why: String,
}

fn bank_version_row(r: &Row<'_>) -> rusqlite::Result<BankVersion> {
    Ok(BankVersion {
        version: r.get(0)?,
        parent: r.get(1)?,
        bank_sha256: r.get(2)?,
        regions: r.get(3)?,
        refs: r.get::<_, i64>(4)? as usize,
        event: r.get(5)?,
        threshold_version: r.get(6)?,
        calibration: r.get(7)?,
        at: r.get(8)?,
        who: r.get(9)?,
        why: r.get(10)?,
    })
}

/// Stores a new bank version (its number is the next one); answers the number.
pub fn insert_bank_version(conn: &Connection, v: &BankVersion) -> Result<i64> {
    conn.execute(
        "INSERT INTO bank_versions (version, parent, bank_sha256, regions, refs, event,
                                    threshold_version, calibration, who, why)
         VALUES ((SELECT coalesce(max(version), 0) + 1 FROM bank_versions),
                 ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            v.parent,
            v.bank_sha256,
            v.regions,
            v.refs as i64,
            v.event,
            v.threshold_version,
            v.calibration,
            v.who,
            v.why
        ],
    )
    .db()?;
    conn.query_row("SELECT max(version) FROM bank_versions", [], |r| r.get(0))
        .db()
}

/// Sets the threshold version a bank version was made with.
pub fn set_bank_threshold(conn: &Connection, version: i64, threshold_version: i64) -> Result<()> {
    conn.execute(
        "UPDATE bank_versions SET threshold_version = ?2 WHERE version = ?1",
        params![version, threshold_version],
    )
    .db()?;
    Ok(())
}

/// A bank version, or 404.
pub fn bank_version(conn: &Connection, version: i64) -> Result<BankVersion> {
    conn.query_row(
        "SELECT version, parent, bank_sha256, regions, refs, event, threshold_version,
                calibration, at, who, why FROM bank_versions WHERE version = ?1",
        [version],
        bank_version_row,
    )
    .optional()
    .db()?
    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no bank version {version}")))
}

/// A threshold version as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThresholdVersion {
    /// Its number.
    pub version: i64,
    /// The raw-score threshold (`None`: the model decides nothing).
    pub value: Option<f64>,
    /// `calibration`, `operator`, `recalibrated`, `carried` (the calibration's bound carried
    /// to a grown bank) or `undo`.
    pub source: String,
    /// Whether the value is a conformal bound on the false-alarm rate.
    pub conformal: bool,
    /// Good images the bound rests on.
    pub rests_on: usize,
    /// The false-alarm rate the bound is for.
    pub target_fpr: Option<f64>,
    /// The bank version it was set under.
    pub bank_version: i64,
    /// When.
    pub at: String,
    /// Who.
    pub who: String,
    /// Why.
    pub why: String,
}

/// Stores a new threshold version; answers its number.
pub fn insert_threshold(conn: &Connection, t: &ThresholdVersion) -> Result<i64> {
    conn.execute(
        "INSERT INTO thresholds (version, value, source, conformal, rests_on, target_fpr,
                                 bank_version, who, why)
         VALUES ((SELECT coalesce(max(version), 0) + 1 FROM thresholds),
                 ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.value,
            t.source,
            t.conformal,
            t.rests_on as i64,
            t.target_fpr,
            t.bank_version,
            t.who,
            t.why
        ],
    )
    .db()?;
    conn.query_row("SELECT max(version) FROM thresholds", [], |r| r.get(0))
        .db()
}

/// A threshold version, or 404.
pub fn threshold(conn: &Connection, version: i64) -> Result<ThresholdVersion> {
    conn.query_row(
        "SELECT version, value, source, conformal, rests_on, target_fpr, bank_version, at,
                who, why FROM thresholds WHERE version = ?1",
        [version],
        |r| {
            Ok(ThresholdVersion {
                version: r.get(0)?,
                value: r.get(1)?,
                source: r.get(2)?,
                conformal: r.get(3)?,
                rests_on: r.get::<_, i64>(4)? as usize,
                target_fpr: r.get(5)?,
                bank_version: r.get(6)?,
                at: r.get(7)?,
                who: r.get(8)?,
                why: r.get(9)?,
            })
        },
    )
    .optional()
    .db()?
    .ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("no threshold version {version}"),
        )
    })
}

/// The bank and threshold versions in force (`None` before the first start finished).
pub fn current(conn: &Connection) -> Result<Option<(i64, i64)>> {
    conn.query_row(
        "SELECT bank_version, threshold_version FROM current WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .db()
}

/// Puts bank version `bank` and threshold version `threshold` in force.
pub fn set_current(conn: &Connection, bank: i64, threshold: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO current (id, bank_version, threshold_version) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET bank_version = excluded.bank_version,
             threshold_version = excluded.threshold_version",
        params![bank, threshold],
    )
    .db()?;
    Ok(())
}

/// A part whose decision a bank change turned.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// The part.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Score and decision before.
    pub before: Decided,
    /// Score and decision after.
    pub after: Decided,
}

/// A score and the decision on it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Decided {
    /// The raw score.
    pub score: f64,
    /// The decision.
    pub anomalous: bool,
}

/// Stores the changes a bank version made.
pub fn insert_changes(conn: &Connection, version: i64, changes: &[Change]) -> Result<()> {
    let mut stmt = conn
        .prepare(
            "INSERT INTO changes (bank_version, part_id, before_score, before_anomalous,
                                  after_score, after_anomalous) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db()?;
    for c in changes {
        stmt.execute(params![
            version,
            c.id,
            c.before.score,
            c.before.anomalous,
            c.after.score,
            c.after.anomalous
        ])
        .db()?;
    }
    Ok(())
}

/// The changes bank version `version` made.
pub fn changes(conn: &Connection, version: i64) -> Result<Vec<Change>> {
    conn.prepare(
        "SELECT c.part_id, p.name, c.before_score, c.before_anomalous, c.after_score,
                c.after_anomalous FROM changes c JOIN parts p ON p.id = c.part_id
         WHERE c.bank_version = ?1 ORDER BY c.part_id",
    )
    .db()?
    .query_map([version], |r| {
        Ok(Change {
            id: r.get(0)?,
            name: r.get(1)?,
            before: Decided {
                score: r.get(2)?,
                anomalous: r.get(3)?,
            },
            after: Decided {
                score: r.get(4)?,
                anomalous: r.get(5)?,
            },
        })
    })
    .db()?
    .collect::<rusqlite::Result<_>>()
    .db()
}

/// An audit log entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// When (UTC).
    pub at: String,
    /// Who.
    pub who: String,
    /// What: `start`, `threshold`, `marked good`, `marked defective`, `regions`, `undo`.
    pub action: String,
    /// The details, in words.
    pub detail: String,
}

/// Appends to the audit log.
pub fn audit(conn: &Connection, who: &str, action: &str, detail: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (who, action, detail) VALUES (?1, ?2, ?3)",
        params![who, action, detail],
    )
    .db()?;
    Ok(())
}

/// The newest `limit` audit entries, newest first.
pub fn audit_log(conn: &Connection, limit: usize) -> Result<Vec<AuditEntry>> {
    conn.prepare("SELECT at, who, action, detail FROM audit ORDER BY id DESC LIMIT ?1")
        .db()?
        .query_map([limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                who: r.get(1)?,
                action: r.get(2)?,
                detail: r.get(3)?,
            })
        })
        .db()?
        .collect::<rusqlite::Result<_>>()
        .db()
}

/// Every part with its current detection JSON, oldest first, for exports: `each` is called
/// per row so an export of 100k parts never holds them all.
pub fn for_each_export(
    conn: &Connection,
    mut each: impl FnMut(&PartRow, &str) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {PART_COLUMNS}, r.detection FROM {PART_JOIN} ORDER BY p.id"
        ))
        .db()?;
    let mut rows = stmt.query([]).db()?;
    while let Some(row) = rows.next().db()? {
        let part = part_row(row).db()?;
        let detection: String = row.get(11).db()?;
        each(&part, &detection)?;
    }
    Ok(())
}
