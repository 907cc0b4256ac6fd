//! What the rows of `bench` and `check` carry besides their measurements:
//! the build (version, git commit), the adapter, a UTC timestamp, and CSV
//! quoting, so that other tools (pandas, a results database) read them as
//! they are.

use serde_json::{json, Value};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("LOGIT_ADJUST_GIT_COMMIT");

/// Now, as ISO 8601 UTC to the second (`YYYY-MM-DDTHH:MM:SSZ`).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The adapter fields of a row.
pub fn adapter_fields(info: &wgpu::AdapterInfo) -> Value {
    json!({
        "adapter": info.name,
        "backend": format!("{:?}", info.backend),
        "driver": format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        "device_type": format!("{:?}", info.device_type),
    })
}

/// `fields` (a JSON object) after the adapter fields of `info`: a row or
/// a header that says where it was measured.
pub fn with_adapter(info: &wgpu::AdapterInfo, fields: Value) -> Value {
    let mut row = adapter_fields(info);
    if let (Value::Object(r), Value::Object(f)) = (&mut row, fields) {
        r.extend(f);
    }
    row
}

/// Rows of JSON objects as CSV with the given columns: a header, then one
/// line per row; strings quoted where they need it, null as an empty field.
pub fn csv(columns: &[&str], rows: &[Value]) -> String {
    let mut out = columns.join(",");
    out.push('\n');
    for row in rows {
        let fields: Vec<String> = columns
            .iter()
            .map(|c| match &row[*c] {
                Value::Null => String::new(),
                Value::String(s) => quote(s),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => quote(&other.to_string()),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let rows = [json!({"a": "x,y", "b": 1.5, "c": null, "d": "say \"hi\""})];
        assert_eq!(
            csv(&["a", "b", "c", "d"], &rows),
            "a,b,c,d\n\"x,y\",1.5,,\"say \"\"hi\"\"\"\n"
        );
    }

    #[test]
    fn timestamps_are_iso_utc() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
