//! Output as Docker's CLI writes it: `--format` templates (`{{.Field}}`, `{{json .}}`,
//! `table` prefix, `json`), tables aligned like Go's tabwriter with Docker's settings
//! (minimum width 10, padding 3), sizes and ages in Docker's words.
//!
//! Templates are a subset of Go's: text, `{{.Field}}`, `{{.A.B}}` into nested JSON,
//! `{{json .}}` and `{{json .Field}}`; `\t` and `\n` are read as tab and newline, as
//! Docker does. Anything else is refused with the field names that exist.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde_json::Value;

/// One row: field name -> value (strings print raw, other JSON as JSON).
pub type Row = BTreeMap<&'static str, Value>;

enum Part {
    Text(String),
    Field(Vec<String>),
    Json(Vec<String>),
}

struct Template {
    parts: Vec<Part>,
}

fn parse(format: &str) -> Result<Template> {
    let format = format.replace("\\t", "\t").replace("\\n", "\n");
    let mut parts = Vec::new();
    let mut rest = format.as_str();
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find("}}") else {
            bail!("--format {format:?}: '{{{{' without '}}}}'");
        };
        let action = rest[open + 2..open + close].trim();
        let path = |p: &str| -> Result<Vec<String>> {
            match p.trim() {
                "." => Ok(Vec::new()),
                p if p.starts_with('.') => Ok(p[1..].split('.').map(str::to_string).collect()),
                p => bail!("--format: {{{{{action}}}}}: expected .Field, got {p:?}"),
            }
        };
        parts.push(match action.strip_prefix("json ") {
            Some(p) => Part::Json(path(p)?),
            None => Part::Field(path(action)?),
        });
        rest = &rest[open + close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(Template { parts })
}

fn lookup<'a>(row: &'a Value, path: &[String]) -> Result<&'a Value> {
    let mut v = row;
    for (i, key) in path.iter().enumerate() {
        v = match v.get(key) {
            Some(x) => x,
            None => {
                let known: Vec<&String> = v
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                bail!(
                    "--format: no field .{} (fields here: {})",
                    path[..=i].join("."),
                    known
                        .iter()
                        .map(|k| format!(".{k}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        };
    }
    Ok(v)
}

impl Template {
    fn render(&self, row: &Value) -> Result<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => match lookup(row, path)? {
                    Value::String(s) => out.push_str(s),
                    Value::Null => out.push_str("<no value>"),
                    v => out.push_str(&v.to_string()),
                },
                Part::Json(path) => out.push_str(&lookup(row, path)?.to_string()),
            }
        }
        Ok(out)
    }

    /// The header line: each field replaced by its column title.
    fn header(&self, titles: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) | Part::Json(path) => {
                    let name = path.join(".");
                    let title = titles
                        .iter()
                        .find(|(f, _)| *f == name)
                        .map(|(_, t)| t.to_string())
                        .unwrap_or_else(|| name.to_uppercase());
                    out.push_str(&title);
                }
            }
        }
        out
    }
}

/// Lines of tab-separated cells aligned as Go's `tabwriter.NewWriter(w, 10, 1, 3, ' ',
/// 0)` aligns them: a cell ended by a tab is padded to its column's widest cell plus
/// three, at least ten; the last cell of a line is not padded.
pub fn tabulate(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        for (i, c) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let w = (c.chars().count() + 3).max(10);
            if widths.len() <= i {
                widths.push(w);
            } else {
                widths[i] = widths[i].max(w);
            }
        }
    }
    let mut out = String::new();
    for cells in &lines {
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - c.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

/// Render `rows` by `format` (`None`: `default`, a `table …` template): `json` is one
/// JSON object a line, `table X` a table with a header, anything else the template once
/// a row.
pub fn render(
    format: Option<&str>,
    default: &str,
    titles: &[(&str, &str)],
    rows: &[Row],
) -> Result<String> {
    let format = format.unwrap_or(default).trim();
    let values: Vec<Value> = rows
        .iter()
        .map(|r| Value::Object(r.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()))
        .collect();
    if format == "json" {
        let mut out = String::new();
        for v in &values {
            out.push_str(&v.to_string());
            out.push('\n');
        }
        return Ok(out);
    }
    let (table, body) = match format.strip_prefix("table") {
        Some(rest) if rest.trim().is_empty() => (true, default.trim().trim_start_matches("table")),
        Some(rest) if rest.starts_with([' ', '\t']) => (true, rest),
        _ => (false, format),
    };
    let t = parse(body.trim())?;
    let mut out = String::new();
    if table {
        out.push_str(&t.header(titles));
        out.push('\n');
    }
    for v in &values {
        out.push_str(&t.render(v)?);
        out.push('\n');
    }
    Ok(if table { tabulate(&out) } else { out })
}

/// Render one JSON document by a template (`inspect --format`).
pub fn render_value(format: &str, v: &Value) -> Result<String> {
    parse(format)?.render(v)
}

/// Docker's sizes (go-units `HumanSizeWithPrecision(n, 3)`): `4.86MB`, `512B`.
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{}{}", three_digits(v), units[u])
}

/// `%.3g` without an exponent (values here are below 1000).
fn three_digits(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Docker's ages (go-units `HumanDuration`), without " ago".
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = (secs as f64 / 3600.0 + 0.5) as i64;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T10:00:00.5+02:00`).
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let v = o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// `1970-01-01 00:00:00 +0000 UTC`: Go's default time format, in UTC.
pub fn show_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Docker's ellipsis: at most `max` characters, the last one `…` when cut.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_and_ages_in_dockers_words() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.23MB");
        assert_eq!(human_size(4_860), "4.86kB");
        assert_eq!(human_size(12_300_000), "12.3MB");
        assert_eq!(human_size(100_000), "100kB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(100 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2024-02-29T12:00:00.123456789Z"),
            Some(1709208000)
        );
        assert_eq!(parse_time("2024-02-29T14:00:00+02:00"), Some(1709208000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(show_time(1709208000), "2024-02-29 12:00:00 +0000 UTC");
        assert_eq!(show_time(0), "1970-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn templates_tables_and_json() {
        let rows: Vec<Row> = vec![
            Row::from([("Repository", json!("busybox")), ("Tag", json!("1"))]),
            Row::from([
                ("Repository", json!("a/very/long/repository")),
                ("Tag", json!("latest")),
            ]),
        ];
        let titles = [("Repository", "REPOSITORY"), ("Tag", "TAG")];
        let table = render(None, "table {{.Repository}}\t{{.Tag}}", &titles, &rows).unwrap();
        assert_eq!(
            table,
            "REPOSITORY               TAG\nbusybox                  1\na/very/long/repository   latest\n"
        );
        let plain = render(Some("{{.Repository}}:{{.Tag}}"), "", &titles, &rows).unwrap();
        assert_eq!(plain, "busybox:1\na/very/long/repository:latest\n");
        let tabbed = render(Some(r"table {{.Tag}}\t{{.Tag}}"), "", &titles, &rows[..1]).unwrap();
        assert_eq!(tabbed, "TAG       TAG\n1         1\n");
        let json = render(Some("json"), "", &titles, &rows[..1]).unwrap();
        assert_eq!(json, "{\"Repository\":\"busybox\",\"Tag\":\"1\"}\n");
        let err = render(Some("{{.Nope}}"), "", &titles, &rows).unwrap_err();
        assert!(err.to_string().contains(".Repository .Tag"), "{err}");
        let v = json!({"Config": {"Env": ["A=1"]}, "Id": "sha256:x"});
        assert_eq!(
            render_value("{{.Id}} {{json .Config.Env}}", &v).unwrap(),
            "sha256:x [\"A=1\"]"
        );
    }
}
