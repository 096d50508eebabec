//! What the commands print: aligned tables, key/value lists, byte sizes,
//! colours on terminals, and JSON for `--json`.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// A table with a header row, printed with columns aligned by padding every
/// cell but the last to the widest cell of its column, two spaces apart.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        render_rows(std::iter::once(&header).chain(&self.rows))
    }
}

/// Aligned lines of `KEY  value` pairs, for single objects (a status, a unit).
pub fn render_kv(pairs: &[(String, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
    render_rows(rows.iter())
}

fn render_rows<'a>(rows: impl Iterator<Item = &'a Vec<String>> + Clone) -> String {
    let cols = rows.clone().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows.clone() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for an empty cell, so that columns stay readable.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".to_string() } else { s.to_string() }
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`,
/// `7.8 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `used` as a whole percentage of `total`; 0 when `total` is 0.
pub fn percent(used: u64, total: u64) -> u64 {
    if total == 0 {
        0
    } else {
        ((used as f64 / total as f64) * 100.0).round() as u64
    }
}

/// Terminal colours used for journal priorities and warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// Bold red: errors and worse.
    Red,
    /// Bold yellow: warnings.
    Yellow,
}

/// Wraps `s` in the ANSI escape sequences of `colour`.
pub fn paint(s: &str, colour: Colour) -> String {
    let code = match colour {
        Colour::Red => "1;31",
        Colour::Yellow => "1;33",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// Whether stdout is a terminal that should get colours (not when `NO_COLOR`
/// is set, see no-color.org).
pub fn stdout_colours() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes `text` to stdout and flushes, so that a closed pipe shows up as a
/// `BrokenPipe` error (which `main` treats as a normal end) instead of a
/// panic in `print!`.
pub fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Prints `value` as one line of JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    Ok(out(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let mut t = Table::new(&["UNIT", "ACTIVE", "DESCRIPTION"]);
        t.row(vec![
            "ssh.service".into(),
            "active".into(),
            "OpenBSD Secure Shell".into(),
        ]);
        t.row(vec!["a.timer".into(), "inactive".into(), String::new()]);
        assert_eq!(
            t.render(),
            "UNIT         ACTIVE    DESCRIPTION\n\
             ssh.service  active    OpenBSD Secure Shell\n\
             a.timer      inactive\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["é".into(), "x".into()]);
        t.row(vec!["ab".into(), "y".into()]);
        assert_eq!(t.render(), "A   B\né   x\nab  y\n");
    }

    #[test]
    fn short_rows_are_padded() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["1".into()]);
        assert_eq!(t.render(), "A  B  C\n1\n");
    }

    #[test]
    fn key_values_align() {
        let kv = [
            ("HOSTNAME".to_string(), "n1".to_string()),
            ("UP".to_string(), "1m".to_string()),
        ];
        assert_eq!(render_kv(&kv), "HOSTNAME  n1\nUP        1m\n");
    }

    #[test]
    fn byte_sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 << 30), "8.0 GiB");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(5, 0), 0);
    }

    #[test]
    fn paint_wraps_in_escape_codes() {
        assert_eq!(paint("x", Colour::Red), "\x1b[1;31mx\x1b[0m");
        assert_eq!(or_dash(""), "-");
    }
}
