//! Printing results: JSON as the API returns it, or a table that fits a terminal. Everything
//! the CLI prints goes through [`outln!`] and [`out!`], never `println!`, which panics when the
//! reader has gone.

use std::io::Write;

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
    let widths = match terminal_width() {
        Some(total) => fit(&widths, total),
        None => widths,
    };
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{:<w$}", clip(c, *w)))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

/// The width of the terminal standard output is, if it is one.
#[allow(unsafe_code)]
fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// Column widths that fit `total` characters with two spaces between columns: the widest
/// columns give way first, none below 8 characters (or its own width).
fn fit(widths: &[usize], total: usize) -> Vec<usize> {
    let mut w = widths.to_vec();
    let gaps = 2 * w.len().saturating_sub(1);
    while w.iter().sum::<usize>() + gaps > total {
        let Some((i, &max)) = w.iter().enumerate().max_by_key(|(_, x)| **x) else {
            break;
        };
        if max <= 8 {
            break;
        }
        w[i] = max - 1;
    }
    w
}

/// `s` cut to `width` characters, ending in `…` when cut.
fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
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
mod fit_tests {
    use super::*;

    #[test]
    fn wide_tables_shrink_their_widest_columns_to_the_terminal() {
        assert_eq!(fit(&[10, 60, 20], 120), vec![10, 60, 20]);
        let w = fit(&[10, 60, 20], 60);
        assert_eq!(w.iter().sum::<usize>() + 4, 60, "{w:?}");
        assert_eq!(w[0], 10, "narrow columns keep their width: {w:?}");
        assert_eq!(fit(&[9, 9, 9], 10), vec![8, 8, 8], "no column goes below 8");
        assert_eq!(clip("rg1/a-very-long-name", 8), "rg1/a-v…");
        assert_eq!(clip("short", 8), "short");
    }
}
