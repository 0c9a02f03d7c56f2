//! The `ftl` binary: dispatches to the command line in `ftl::cli`.

fn main() -> std::process::ExitCode {
    ftl::cli::main()
}
