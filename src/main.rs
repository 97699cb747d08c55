use clap::Parser;

fn main() -> std::process::ExitCode {
    // reqwest is built without a TLS provider of its own (STACK trap 4): every outbound
    // client of this process (CLI, benches) uses ring, as the listener does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = plexus::cli::Cli::parse();
    match plexus::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("plexus: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
