use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = plexus::cli::Cli::parse();
    match plexus::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("plexus: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
