use clap::Parser;
use tracing_subscriber::EnvFilter;

// Many small allocations per request on several threads: mimalloc spends far less on them than
// the system allocator (which was a fifth of the CPU of an emergency summary).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("EPACCS_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = epaccs::cli::Cli::parse();
    match epaccs::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
