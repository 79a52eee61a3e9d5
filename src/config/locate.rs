//! Locating problems: key paths, TOML spans and the problem collector.
//!
//! The raw serde structs carry no spans. Instead the document is parsed a second time into
//! toml's spanned tree (`DeTable`) and a key path is looked up there when a problem is reported.
//! A key that is absent (a default was used) is located at its nearest present ancestor, so
//! every problem has a line and a column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Location, Problem};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A path to a value in the document, rendered as `sources[0].devices[3].points.cell_v.type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The path one key deeper.
    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    /// The path one array element deeper.
    pub(crate) fn index(&self, index: usize) -> KeyPath {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    // Back off to a char boundary so that slicing cannot panic on a span inside a character.
    let offset = (0..=offset)
        .rev()
        .find(|&i| src.is_char_boundary(i))
        .unwrap_or(0);
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Where a point was defined: inline in the TOML file or on a row of a CSV register map.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    /// Inline; the path of the point's table.
    Toml(KeyPath),
    /// A CSV row; `path` is the logical path `register_maps.<map>.points.<name>`.
    Csv {
        file: Arc<PathBuf>,
        line: u64,
        path: KeyPath,
    },
}

/// CSV column that holds a point key (`range` is split into two columns).
fn csv_column(field: &str) -> &str {
    match field {
        "range" => "range_min",
        other => other,
    }
}

/// Collects located problems for one configuration file.
pub(crate) struct Report<'a> {
    file: PathBuf,
    src: &'a str,
    root: Spanned<DeTable<'a>>,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    /// A collector for `src`, read from `file`; `root` is the spanned parse of `src`.
    pub(crate) fn new(file: &Path, src: &'a str, root: Spanned<DeTable<'a>>) -> Self {
        Report {
            file: file.to_owned(),
            src,
            root,
            problems: Vec::new(),
        }
    }

    /// A problem at a key of the configuration file.
    pub(crate) fn at(&mut self, path: &KeyPath, message: impl Into<String>) {
        let offset = self.offset_of(path);
        let (line, column) = line_column(self.src, offset);
        self.problems.push(Problem {
            file: self.file.clone(),
            location: Location::Toml { line, column },
            key_path: path.to_string(),
            message: message.into(),
        });
    }

    /// A problem on a CSV row.
    pub(crate) fn at_csv(
        &mut self,
        file: &Path,
        line: u64,
        column: Option<&str>,
        path: &KeyPath,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            file: file.to_owned(),
            location: Location::Csv {
                line,
                column: column.map(str::to_owned),
            },
            key_path: path.to_string(),
            message: message.into(),
        });
    }

    /// A problem with one key (`field`) of a point, wherever the point was defined. An empty
    /// `field` means the point as a whole.
    pub(crate) fn at_point(&mut self, origin: &Origin, field: &str, message: impl Into<String>) {
        match origin {
            Origin::Toml(path) => {
                let path = if field.is_empty() {
                    path.clone()
                } else {
                    path.key(field)
                };
                self.at(&path, message);
            }
            Origin::Csv { file, line, path } => {
                let (path, column) = if field.is_empty() {
                    (path.clone(), None)
                } else {
                    (path.key(field), Some(csv_column(field)))
                };
                self.at_csv(file, *line, column, &path, message);
            }
        }
    }

    /// Number of problems so far.
    pub(crate) fn len(&self) -> usize {
        self.problems.len()
    }

    /// The problems, configuration file first in line order, then other files by name and line.
    pub(crate) fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems;
        let main = self.file;
        problems.sort_by(|a, b| {
            let key = |p: &Problem| {
                let position = match &p.location {
                    Location::Toml { line, column } => (*line as u64, *column),
                    Location::Csv { line, .. } => (*line, 0),
                };
                (p.file != main, p.file.clone(), position)
            };
            key(a).cmp(&key(b))
        });
        problems
    }

    /// Byte offset of the value at `path`, or of its nearest present ancestor.
    fn offset_of(&self, path: &KeyPath) -> usize {
        let mut span = self.root.span();
        let mut table: Option<&DeTable<'_>> = Some(self.root.get_ref());
        let mut current: Option<&DeValue<'_>> = None;
        for segment in &path.0 {
            let next: Option<&Spanned<DeValue<'_>>> = match (segment, table, current) {
                (Segment::Key(key), Some(table), _) => table
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == key.as_str())
                    .map(|(_, v)| v),
                (Segment::Index(index), _, Some(DeValue::Array(array))) => array.get(*index),
                _ => None,
            };
            let Some(next) = next else { break };
            span = next.span();
            current = Some(next.get_ref());
            table = match next.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        span.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_renders_like_serde_path_to_error() {
        let path = KeyPath::default()
            .key("sources")
            .index(0)
            .key("devices")
            .index(3)
            .key("points")
            .key("cell_v")
            .key("type");
        assert_eq!(path.to_string(), "sources[0].devices[3].points.cell_v.type");
    }

    #[test]
    fn line_column_is_one_based_and_counts_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(src, 0), (1, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(src, 6 + 6), (2, 6));
    }

    #[test]
    fn absent_keys_are_located_at_their_nearest_ancestor() {
        let src = "site = \"x\"\n[[sources]]\nname = \"s\"\n[[sources]]\nname = \"t\"\n";
        let root = DeTable::parse(src).expect("valid toml");
        let mut report = Report::new(Path::new("f.toml"), src, root);
        let source1 = KeyPath::default().key("sources").index(1);
        report.at(&source1.key("name"), "m");
        report.at(&source1.key("timeout"), "m");
        let lines: Vec<String> = report
            .into_problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "f.toml:4:1: sources[1].timeout: m",
                "f.toml:5:8: sources[1].name: m"
            ]
        );
    }
}
