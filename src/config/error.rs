//! Configuration errors: one located line per problem.
//!
//! Every problem names the file, the position (line and column in TOML; line and column name in
//! a CSV register map), the key path (`sources[0].devices[3].points.cell_voltage_v.type`) and
//! what was expected. Semantic checks collect all problems before failing, so that one run of
//! `smeltwatch check` shows everything that is wrong.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        /// The path that was given.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The file was read but is malformed or breaks a rule; one problem per line.
    #[error("{}", Lines(problems))]
    Invalid {
        /// Every problem found, in file order (never empty).
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The located problems (empty for [`ConfigError::Read`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems } => problems,
        }
    }
}

struct Lines<'a>(&'a [Problem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in: the configuration file or a CSV register map.
    pub file: PathBuf,
    /// Where in that file.
    pub location: Location,
    /// Key path of the offending value (`sources[0].devices[1].unit_id`); empty for the document
    /// itself. For a device expanded from a template it is the template's path.
    pub key_path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Position of a problem within its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a TOML file.
    Toml {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
    },
    /// A row of a CSV register map.
    Csv {
        /// 1-based line in the file (comment lines count).
        line: u64,
        /// The column concerned, if a single one is.
        column: Option<String>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        match &self.location {
            Location::Toml { line, column } => write!(f, "{line}:{column}:")?,
            Location::Csv { line, .. } => write!(f, "{line}:")?,
        }
        if !self.key_path.is_empty() {
            write!(f, " {}", self.key_path)?;
            if let Location::Csv {
                column: Some(column),
                ..
            } = &self.location
            {
                write!(f, " (column `{column}`)")?;
            }
            f.write_str(":")?;
        }
        write!(f, " {}", self.message)
    }
}
