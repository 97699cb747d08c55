use clap::Parser;

// jemalloc hands out an 8 KiB buffer as its own page-aligned run and keeps its bookkeeping
// out of band, so the pages of hyper's idle per-connection buffers that were never written
// stay unbacked (glibc's malloc puts a chunk header beside each one and touches them).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // reqwest is built without a TLS provider of its own, so rustls needs one installed:
    // every outbound client of this process (CLI, benches) uses ring, as the listener does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = plexus::cli::Cli::parse();
    match plexus::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plexus: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
