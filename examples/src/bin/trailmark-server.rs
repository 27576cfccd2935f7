//! The reference Trailmark server: `trailmark-server --app ID:SECRET [--db PATH] [--listen ADDR] ...`

use clap::Parser;

// Small JSON values are allocated and freed by the million; mimalloc handles that far better
// than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use trailmark_examples::{ServerArgs, init_logging, start};

#[tokio::main]
async fn main() {
    let args = ServerArgs::parse();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trailmark-server: {e}");
            std::process::exit(2);
        }
    };
    if args.rotate_id_key {
        match trailmark_examples::rotate_id_key(&settings.keys) {
            Ok(version) => {
                println!(
                    "identifier key version {version} added to {}; restart every instance with this file: \
                     new rows are sealed under it, stored ones again in the background",
                    settings.keys.display()
                );
                return;
            }
            Err(e) => {
                eprintln!("trailmark-server: {e}");
                std::process::exit(1);
            }
        }
    }
    let telemetry = match init_logging(settings.json_logs, settings.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("trailmark-server: {e}");
            std::process::exit(2);
        }
    };
    let running = match start(&settings).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            std::process::exit(1);
        }
    };
    let scheme = if running.https { "https" } else { "http" };
    tracing::info!(addr = %running.addr, db = %settings.db.display(), apps = settings.apps.len(), "listening on {scheme}://{}", running.addr);
    // Machine-readable line for scripts and tests that start us on port 0.
    println!("listening {scheme}://{}", running.addr);
    let handle = running.handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
    });
    let outcome = running.task.await;
    running.background.shutdown().await;
    telemetry.shutdown();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "server failed");
            std::process::exit(1);
        }
        Err(e) => {
            tracing::error!(error = %e, "server task failed");
            std::process::exit(1);
        }
    }
}
