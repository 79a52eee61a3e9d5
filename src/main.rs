//! The `smeltwatch` binary: parse the command line and hand over to [`smeltwatch::cli`].

fn main() -> std::process::ExitCode {
    smeltwatch::cli::main()
}
