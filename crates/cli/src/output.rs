//! Printing results: JSON as the API returns it, or a table that fits a terminal.

use serde_json::Value;

use crate::args::Output;

/// Print `v` as JSON, or as a table of `columns` (JSON field paths like `target.region`).
pub fn print(out: Output, v: &Value, columns: &[&str]) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Yaml => print!("{}", yaml(v)),
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

/// `v` as a YAML document (block style; strings double-quoted as JSON writes them, which YAML
/// reads the same).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => yaml_seq(a, 0, &mut out),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

fn nested(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn yaml_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&Value::String(k.clone()).to_string());
        if nested(v) {
            out.push_str(":\n");
            yaml_value(v, indent + 2, out);
        } else {
            out.push_str(": ");
            out.push_str(&yaml_scalar(v));
            out.push('\n');
        }
    }
}

fn yaml_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        if nested(v) {
            out.push_str("-\n");
            yaml_value(v, indent + 2, out);
        } else {
            out.push_str("- ");
            out.push_str(&yaml_scalar(v));
            out.push('\n');
        }
    }
}

fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) => yaml_map(m, indent, out),
        Value::Array(a) => yaml_seq(a, indent, out),
        _ => {}
    }
}

#[cfg(test)]
mod yaml_tests {
    use super::*;

    #[test]
    fn nested_values_print_as_block_yaml() {
        let v = serde_json::json!({
            "name": "rg1/app1",
            "disks": [{"index": 0, "nbd_uri": "nbd+unix:///a"}, {"index": 1, "tags": []}],
            "health": {"reasons": ["a: \"b\""], "ok": true, "rpo": null},
            "empty": {}
        });
        assert_eq!(
            yaml(&v),
            "\"disks\":\n  -\n    \"index\": 0\n    \"nbd_uri\": \"nbd+unix:///a\"\n  -\n    \"index\": 1\n    \"tags\": []\n\"empty\": {}\n\"health\":\n  \"ok\": true\n  \"reasons\":\n    - \"a: \\\"b\\\"\"\n  \"rpo\": null\n\"name\": \"rg1/app1\"\n"
        );
    }
}
