//! The `valet` binary; all logic lives in the library.

fn main() -> std::process::ExitCode {
    valet::cli::main()
}
