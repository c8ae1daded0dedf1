use clap::Parser;

/// mimalloc instead of glibc's malloc: per-thread free lists without
/// glibc's arena locking and consolidation, which took a sixth of the
/// server's CPU at 700 orders/s (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = orderflow::cli::Cli::parse();
    let runtime = match orderflow::cli::runtime(&cli) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Kept until the end of main: dropping it flushes the spans still buffered.
        let _telemetry = orderflow::telemetry::init(cli.settings.log_format, cli.command.role());
        match orderflow::cli::run(cli).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
