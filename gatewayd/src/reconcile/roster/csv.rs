//! The roster's CSV records, read with the `csv` crate. Every record remembers the line it starts on, so problems can
//! name it.

/// One record: the line it starts on (1-based) and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub line: usize,
    pub fields: Vec<String>,
}

/// A syntax error: the line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CsvError {
    pub line: usize,
    pub message: String,
}

/// Splits text into records with the `csv` crate (RFC 4180: fields optionally in double quotes with `""` for a quote,
/// quoted fields may span lines, LF or CRLF line ends; an optional UTF-8 byte order mark). Blank lines are skipped;
/// fields are trimmed of surrounding spaces and tabs. Text with an odd number of double quotes has a quoted field that
/// is not closed (or a stray quote): that is an error naming the line where the unbalanced record starts, not a field
/// that silently swallows the rest of the file.
pub fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let line_at = |byte: u64| {
        let end = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
        text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(::csv::Trim::None)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    let mut quotes_before = 0usize;
    let mut row = ::csv::StringRecord::new();
    loop {
        let start = reader.position().byte();
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(CsvError { line: line_at(start), message: e.to_string() }),
        }
        let end = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX).min(text.len());
        let quotes = text.as_bytes()[..end].iter().filter(|b| **b == b'"').count();
        let balanced = (quotes - quotes_before).is_multiple_of(2);
        quotes_before = quotes;
        // The reader's position is where the previous record's text ended: its line ends and any blank lines follow.
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(text.len());
        let first = text.as_bytes()[from..].iter().position(|b| *b != b'\r' && *b != b'\n').map_or(end, |k| from + k);
        let line = line_at(first as u64);
        if !balanced {
            return Err(CsvError {
                line,
                message: "a quoted field is not closed, or a quote stands inside an unquoted field (quote the \
                          whole field and double the quote)"
                    .into(),
            });
        }
        let fields: Vec<String> = row.iter().map(|f| f.trim_matches([' ', '\t', '\r']).to_owned()).collect();
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        records.push(Record { line, fields });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        parse(text).unwrap().into_iter().map(|r| (r.line, r.fields)).collect()
    }

    fn rows(rows: &[(usize, &[&str])]) -> Vec<(usize, Vec<String>)> {
        rows.iter().map(|(l, f)| (*l, f.iter().map(|s| (*s).to_owned()).collect())).collect()
    }

    #[test]
    fn plain_quoted_and_multiline() {
        assert_eq!(fields("a,b\n1,2\n"), rows(&[(1, &["a", "b"]), (2, &["1", "2"])]));
        assert_eq!(
            fields("\u{feff}a, b \r\n\r\n 1 ,\"x,\"\"y\"\"\"\n"),
            rows(&[(1, &["a", "b"]), (3, &["1", "x,\"y\""])])
        );
        assert_eq!(fields("a,\"two\nlines\"\nnext,"), rows(&[(1, &["a", "two\nlines"]), (3, &["next", ""])]));
        assert_eq!(fields(""), rows(&[]));
        assert_eq!(fields("x"), rows(&[(1, &["x"])]));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse("a\n\"open").unwrap_err().line, 2);
        assert_eq!(parse("a\nb,\"open\nmore\nlines").unwrap_err().line, 2);
        assert_eq!(parse("a,b\"c\n").unwrap_err().line, 1);
        assert!(parse("a\n\"x\"\"\n").unwrap_err().message.contains("not closed"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips_quoted_fields(cells in proptest::collection::vec(proptest::collection::vec("[^\r]{0,8}", 1..4), 1..5)) {
            let text: String = cells
                .iter()
                .map(|row| row.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect::<Vec<_>>().join(",") + "\n")
                .collect();
            let parsed = parse(&text).unwrap();
            // Fields come back trimmed of surrounding spaces and tabs, quoted or not.
            let trimmed: Vec<Vec<String>> =
                cells.iter().map(|r| r.iter().map(|c| c.trim_matches([' ', '\t']).to_owned()).collect()).collect();
            let want: Vec<&Vec<String>> = trimmed.iter().filter(|r| !(r.len() == 1 && r[0].is_empty())).collect();
            let got: Vec<&Vec<String>> = parsed.iter().map(|r| &r.fields).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
