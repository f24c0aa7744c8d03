//! Where in the file a problem is: line and column of a byte offset, and the dotted key
//! (`sinks[1].url`) at an offset or the span of a key, from the parsed document's spans.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path as people write it: `sinks[1].url`, `rules.foreign-change.severity`.
pub fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// The deepest key whose key or value span holds `offset`. Table headers (`[watch]`) span
/// only the header, not the keys below them, so every branch is searched.
pub fn path_at(doc: &DeTable<'_>, offset: usize) -> Vec<Step> {
    let mut path = Vec::new();
    find_in_table(doc, offset, &mut path);
    path
}

fn holds(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn find_in_table(t: &DeTable<'_>, offset: usize, path: &mut Vec<Step>) -> bool {
    for (k, v) in t.iter() {
        path.push(Step::Key(k.get_ref().to_string()));
        if find_in_value(v.get_ref(), offset, path)
            || holds(&k.span(), offset)
            || holds(&v.span(), offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(v: &DeValue<'_>, offset: usize, path: &mut Vec<Step>) -> bool {
    match v {
        DeValue::Table(t) => find_in_table(t, offset, path),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if find_in_value(item.get_ref(), offset, path) || holds(&item.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The span of the value at `path` (or of the nearest table on the way that exists).
pub fn span_of(doc: &DeTable<'_>, path: &[Step]) -> Option<Range<usize>> {
    let mut best = None;
    let mut table = Some(doc);
    let mut value: Option<&DeValue<'_>> = None;
    for step in path {
        let next = match (step, table, value) {
            (Step::Key(k), Some(t), _) => t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                .map(|(_, v)| v),
            (Step::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        best = Some(next.span());
        value = Some(next.get_ref());
        table = match next.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 6), (2, 1));
        // after the two-byte é
        assert_eq!(line_column(t, 9), (2, 3));
    }

    #[test]
    fn finds_the_key_at_an_offset_and_the_span_of_a_path() -> Result<(), toml::de::Error> {
        let text =
            "[store]\npath = \"/x\"\n\n[[sinks]]\nname = \"a\"\n[[sinks]]\nname = \"b\"\nurl = 3\n";
        let doc = DeTable::parse(text)?;
        let at = text.find("3").unwrap_or(0);
        assert_eq!(render(&path_at(doc.get_ref(), at)), "sinks[1].url");
        let span = span_of(
            doc.get_ref(),
            &[
                Step::Key("sinks".into()),
                Step::Index(1),
                Step::Key("url".into()),
            ],
        );
        assert_eq!(span.map(|s| s.start), Some(at));
        Ok(())
    }
}
