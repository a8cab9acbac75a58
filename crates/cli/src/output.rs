//! Printing resources: `-o table` (the default), `yaml` or `json`.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// One resource or a list (`{"items": [...]}`) from the API, printed.
pub fn render(
    format: Format,
    body: &Value,
    single: bool,
    with_kind: bool,
    with_namespace: bool,
    now_secs: u64,
) -> String {
    let items: Vec<&Value> = if single {
        vec![body]
    } else {
        body["items"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    match format {
        Format::Json => serde_json::to_string_pretty(body).unwrap_or_default() + "\n",
        // Each resource a YAML document: the output can be applied again.
        Format::Yaml => items
            .iter()
            .map(|v| serde_saphyr::to_string(v).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("---\n"),
        Format::Table => table(&items, with_kind, with_namespace, now_secs),
    }
}

fn table(items: &[&Value], with_kind: bool, with_namespace: bool, now_secs: u64) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = Vec::new();
    if with_kind {
        head.push("KIND");
    }
    if with_namespace {
        head.push("NAMESPACE");
    }
    head.extend(["NAME", "STATUS", "GENERATION", "SOURCE", "AGE"]);
    rows.push(head.into_iter().map(String::from).collect());
    for v in items {
        let mut row = Vec::new();
        let s = |x: &Value| x.as_str().unwrap_or("").to_string();
        if with_kind {
            row.push(s(&v["kind"]));
        }
        if with_namespace {
            row.push(s(&v["metadata"]["namespace"]));
        }
        row.push(s(&v["metadata"]["name"]));
        let status = &v["status"];
        row.push(if status["accepted"].as_bool().unwrap_or(false) {
            "Accepted".to_string()
        } else {
            match status["conflicts"][0]["winner"].as_object() {
                Some(w) => format!(
                    "Conflict (loses to {} {}/{})",
                    w["kind"].as_str().unwrap_or(""),
                    w["namespace"].as_str().unwrap_or(""),
                    w["name"].as_str().unwrap_or("")
                ),
                None => "NotAccepted".to_string(),
            }
        });
        row.push(status["generation"].to_string());
        row.push(s(&status["source"]));
        row.push(
            v["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(parse_rfc3339)
                .map_or_else(|| "?".into(), |t| age(now_secs.saturating_sub(t))),
        );
        rows.push(row);
    }
    columns(&rows)
}

/// Rows as aligned columns, three spaces apart, trailing blanks trimmed.
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's ages: `42s`, `5m`, `3h`, `12d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("2026-11-22T13:45:00Z"), Some(1_795_355_100));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
    }
}
