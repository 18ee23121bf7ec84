//! `detections.csv`: one row per image, for spreadsheets and scripts. Columns: `path, status,
//! score, calibrated_score, p_value, anomalous, regions, max_region_area, map_max, width,
//! height, tiles, total_ms, error`. Empty cells where a value does not exist (an image that
//! failed, no calibration).

use ssvp_eval::report::csv_field;

use super::records::{Record, Status};

/// The CSV text of `records` (in the given order).
pub fn records_csv(records: &[Record]) -> String {
    let mut out = String::from(
        "path,status,score,calibrated_score,p_value,anomalous,regions,max_region_area,map_max,\
         width,height,tiles,total_ms,error\n",
    );
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in records {
        let d = r.detection.as_ref();
        let status = match r.status {
            Status::Ok => "ok",
            Status::Error => "error",
        };
        let fields = [
            csv_field(&r.path),
            status.to_string(),
            opt(d.map(|d| format!("{}", d.score))),
            opt(d.and_then(|d| d.calibrated_score).map(|v| format!("{v}"))),
            opt(d.and_then(|d| d.p_value).map(|v| format!("{v}"))),
            opt(d.and_then(|d| d.anomalous).map(|a| u8::from(a).to_string())),
            opt(d.map(|d| d.regions.len().to_string())),
            opt(d.map(|d| {
                d.regions
                    .iter()
                    .map(|r| r.area)
                    .max()
                    .unwrap_or(0)
                    .to_string()
            })),
            opt(d.map(|d| format!("{}", d.map_stats.max))),
            opt(d.map(|d| d.width.to_string())),
            opt(d.map(|d| d.height.to_string())),
            opt(d.map(|d| d.tiles.to_string())),
            opt(d.map(|d| format!("{:.1}", d.timings.total_ms()))),
            opt(r.error.as_ref().map(|e| csv_field(&e.message))),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}
