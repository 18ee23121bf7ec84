//! The handlers of `/station/api`: each reads or changes the [`Station`] on a blocking thread
//! (SQLite and the model are blocking work) and answers JSON; docs/station.md lists them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use ssvp_detect::DontCare;
use ssvp_station::{Label, PartQuery, Station};

use super::check_same_origin;
use crate::error::ApiError;
use crate::state::{AppState, RequestContext};

/// The station, or 404 when the server runs none (or 503 while the model loads).
fn station(state: &AppState) -> Result<Arc<Station>, ApiError> {
    state.model()?.station().cloned().ok_or_else(|| {
        ApiError::not_found("this server runs no station (start it with --station DIR)")
    })
}

/// Runs `work` on the station on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Station) -> ssvp_detect::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let station = station(state)?;
    tokio::task::spawn_blocking(move || work(&station))
        .await
        .map_err(|_| ApiError::internal("the station's work failed"))?
        .map_err(ApiError::from)
}

fn part_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("no part `{raw}`")))
}

/// `GET /station/api/state`.
pub async fn state(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let body = blocking(&state, state_json).await?;
    Ok(Json(body))
}

/// What the UI shows in its status line, and the `state` event.
pub fn state_json(s: &Station) -> ssvp_detect::Result<Value> {
    let now = s.in_force();
    let d = &now.detector;
    let bank = s.bank_version()?;
    let regions = d
        .dont_care()
        .map(|r| r.polygons().to_vec())
        .unwrap_or_default();
    let scale = d.map_scale();
    Ok(json!({
        "model": {
            "mode": d.mode(),
            "class_name": d.options().class_name,
            "calibrated": d.calibration().is_some(),
            "has_bank": d.scorer()?.bank().is_some(),
        },
        "threshold": now.threshold,
        "bank": {
            "version": bank.version,
            "references": bank.refs,
            "digest": bank.bank_sha256,
            "event": bank.event,
            "at": bank.at,
            "who": bank.who,
            "why": bank.why,
            "can_undo": bank.parent.is_some(),
        },
        "regions": regions,
        "counts": s.counts()?,
        "map_scale": {"lo": scale.lo, "hi": scale.hi},
    }))
}

/// `GET /station/api/parts`.
pub async fn parts(
    State(state): State<Arc<AppState>>,
    query: Result<Query<PartQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (offset, limit) = (query.offset, query.limit);
    let (total, parts) = blocking(&state, move |s| s.parts(&query)).await?;
    Ok(Json(json!({
        "total": total,
        "offset": offset,
        "limit": if limit == 0 { 50 } else { limit },
        "parts": parts,
    })))
}

/// `GET /station/api/parts/{id}`.
pub async fn part(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = part_id(&id)?;
    let (part, detection, history) = blocking(&state, move |s| s.part_detail(id)).await?;
    let mut body = serde_json::to_value(&part).map_err(|e| ApiError::internal(e.to_string()))?;
    body["regions"] = json!(detection.regions);
    body["pixel_threshold"] = json!(detection.pixel_threshold);
    body["detection"] = json!(detection);
    body["history"] = json!(history);
    Ok(Json(body))
}

/// `GET /station/api/parts/{id}/image`: the bytes as stored. A part's image never changes,
/// so the browser may keep it.
pub async fn image(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = part_id(&id)?;
    let (bytes, content_type) = blocking(&state, move |s| s.image(id)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=86400".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /station/api/parts/{id}/map.png`: the current map, colour-mapped.
pub async fn map_png(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = part_id(&id)?;
    let png = blocking(&state, move |s| s.map_png(id)).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// `GET /station/api/scores`: what the Threshold view decides in the browser.
pub async fn scores(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let body = blocking(&state, |s| {
        let scores = s.scores()?;
        let now = s.in_force();
        let calibration = now.detector.calibration();
        Ok(json!({
            "ids": scores.iter().map(|p| p.0).collect::<Vec<_>>(),
            "scores": scores.iter().map(|p| p.1).collect::<Vec<_>>(),
            "feedback": scores.iter().map(|p| p.2).collect::<Vec<_>>(),
            "calibration_scores": calibration.map(|c| c.image.scores.clone()).unwrap_or_default(),
            // The conformal bound of the calibration in force, whatever threshold is applied.
            "calibration": calibration.map(|c| json!({
                "threshold": c.image.threshold,
                "target_fpr": c.target_fpr,
                "images": c.calibration_images,
            })),
            "threshold": now.threshold,
        }))
    })
    .await?;
    Ok(Json(body))
}

/// Who acts and why (every change carries both into the audit log).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoWhy {
    /// The operator's name.
    pub who: String,
    /// The reason, free text.
    #[serde(default)]
    pub why: String,
}

/// `POST /station/api/threshold` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdBody {
    /// The raw-score threshold.
    pub value: f64,
    /// Who.
    pub who: String,
    /// Why.
    #[serde(default)]
    pub why: String,
}

/// `POST /station/api/parts/{id}/feedback` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// `good` or `defective`.
    pub label: String,
    /// Who.
    pub who: String,
    /// Why.
    #[serde(default)]
    pub why: String,
}

/// `POST /station/api/regions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionsBody {
    /// Every don't-care polygon, image-normalised `[x, y]` points.
    pub polygons: Vec<Vec<(f64, f64)>>,
    /// Who.
    pub who: String,
    /// Why.
    #[serde(default)]
    pub why: String,
}

/// A JSON body, with a readable 4xx for a malformed one.
async fn body<T: serde::de::DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let Json(value) = Json::<T>::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    Ok(value)
}

/// After a change: everyone's live view reloads its state.
fn announce(state: &AppState, what: &str) {
    state.events.state(&json!({ "changed": what }));
}

/// `POST /station/api/threshold`: Apply.
pub async fn threshold(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_same_origin(&headers)?;
    let b: ThresholdBody = body(request).await?;
    let t = blocking(&state, move |s| s.set_threshold(b.value, &b.who, &b.why)).await?;
    announce(&state, "threshold");
    Ok(Json(json!({ "threshold": t })))
}

/// `POST /station/api/parts/{id}/feedback`.
pub async fn feedback(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_same_origin(&headers)?;
    let id = part_id(&id)?;
    let b: FeedbackBody = body(request).await?;
    let label = Label::parse(&b.label)?;
    let report = blocking(&state, move |s| s.mark(id, label, &b.who, &b.why)).await?;
    announce(&state, "feedback");
    Ok(Json(json!(report)))
}

/// `POST /station/api/regions`.
pub async fn regions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_same_origin(&headers)?;
    let b: RegionsBody = body(request).await?;
    let regions = DontCare::new(b.polygons)?;
    let report = blocking(&state, move |s| s.set_regions(regions, &b.who, &b.why)).await?;
    announce(&state, "regions");
    Ok(Json(json!(report)))
}

/// `POST /station/api/undo`.
pub async fn undo(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_same_origin(&headers)?;
    let b: WhoWhy = body(request).await?;
    let report = blocking(&state, move |s| s.undo(&b.who, &b.why)).await?;
    announce(&state, "undo");
    Ok(Json(json!(report)))
}

/// `GET /station/api/changes/{version}`.
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Path(version): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v: i64 = version
        .parse()
        .map_err(|_| ApiError::not_found(format!("no bank version `{version}`")))?;
    let changes = blocking(&state, move |s| s.changes(v)).await?;
    Ok(Json(json!({ "version": v, "changes": changes })))
}

/// `GET /station/api/events`: Server-Sent Events (`part`, `state`; super::events).
pub async fn events(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    station(&state)?;
    Ok(state.events.stream())
}

/// `GET /station/api/audit`.
pub async fn audit(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let entries = blocking(&state, |s| s.audit_log(1000)).await?;
    Ok(Json(json!({ "entries": entries })))
}

/// Options of an upload.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The file name shown (a raw-body upload has none).
    pub name: Option<String>,
    /// `good` or `defective`: a label given with the part (e.g. known-good parts).
    pub label: Option<String>,
}

/// Printable, at most 200 characters: a file name only ever appears in lists.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
}

/// `POST /station/api/parts`: one image, multipart (`image`, optional `label`) or the raw
/// body; scored through the batch queue like any request, stored, announced.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    check_same_origin(&headers)?;
    let Query(mut options) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let model = state.model()?;
    let station = station(&state)?;
    let _admitted = state.admit()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (bytes, name) = if content_type == "multipart/form-data" {
        let deadline = context.arrived + state.options.request_timeout;
        tokio::time::timeout_at(deadline.into(), read_form(request, &mut options))
            .await
            .map_err(|_| state.upload_timeout())??
    } else {
        let bytes = state.read_body(request, context.arrived).await?;
        (bytes, options.name.clone().unwrap_or_default())
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request("no image was sent"));
    }
    let label = options.label.as_deref().map(Label::parse).transpose()?;
    let name = match clean_name(&name) {
        n if n.is_empty() => format!("upload-{}", context.id),
        n => n,
    };
    let image = state.decode(bytes.clone(), name.clone()).await?;
    let class_name = model.detector().options().class_name.clone();
    let scored = state
        .score(vec![image], &class_name, None, context.arrived)
        .await?
        .remove(0);
    let part = super::record(&station, &state, bytes, name, "upload", label, &scored).await?;
    Ok(Json(json!(part)))
}

async fn read_form(
    request: Request,
    options: &mut UploadQuery,
) -> Result<(Bytes, String), ApiError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut image = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?
    {
        match field.name().unwrap_or_default() {
            "image" => {
                let file = field.file_name().unwrap_or_default().to_string();
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
                image = Some((bytes, file));
            }
            "label" => {
                options.label = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| ApiError::bad_request(e.body_text()))?,
                )
            }
            "name" => {
                options.name = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| ApiError::bad_request(e.body_text()))?,
                )
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field `{other}` (fields: image, label, name)"
                )))
            }
        }
    }
    let (bytes, file) =
        image.ok_or_else(|| ApiError::bad_request("the form has no `image` file"))?;
    Ok((bytes, options.name.clone().unwrap_or(file)))
}

fn csv_field(s: &str) -> String {
    // Quoted when needed; a leading formula character is neutralised for spreadsheets.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn download(content_type: &'static str, file: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_DISPOSITION,
                if file.ends_with(".csv") {
                    "attachment; filename=\"station-parts.csv\""
                } else {
                    "attachment; filename=\"station-parts.jsonl\""
                },
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /station/api/export.csv`: every part, one row each, with its current result.
pub async fn export_csv(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let body = blocking(&state, |s| {
        let mut out = String::from(
            "id,name,sha256,at,width,height,source,score,calibrated_score,anomalous,feedback,\
             in_bank,bank_version,regions\n",
        );
        s.export(|p, detection| {
            let regions = serde_json::from_str::<Value>(detection)
                .ok()
                .and_then(|d| d["regions"].as_array().map(|r| r.len()))
                .unwrap_or(0);
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                p.id,
                csv_field(&p.name),
                p.sha256,
                p.at,
                p.width,
                p.height,
                p.source,
                p.score,
                opt(p.calibrated_score),
                opt(p.anomalous),
                opt(p.feedback.map(|l| l.as_str())),
                p.in_bank,
                p.bank_version,
                regions
            ));
            Ok(())
        })?;
        Ok(out)
    })
    .await?;
    Ok(download("text/csv; charset=utf-8", ".csv", body))
}

/// `GET /station/api/export.jsonl`: every part with its current detection, one JSON per line.
pub async fn export_jsonl(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let body = blocking(&state, |s| {
        let mut out = String::new();
        s.export(|p, detection| {
            let mut line = serde_json::to_value(p).map_err(|e| {
                ssvp_detect::Error::new(ssvp_detect::ErrorKind::Model, e.to_string())
            })?;
            line["detection"] = serde_json::from_str(detection).unwrap_or(Value::Null);
            out.push_str(&line.to_string());
            out.push('\n');
            Ok(())
        })?;
        Ok(out)
    })
    .await?;
    Ok(download("application/x-ndjson", ".jsonl", body))
}
