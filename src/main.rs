use callfs::cli::{self, Command, ConfigAction};

fn main() {
    let cli = cli::parse();
    let code = match cli.command_or_default() {
        Command::Server { config } => callfs::server::run(config.as_deref()),
        Command::Config { action: ConfigAction::Validate { config } } => cli::run_validate(config.as_deref()),
        Command::Fsck { config, repair } => callfs::fsck::run(config.as_deref(), repair),
        Command::Version => cli::run_version(),
    };
    std::process::exit(code);
}
