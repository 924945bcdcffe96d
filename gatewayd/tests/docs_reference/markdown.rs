//! What the checks read from a Markdown page: its tables, fenced code blocks, links and heading anchors (pulldown-cmark,
//! GitHub's dialect).

use std::collections::HashSet;

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

/// A piece of a table cell: inline code or other text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Code(String),
    Text(String),
}

/// A table cell as pieces, so that `` `a` to `b` `` can be told from prose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cell(pub Vec<Piece>);

impl Cell {
    /// The text of a cell that is exactly one inline code span (blank text around it allowed).
    pub fn only_code(&self) -> Option<&str> {
        let mut code = None;
        for piece in &self.0 {
            match piece {
                Piece::Code(c) if code.is_none() => code = Some(c.as_str()),
                Piece::Text(t) if t.trim().is_empty() => {}
                _ => return None,
            }
        }
        code
    }

    /// `` `A` to `B` ``: the two code spans.
    pub fn range(&self) -> Option<(&str, &str)> {
        let pieces: Vec<&Piece> =
            self.0.iter().filter(|p| !matches!(p, Piece::Text(t) if t.trim().is_empty())).collect();
        match pieces[..] {
            [Piece::Code(a), Piece::Text(to), Piece::Code(b)] if to.trim() == "to" => Some((a, b)),
            _ => None,
        }
    }

    /// The cell as plain text (code spans without their backticks).
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Code(s) | Piece::Text(s) => s.as_str(),
            })
            .collect()
    }
}

/// A table: its header cells as text, and its rows.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// The index of the column whose header is `name` (case-insensitive).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h.trim().eq_ignore_ascii_case(name))
    }
}

/// A fenced code block: its info string (the language) and text.
#[derive(Clone, Debug)]
pub struct CodeBlock {
    pub lang: String,
    pub text: String,
}

/// What the checks need of a page.
#[derive(Debug, Default)]
pub struct Page {
    pub tables: Vec<Table>,
    pub code: Vec<CodeBlock>,
    /// Link and image destinations, as written.
    pub links: Vec<String>,
    /// Every inline code span.
    pub code_spans: Vec<String>,
    /// The anchors GitHub gives the headings (`## Roles and scope` → `roles-and-scope`).
    pub anchors: HashSet<String>,
}

/// GitHub's heading anchor: lower case; letters, digits, `-` and `_` kept; spaces become `-`; the rest dropped.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

pub fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let mut table: Option<Table> = None;
    let mut row: Vec<Cell> = Vec::new();
    let mut cell: Option<Cell> = None;
    let mut in_head = false;
    let mut block: Option<CodeBlock> = None;
    let mut heading: Option<String> = None;
    let mut seen: HashSet<String> = HashSet::new();
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    for event in Parser::new_ext(text, options) {
        match event {
            Event::Start(Tag::Table(_)) => table = Some(Table::default()),
            Event::End(TagEnd::Table) => page.tables.extend(table.take()),
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableHead) => {
                in_head = false;
                if let Some(t) = table.as_mut() {
                    t.header = row.drain(..).map(|c| c.text()).collect();
                }
            }
            Event::Start(Tag::TableRow) => row.clear(),
            Event::End(TagEnd::TableRow) => {
                if let Some(t) = table.as_mut() {
                    if !in_head {
                        t.rows.push(std::mem::take(&mut row));
                    }
                }
            }
            Event::Start(Tag::TableCell) => cell = Some(Cell::default()),
            Event::End(TagEnd::TableCell) => row.extend(cell.take()),
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => info.split_whitespace().next().unwrap_or("").to_owned(),
                    CodeBlockKind::Indented => String::new(),
                };
                block = Some(CodeBlock { lang, text: String::new() });
            }
            Event::End(TagEnd::CodeBlock) => page.code.extend(block.take()),
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    // Repeated headings get -1, -2, … as on GitHub.
                    let base = slug(&h);
                    let mut anchor = base.clone();
                    let mut n = 0;
                    while !seen.insert(anchor.clone()) {
                        n += 1;
                        anchor = format!("{base}-{n}");
                    }
                    page.anchors.insert(anchor);
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                page.links.push(dest_url.to_string())
            }
            Event::Text(t) => {
                if let Some(b) = block.as_mut() {
                    b.text.push_str(&t);
                } else if let Some(c) = cell.as_mut() {
                    c.0.push(Piece::Text(t.to_string()));
                }
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Code(t) => {
                page.code_spans.push(t.to_string());
                if let Some(c) = cell.as_mut() {
                    c.0.push(Piece::Code(t.to_string()));
                }
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(c) = cell.as_mut() {
                    c.0.push(Piece::Text(" ".into()));
                }
                if let Some(h) = heading.as_mut() {
                    h.push(' ');
                }
            }
            _ => {}
        }
    }
    page
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Roles and scope"), "roles-and-scope");
    assert_eq!(slug("`[[device]]`"), "device");
    assert_eq!(slug("MQTT (`drivers/src/mqtt`)"), "mqtt-driverssrcmqtt");
    assert_eq!(slug("The horizon (`reconcile_days`)"), "the-horizon-reconcile_days");
    assert_eq!(slug("Late, early leave, overtime"), "late-early-leave-overtime");
}
