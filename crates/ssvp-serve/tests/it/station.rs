//! The station's HTTP side without a browser: the page and its policy, the key on every route
//! but the page, cross-site refusals, the API's answers and refusals, live events, and the
//! watched folder. (station_ui.rs drives the same server from a real browser.)

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use ssvp_serve::{ServeOptions, StationSetup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    call, get, http, json as parse, multipart, options, part, png, post, references_detector,
    service, shared, spawn,
};

fn station_options(dir: &std::path::Path) -> ServeOptions {
    ServeOptions {
        station: Some(StationSetup {
            dir: dir.to_path_buf(),
            watch: None,
            options: Default::default(),
        }),
        ..ServeOptions::default()
    }
}

fn json_post(uri: &str, body: Value) -> Request<Body> {
    post(uri, "application/json", body.to_string())
}

async fn upload(svc: &ssvp_serve::Service, name: &str, bytes: &[u8]) -> Value {
    let (ct, body) = multipart(&[("image", Some(name), bytes)]);
    let (status, _, answer) = call(svc, post("/station/api/parts", &ct, body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    parse(&answer)
}

#[tokio::test]
async fn the_page_loads_under_a_strict_policy_and_only_with_a_station() {
    let _g = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = service(
        references_detector(&dir.path().join("refs"), options()),
        station_options(&dir.path().join("st")),
    );
    let (status, headers, body) = call(&svc, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let html = String::from_utf8(body).unwrap();
    // Every script is a file of the page's own origin: none inline.
    assert!(!html.contains("<script>") && !html.contains("onclick="));
    assert!(html.contains("/station/app.js"));
    let (status, headers, _) = call(&svc, get("/station/app.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));

    let plain = service(
        references_detector(&dir.path().join("refs2"), options()),
        ServeOptions::default(),
    );
    for uri in ["/", "/station/api/state", "/station/app.js"] {
        assert_eq!(
            call(&plain, get(uri)).await.0,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn a_key_guards_every_station_route_but_the_page_and_other_sites_cannot_act() {
    let _g = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = service(
        references_detector(&dir.path().join("refs"), options()),
        ServeOptions {
            api_key: Some("s3cret".into()),
            ..station_options(&dir.path().join("st"))
        },
    );
    assert_eq!(call(&svc, get("/")).await.0, StatusCode::OK);
    assert_eq!(call(&svc, get("/station/app.css")).await.0, StatusCode::OK);
    for uri in [
        "/station/api/state",
        "/station/api/parts",
        "/station/api/scores",
        "/station/api/audit",
        "/station/api/events",
        "/station/api/export.csv",
        "/station/api/parts/1/image",
    ] {
        assert_eq!(
            call(&svc, get(uri)).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    let body = json!({"value": 0.1, "who": "eve", "why": ""});
    let (status, _, _) = call(&svc, json_post("/station/api/threshold", body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let with_key = |mut r: Request<Body>| {
        r.headers_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        r
    };
    assert_eq!(
        call(&svc, with_key(get("/station/api/state"))).await.0,
        StatusCode::OK
    );
    // A browser marks a cross-site request; an Origin of another host is refused too.
    let mut cross = with_key(json_post("/station/api/threshold", body.clone()));
    cross
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(call(&svc, cross).await.0, StatusCode::FORBIDDEN);
    let mut foreign = with_key(json_post("/station/api/threshold", body.clone()));
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    foreign
        .headers_mut()
        .insert("host", "127.0.0.1:8080".parse().unwrap());
    assert_eq!(call(&svc, foreign).await.0, StatusCode::FORBIDDEN);
    let mut same = with_key(json_post("/station/api/threshold", body));
    same.headers_mut()
        .insert("origin", "http://127.0.0.1:8080".parse().unwrap());
    same.headers_mut()
        .insert("host", "127.0.0.1:8080".parse().unwrap());
    assert_eq!(call(&svc, same).await.0, StatusCode::OK);
}

#[tokio::test]
async fn parts_feedback_regions_undo_and_exports_through_the_api() {
    let _g = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = service(
        references_detector(&dir.path().join("refs"), options()),
        station_options(&dir.path().join("st")),
    );
    let good_bytes = png(&part(7, false));
    let good = upload(&svc, "cam/../../good.png", &good_bytes).await;
    assert_eq!(good["name"], "good.png", "a name is shown, never a path");
    assert_eq!(good["source"], "upload");
    let bad = upload(&svc, "bad.png", &png(&part(8, true))).await;
    // A part sent to the native route is stored too.
    let (status, _, _) = call(&svc, post("/v1/detect", "image/png", png(&part(9, false)))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = call(&svc, get("/station/api/parts?sort=created&order=asc")).await;
    let list = parse(&body);
    assert_eq!(list["total"], 3);
    assert_eq!(list["parts"][2]["source"], "api");

    // The stored bytes come back as sent; the map is a PNG.
    let id = good["id"].as_i64().unwrap();
    let (_, headers, bytes) = call(&svc, get(&format!("/station/api/parts/{id}/image"))).await;
    assert_eq!(bytes, good_bytes);
    assert_eq!(headers["content-type"], "image/png");
    let (_, _, map) = call(&svc, get(&format!("/station/api/parts/{id}/map.png"))).await;
    assert_eq!(&map[..4], b"\x89PNG");

    // A threshold between the two parts: the good one passes, the defect is flagged; then a
    // threshold just below the good part makes it a false alarm.
    let (g, b) = (
        good["score"].as_f64().unwrap(),
        bad["score"].as_f64().unwrap(),
    );
    assert!(b > g, "the defect scores higher: {b} vs {g}");
    let t = g - 1e-6;
    let (status, _, body) = call(
        &svc,
        json_post(
            "/station/api/threshold",
            json!({"value": t, "who": "ana", "why": "tight"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(parse(&body)["threshold"]["version"], 2);
    let (_, _, body) = call(&svc, get(&format!("/station/api/parts/{id}"))).await;
    assert_eq!(parse(&body)["anomalous"], true);

    let (status, _, body) = call(
        &svc,
        json_post(
            &format!("/station/api/parts/{id}/feedback"),
            json!({"label": "good", "who": "ana", "why": "false alarm"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let report = parse(&body);
    assert_eq!(report["bank_version"], 2);
    let change = &report["changes"][0];
    assert_eq!(
        (
            change["id"].as_i64(),
            change["after"]["anomalous"].as_bool()
        ),
        (Some(id), Some(false))
    );
    let (_, _, body) = call(&svc, get("/station/api/changes/2")).await;
    assert_eq!(parse(&body)["changes"], report["changes"]);
    let (_, _, body) = call(&svc, get(&format!("/station/api/parts/{id}"))).await;
    let now = parse(&body);
    assert_eq!(
        (now["anomalous"].as_bool(), now["in_bank"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(now["history"].as_array().unwrap().len() >= 3);

    // Refusals are 4xx with a message.
    let bad_id = bad["id"].as_i64().unwrap();
    for (uri, body, want) in [
        (
            format!("/station/api/parts/{bad_id}/feedback"),
            json!({"label": "maybe", "who": "a"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/station/api/parts/{bad_id}/feedback"),
            json!({"label": "good", "who": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/station/api/parts/999/feedback".into(),
            json!({"label": "good", "who": "a"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/station/api/parts/x/feedback".into(),
            json!({"label": "good", "who": "a"}),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/station/api/parts/{id}/feedback"),
            json!({"label": "good", "who": "a"}),
            StatusCode::CONFLICT,
        ),
        (
            "/station/api/regions".into(),
            json!({"polygons": [[[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]], "who": "a"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/station/api/threshold".into(),
            json!({"value": "high", "who": "a"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/station/api/threshold".into(),
            json!({"value": 0.1, "who": "a", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, _, answer) = call(&svc, json_post(&uri, body)).await;
        assert_eq!(status, want, "{uri}: {}", String::from_utf8_lossy(&answer));
        assert!(parse(&answer)["error"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (status, _, _) = call(
        &svc,
        post("/station/api/threshold", "text/plain", "value=1"),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = call(&svc, get("/station/api/parts?limit=100000")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = call(&svc, post("/station/api/parts", "image/png", "not a png")).await;
    assert!(status.is_client_error(), "{status}");

    // Marked defective: a label only.
    let (status, _, body) = call(
        &svc,
        json_post(
            &format!("/station/api/parts/{bad_id}/feedback"),
            json!({"label": "defective", "who": "bo"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&body)["bank_version"], 2);

    // Regions, then undo twice: back to the start.
    let (status, _, body) = call(
        &svc,
        json_post(
            "/station/api/regions",
            json!({"polygons": [[[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]], "who": "bo", "why": "label"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(parse(&body)["bank_version"], 3);
    let (_, _, body) = call(&svc, get("/station/api/state")).await;
    let state = parse(&body);
    assert_eq!(state["regions"].as_array().unwrap().len(), 1);
    assert_eq!(state["counts"]["parts"], 3);
    assert_eq!(state["counts"]["marked_defective"], 1);
    for expected in [2, 1] {
        let (status, _, body) = call(
            &svc,
            json_post("/station/api/undo", json!({"who": "bo", "why": "back"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&body)["bank_version"], expected);
    }
    let (status, _, _) = call(
        &svc,
        json_post("/station/api/undo", json!({"who": "bo", "why": "again"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nothing left to undo"
    );
    let (_, _, body) = call(&svc, get("/station/api/state")).await;
    let state = parse(&body);
    assert_eq!(state["bank"]["version"], 1);
    assert_eq!(
        state["threshold"]["version"], 2,
        "the threshold applied before the undone changes"
    );

    // Exports: one line per part.
    let (_, headers, csv) = call(&svc, get("/station/api/export.csv")).await;
    assert!(headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("attachment"));
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("id,name,sha256,"));
    let (_, _, jsonl) = call(&svc, get("/station/api/export.jsonl")).await;
    let lines: Vec<Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["detection"]["score"].is_f64()));
    let (_, _, audit) = call(&svc, get("/station/api/audit")).await;
    let actions: Vec<String> = parse(&audit)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        [
            "undo",
            "undo",
            "regions",
            "marked defective",
            "marked good",
            "threshold",
            "start"
        ]
    );
}

/// Reads the SSE stream until `needle` appears (or the time runs out).
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    read_until_count(stream, seen, needle, 1).await
}

/// Reads the SSE stream until `needle` has appeared `count` times.
async fn read_until_count(
    stream: &mut tokio::net::TcpStream,
    seen: &mut String,
    needle: &str,
    count: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while seen.matches(needle).count() < count {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` in: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream closed before `{needle}`: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn parts_are_pushed_live_and_a_watched_folder_is_scored() {
    let _g = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let drop_folder = dir.path().join("camera");
    std::fs::create_dir_all(&drop_folder).unwrap();
    // A part already in the folder at start is scored too.
    std::fs::write(drop_folder.join("early.png"), png(&part(20, false))).unwrap();
    let mut opts = station_options(&dir.path().join("st"));
    opts.station.as_mut().unwrap().watch = Some(drop_folder.clone());
    let server = spawn(
        references_detector(&dir.path().join("refs"), options()),
        opts,
    )
    .await;

    let mut events = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    events
        .write_all(
            b"GET /station/api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "event: hello").await;
    assert!(seen.contains("text/event-stream"));

    let (ct, body) = multipart(&[("image", Some("live.png"), &png(&part(21, true)))]);
    let answer = http(
        server.addr,
        "POST",
        "/station/api/parts",
        &[("content-type", ct.as_str())],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    read_until(&mut events, &mut seen, "\"name\":\"live.png\"").await;
    assert!(seen.contains("event: part"));

    // A camera drops a file (written in two steps, as a slow writer would).
    let bytes = png(&part(22, false));
    let path = drop_folder.join("cam-0001.png");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, &bytes).unwrap();
    read_until(&mut events, &mut seen, "\"name\":\"cam-0001.png\"").await;
    // The same bytes again under another name are not a new part: the folder is read in
    // order, so once the file after it is in, the copy has been seen.
    std::fs::write(drop_folder.join("copy.png"), &bytes).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(drop_folder.join("after.png"), png(&part(23, false))).unwrap();
    read_until(&mut events, &mut seen, "\"name\":\"after.png\"").await;
    // A camera that rewrites the same file name: the new picture is a new part.
    std::fs::write(drop_folder.join("after.png"), png(&part(24, true))).unwrap();
    read_until_count(&mut events, &mut seen, "\"name\":\"after.png\"", 2).await;
    let list = http(
        server.addr,
        "GET",
        "/station/api/parts?sort=created&order=asc",
        &[],
        &[],
    )
    .await
    .unwrap();
    let list = parse(&list.body);
    let names: Vec<&str> = list["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"early.png"), "{names:?}");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "cam-0001.png" || **n == "copy.png")
            .count(),
        1,
        "{names:?}"
    );
    let watched = list["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "watch")
        .count();
    assert_eq!(watched, 4);
    drop(events);
    let mut server = server;
    let _ = server.stop.take().unwrap().send(());
}

#[tokio::test]
async fn open_inference_protocol_parts_are_stored_too() {
    let _g = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let svc = service(
        references_detector(&dir.path().join("refs"), options()),
        station_options(&dir.path().join("st")),
    );
    let images = [png(&part(30, false)), png(&part(31, true))];
    let (status, _, body) = call(
        &svc,
        post(
            "/v2/models/ssvp/infer",
            "application/json",
            crate::common::infer_body(&images, json!({})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, _, body) = call(&svc, get("/station/api/parts?sort=created&order=asc")).await;
    let list = parse(&body);
    assert_eq!(list["total"], 2);
    for (p, bytes) in list["parts"].as_array().unwrap().iter().zip(&images) {
        assert_eq!(p["source"], "api");
        assert!(p["name"].as_str().unwrap().starts_with("v2-"));
        let (_, _, stored) =
            call(&svc, get(&format!("/station/api/parts/{}/image", p["id"]))).await;
        assert_eq!(&stored, bytes);
    }
}
