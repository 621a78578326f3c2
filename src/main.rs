//! The `driftd` binary: all behaviour lives in the library; see `driftd::cli`.

fn main() -> std::process::ExitCode {
    driftd::cli::main()
}
