//! Entry point: parse the command line and hand over to the library. Exit status 2 means an
//! invalid command line or configuration, 1 a runtime failure.

use std::process::ExitCode;

use shoptet_proxy::cli::{self, Command};

fn main() -> ExitCode {
    let cli = cli::parse();
    match cli.command {
        Command::CheckConfig => match cli::check_config(cli.config.as_deref()) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoptet-proxy: {e}");
                ExitCode::from(2)
            }
        },
        Command::GenKey => match cli::gen_key() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoptet-proxy: cannot read the OS random generator: {e}");
                ExitCode::FAILURE
            }
        },
        other => {
            eprintln!("shoptet-proxy: {other:?} is not available yet");
            ExitCode::FAILURE
        }
    }
}
