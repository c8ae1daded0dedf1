use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = orderflow::cli::Cli::parse();
    // Kept until the end of main: dropping it flushes the spans still buffered.
    let _telemetry = orderflow::telemetry::init(cli.settings.log_format, cli.command.role());
    match orderflow::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
