//! Printing results: JSON as the API returns it, or a table that fits a terminal. Everything
//! the CLI prints goes through [`outln!`] and [`out!`], never `println!`, which panics when the
//! reader has gone.

use std::io::Write;

use comfy_table::{ContentArrangement, Row, Table, presets};
use serde_json::Value;

use crate::args::Output;

/// `println!` to standard output through [`write_stdout`].
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
/// `print!` to standard output through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}
pub(crate) use {out, outln};

/// Write to standard output, at once. When the reader has gone (`ferry … | head`), the rest of
/// the output is not wanted: the process ends here, quietly and with status 0, as SIGPIPE ends
/// other tools. Any other failure to write (a full disk) ends it with the error and status 1.
pub fn write_stdout(text: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Print `v` as JSON, or as a table of `columns` (JSON field paths like `target.region`).
pub fn print(out: Output, v: &Value, columns: &[&str]) {
    match out {
        Output::Json => outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Yaml => out!("{}", yaml(v)),
        Output::Table => match v {
            // The width of the terminal standard output is, as comfy-table finds it; none when
            // standard output is not a terminal.
            Value::Array(rows) => outln!("{}", render_table(rows, columns, Table::new().width())),
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

/// `rows` as a table of `columns`: a header of the upper-case column names, then a line per row,
/// columns two spaces apart, no lines drawn. Given a `width`, a wider table is fitted to it: its
/// widest cells are cut, ending in `…`, and each row stays one line. Without one, nothing is cut.
fn render_table(rows: &[Value], columns: &[&str], width: Option<u16>) -> String {
    let one_line = |cells: Vec<String>| {
        let mut row = Row::from(cells);
        row.max_height(1);
        row
    };
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_truncation_indicator("…")
        .set_header(one_line(
            columns
                .iter()
                .map(|c| c.rsplit('.').next().unwrap_or(c).to_uppercase())
                .collect(),
        ));
    for r in rows {
        table.add_row(one_line(columns.iter().map(|c| cell(r, c)).collect()));
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    match width {
        Some(w) => table.set_width(w),
        None => table.force_no_tty(),
    };
    table.trim_fmt()
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
            other => outln!(
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

#[cfg(test)]
mod table_tests {
    use super::*;

    const COLUMNS: [&str; 4] = ["name", "state", "policy.name", "tags"];

    fn items() -> Vec<Value> {
        vec![
            serde_json::json!({"name": "rg1/web1", "state": "protected", "policy": {"name": "fast"}, "tags": ["a", "b"]}),
            serde_json::json!({"name": "rg1/a-very-long-database-name", "state": "enabling", "policy": null, "tags": []}),
        ]
    }

    #[test]
    fn without_a_width_no_row_is_cut() {
        assert_eq!(
            render_table(&items(), &COLUMNS, None),
            "NAME                           STATE      NAME  TAGS\n\
             rg1/web1                       protected  fast  a,b\n\
             rg1/a-very-long-database-name  enabling"
        );
    }

    #[test]
    fn a_wide_table_fits_the_width_its_long_cells_cut() {
        assert_eq!(
            render_table(&items(), &COLUMNS, Some(40)),
            "NAME             STATE      NAME  TAGS\n\
             rg1/web1         protected  fast  a,b\n\
             rg1/a-very-lon…  enabling"
        );
    }
}
