//! A small, strict CSV reader (RFC 4180): comma separated, fields optionally in double quotes with `""` for a quote,
//! quoted fields may span lines, LF or CRLF line ends, an optional UTF-8 byte order mark. Every record remembers the line
//! it starts on, so problems can name it.

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

/// Splits text into records. Blank lines are skipped. Unquoted fields are trimmed of surrounding spaces and tabs.
pub fn parse(text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    // State: at the start of a field, inside an unquoted field, inside quotes, or just after a closing quote.
    #[derive(PartialEq)]
    enum State {
        Start,
        Plain,
        Quoted,
        AfterQuote,
    }
    let mut state = State::Start;
    let mut chars = text.chars().peekable();
    let end_record = |fields: &mut Vec<String>, field: &mut String, records: &mut Vec<Record>, line: usize| {
        fields.push(std::mem::take(field));
        let blank = fields.len() == 1 && fields[0].trim().is_empty();
        let taken = std::mem::take(fields);
        if !blank {
            records.push(Record { line, fields: taken });
        }
    };
    while let Some(c) = chars.next() {
        match state {
            State::Quoted => match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => state = State::AfterQuote,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            },
            _ => match c {
                ',' => {
                    if state == State::Plain {
                        trim_in_place(&mut field);
                    }
                    fields.push(std::mem::take(&mut field));
                    state = State::Start;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    if state == State::Plain {
                        trim_in_place(&mut field);
                    }
                    end_record(&mut fields, &mut field, &mut records, record_line);
                    line += 1;
                    record_line = line;
                    state = State::Start;
                }
                '"' if state == State::Start && field.trim().is_empty() => {
                    field.clear();
                    state = State::Quoted;
                }
                '"' => {
                    return Err(CsvError {
                        line,
                        message: "a quote inside an unquoted field (quote the whole field and double the quote)".into(),
                    })
                }
                c if state == State::AfterQuote => {
                    if c == ' ' || c == '\t' || c == '\r' {
                        continue;
                    }
                    return Err(CsvError { line, message: format!("unexpected `{c}` after a closing quote") });
                }
                c => {
                    field.push(c);
                    state = State::Plain;
                }
            },
        }
    }
    match state {
        State::Quoted => {
            return Err(CsvError { line: record_line, message: "a quoted field is not closed".into() });
        }
        State::Plain => trim_in_place(&mut field),
        _ => {}
    }
    if !(fields.is_empty() && field.is_empty()) {
        end_record(&mut fields, &mut field, &mut records, record_line);
    }
    Ok(records)
}

fn trim_in_place(s: &mut String) {
    let trimmed = s.trim_matches([' ', '\t', '\r']);
    if trimmed.len() != s.len() {
        *s = trimmed.to_owned();
    }
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
        assert_eq!(parse("a,b\"c\n").unwrap_err().line, 1);
        assert!(parse("\"a\"b\n").unwrap_err().message.contains("after a closing quote"));
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
            let want: Vec<&Vec<String>> = cells.iter().filter(|r| !(r.len() == 1 && r[0].trim().is_empty())).collect();
            let got: Vec<&Vec<String>> = parsed.iter().map(|r| &r.fields).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
