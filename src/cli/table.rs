//! Aligned plain-text tables for people to read.

use std::io::{self, Write};

/// Write `rows` under `header`, each column as wide as its widest cell (the last one not
/// padded), two spaces between columns.
pub fn write<const N: usize>(out: &mut impl Write, header: &[&str; N], rows: &[[String; N]]) -> io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Text from an upstream made safe for a terminal: C0 and C1 control characters and DEL
/// shown as `\x1b`, `\u{9b}` (and a backslash doubled, so the escapes are unambiguous).
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0'..='\x1f' | '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `45s`, `12m`, `3h`, `2d`.
pub fn short_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let mut out = Vec::new();
        let rows = [
            ["1".to_string(), "a@x.test".to_string(), "To: a".to_string()],
            ["10".to_string(), "long@example.test".to_string(), "-".to_string()],
        ];
        super::write(&mut out, &["#", "RECIPIENT", "TO"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "#   RECIPIENT          TO\n1   a@x.test           To: a\n10  long@example.test  -\n"
        );
    }
}
