use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = orderflow::cli::Cli::parse();
    orderflow::telemetry::init_logging(cli.settings.log_format);
    match orderflow::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
