//! The `iniesta` binary.

fn main() -> std::process::ExitCode {
    iniesta::cli::main()
}
