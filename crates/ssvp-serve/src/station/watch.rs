//! `--watch DIR`: a camera that drops image files into a folder is scored without a client.
//! Each new or rewritten file is read once its size has stopped changing, scored through the
//! batch queue like a request, and stored in the station (source `watch`). Files already in the
//! folder at start are scored too, unless the station already holds their bytes, so a restart
//! neither misses nor repeats a part. Files are never moved or deleted: the folder is the
//! camera's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::state::AppState;

/// How long a file's size must stay the same before it is read (a camera still writing it).
const SETTLE: Duration = Duration::from_millis(300);

fn is_image(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    !hidden
        && matches!(
            ext.as_deref(),
            Some("png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff")
        )
}

/// Starts watching `dir` (which must exist) on the current runtime. The watcher lives as long
/// as the returned task.
pub fn start(state: Arc<AppState>, dir: PathBuf) -> Result<tokio::task::JoinHandle<()>, String> {
    if !dir.is_dir() {
        return Err(format!("--watch {}: not a directory", dir.display()));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let sender = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Access(_)
            ) {
                for path in event.paths {
                    let _ = sender.send(path);
                }
            }
        }
    })
    .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    // The files that were there before the watch began.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut existing: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        existing.sort();
        for path in existing {
            let _ = tx.send(path);
        }
    }
    tracing::info!(dir = %dir.display(), "watching for new images");
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        // A file is read again only when it changed (a camera that rewrites `latest.png`);
        // bytes the station already holds are not a new part either way.
        let mut seen: HashMap<PathBuf, (Option<SystemTime>, u64)> = HashMap::new();
        while let Some(path) = rx.recv().await {
            if !is_image(&path) || !settled(&path).await {
                continue;
            }
            let Ok(meta) = tokio::fs::metadata(&path).await else {
                continue;
            };
            let stamp = (meta.modified().ok(), meta.len());
            if seen.get(&path) == Some(&stamp) {
                continue;
            }
            seen.insert(path.clone(), stamp);
            if let Err(e) = score_file(&state, &path).await {
                tracing::warn!(file = %path.display(), "a watched file was not scored: {e}");
            }
        }
    }))
}

/// Waits until the file's size is the same twice [`SETTLE`] apart (false: it vanished).
async fn settled(path: &Path) -> bool {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(meta) = tokio::fs::metadata(path).await else {
            return false;
        };
        if !meta.is_file() {
            return false;
        }
        let size = meta.len();
        if last == Some(size) && size > 0 {
            return true;
        }
        last = Some(size);
        tokio::time::sleep(SETTLE).await;
    }
    false
}

async fn score_file(state: &Arc<AppState>, path: &Path) -> Result<(), String> {
    let model = state.model().map_err(|e| e.message)?;
    let station = model
        .station()
        .cloned()
        .ok_or("the server runs no station")?;
    let meta = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
    if meta.len() as usize > state.options.max_body_bytes {
        return Err(format!(
            "{} bytes is over the limit of {} (--max-body-bytes)",
            meta.len(),
            state.options.max_body_bytes
        ));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let known = {
        let (station, bytes) = (Arc::clone(&station), bytes.clone());
        tokio::task::spawn_blocking(move || station.holds_image(&bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    if known {
        return Ok(());
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = axum::body::Bytes::from(bytes);
    let image = state
        .decode(bytes.clone(), name.clone())
        .await
        .map_err(|e| e.message)?;
    let class_name = model.detector().options().class_name.clone();
    // A watched file waits its turn however long the queue is: retry while it is full.
    let scored = loop {
        match state
            .score(vec![image.clone()], &class_name, None, Instant::now())
            .await
        {
            Ok(mut s) => break s.remove(0),
            Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                if state.is_draining() {
                    return Err("the server is shutting down".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.message),
        }
    };
    super::record(&station, state, bytes, name, "watch", None, &scored)
        .await
        .map_err(|e| e.message)?;
    Ok(())
}
