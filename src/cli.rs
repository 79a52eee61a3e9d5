//! Command-line interface (DESIGN.md §7 is the contract).

use std::process::ExitCode;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
