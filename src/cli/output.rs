//! Human output: aligned tables and times. `--json` output bypasses this.

use serde::Serialize;
use serde_json::Value;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table_text(headers, rows));
}

/// The text `table` prints, a line each.
fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut text = String::new();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    text
}

/// Prints a JSON value for scripts.
pub fn json(value: &Value) {
    println!("{}", json_text(value));
}

fn json_text(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Prints a list command's answer: with `json`, the items as a JSON array for
/// scripts; otherwise a table under `headers` with `row(item)` for each item.
pub fn list<T: Serialize>(json: bool, items: &[T], headers: &[&str], row: impl Fn(&T) -> Vec<String>) -> serde_json::Result<()> {
    print!("{}", list_text(json, items, headers, row)?);
    Ok(())
}

fn list_text<T: Serialize>(json: bool, items: &[T], headers: &[&str], row: impl Fn(&T) -> Vec<String>) -> serde_json::Result<String> {
    if json {
        // Through a `Value`, as `json` prints: its objects' keys come out sorted.
        return Ok(format!("{}\n", json_text(&serde_json::to_value(items)?)));
    }
    Ok(table_text(headers, &items.iter().map(row).collect::<Vec<_>>()))
}

/// A string field, or `-`.
pub fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_list_is_a_table_for_people_and_the_items_for_scripts() {
        #[derive(serde::Serialize)]
        struct Hook {
            name: &'static str,
            id: u32,
        }
        let items = [Hook { name: "ops", id: 7 }, Hook { name: "a-longer-name", id: 12 }];
        let row = |h: &Hook| vec![h.id.to_string(), h.name.to_string(), "-".to_string()];
        let table = super::list_text(false, &items, &["ID", "NAME", "NOTE"], row).unwrap();
        assert_eq!(table, "ID  NAME           NOTE\n7   ops            -\n12  a-longer-name  -\n");
        let json = super::list_text(true, &items, &["ID", "NAME", "NOTE"], row).unwrap();
        assert_eq!(json, format!("{}\n", serde_json::to_string_pretty(&json!([{"id": 7, "name": "ops"}, {"id": 12, "name": "a-longer-name"}])).unwrap()));
        assert_eq!(super::list_text(false, &[] as &[Hook], &["ID", "NAME"], row).unwrap(), "ID  NAME\n", "no items: the headers alone");
    }

    #[test]
    fn formats_times() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_795_303_585_157), "2026-11-21 23:26:25");
    }
}
