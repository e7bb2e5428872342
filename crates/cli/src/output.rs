//! Printing results: JSON as the API returns it, or a table that fits a terminal.

use serde_json::Value;

use crate::args::Output;

/// Print `v` as JSON, or as a table of `columns` (JSON field paths like `target.region`).
pub fn print(out: Output, v: &Value, columns: &[&str]) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => match v {
            Value::Array(rows) => table(rows, columns),
            other => fields(other),
        },
    }
}

fn cell(v: &Value, path: &str) -> String {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur.get(part) {
            Some(x) => x,
            None => return String::new(),
        };
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], columns: &[&str]) {
    let mut grid: Vec<Vec<String>> = vec![
        columns
            .iter()
            .map(|c| c.rsplit('.').next().unwrap_or(c).to_uppercase())
            .collect(),
    ];
    grid.extend(
        rows.iter()
            .map(|r| columns.iter().map(|c| cell(r, c)).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn fields(v: &Value) {
    fn walk(prefix: &str, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x);
                }
            }
            Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), x);
                }
            }
            other => println!(
                "{prefix}: {}",
                cell(&serde_json::json!({ "x": other }), "x")
            ),
        }
    }
    walk("", v);
}
