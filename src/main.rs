//! Entry point: parse the command line and hand over to the library.

fn main() -> std::process::ExitCode {
    shoptet_proxy::commands::run(shoptet_proxy::cli::parse())
}
