//! How resources look in the API: the document as applied, with
//! `metadata.generation`, `metadata.creationTimestamp` and `status` filled in.

use serde_json::{Value, json};

use crate::store::{Applied, Entry, Status};

pub fn resource(e: &Entry, status: &Status) -> Value {
    let mut doc = e.document.clone();
    if let Value::Object(map) = &mut doc {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            meta.insert("namespace".into(), json!(e.key.namespace));
            meta.insert("generation".into(), json!(e.generation));
            meta.insert("creationTimestamp".into(), json!(rfc3339(e.created_ms)));
        }
        map.insert("status".into(), json!(status));
    }
    doc
}

pub fn applied(a: &Applied) -> Value {
    json!({
        "kind": a.key.kind,
        "namespace": a.key.namespace,
        "name": a.key.name,
        "action": a.action,
        "status": a.status,
    })
}

/// `2026-11-22T13:45:00Z` from milliseconds since the Unix epoch (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_355_100_999), "2026-11-22T13:45:00Z");
    }
}
