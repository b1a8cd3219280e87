//! Output formats shared by the commands: JSON lines for machines, aligned tables for people.

use std::io::Write;

use serde_json::Value;

/// `--format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// An aligned table.
    Table,
}

/// Prints `rows` in `format`; `columns` name the table's columns (JSON paths of one level).
pub fn print_rows(format: Format, rows: &[Value], columns: &[&str]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for row in rows {
                writeln!(out, "{row}")?;
            }
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| columns.iter().map(|c| cell(r.get(*c))).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |values: Vec<String>| {
                values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            writeln!(
                out,
                "{}",
                line(columns.iter().map(|c| c.to_uppercase()).collect())
            )?;
            for row in cells {
                writeln!(out, "{}", line(row))?;
            }
        }
    }
    Ok(())
}

/// Widest a table cell is cut to (at a word's end, see [`shorten`]).
const CELL_CHARS: usize = 60;

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => shorten(s, CELL_CHARS),
        Some(other) => shorten(&other.to_string(), CELL_CHARS),
    }
}

/// `text` on one line, cut to at most `max` characters at the end of a word with `…` when it
/// is longer; never inside a word (a first word longer than `max` is kept whole).
pub fn shorten(text: &str, max: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let one_line = words.join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out = String::new();
    for word in words {
        let needed = out.chars().count() + usize::from(!out.is_empty()) + word.chars().count();
        if !out.is_empty() && needed + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn a_long_cell_is_cut_at_the_end_of_a_word_and_marked() {
        let message =
            "tenant 20 does not exist in workspace 1 of the command, so the dispatch is refused";
        let short = shorten(message, 40);
        assert_eq!(short, "tenant 20 does not exist in workspace 1…");
        assert!(short.chars().count() <= 40);
        assert!(message.starts_with(short.trim_end_matches('…')));
        assert_eq!(shorten("short message", 40), "short message");
        assert_eq!(shorten("two\nlines", 40), "two lines");
        let long_word = "x".repeat(70);
        assert_eq!(
            shorten(&format!("{long_word} tail"), 40),
            format!("{long_word}…")
        );
        assert_eq!(shorten(&"word ".repeat(20), 60).chars().count(), 60);
    }
}
