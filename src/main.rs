use clap::Parser;

/// Temporary dispatch on the `sim` branch for manual testing; the lead owns the real CLI.
#[derive(Parser)]
#[command(version = shoptet_proxy::VERSION)]
enum Cli {
    /// Run the Shoptet simulator alone.
    Sim(shoptet_proxy::sim::SimArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse() {
        Cli::Sim(args) => match shoptet_proxy::sim::run_cli(args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoptet-proxy sim: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
