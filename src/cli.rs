//! Command line (`config.md` §5): `callfs [server] [-c FILE]`, `callfs config validate [-c FILE]`,
//! `callfs version` / `--version`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Loaded};

#[derive(Debug, Parser)]
#[command(name = "callfs", version, about = "CallFS storage node", long_about = None)]
pub struct Cli {
    /// Subcommand; none runs the server with the default configuration file search.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Load and validate the configuration, then run the node (the default)
    Server {
        /// Configuration file (YAML, or JSON with a .json extension); must exist
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Configuration tools
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Compare this node's blobs with the metadata: rows without bytes, unreferenced blobs
    Fsck {
        /// Configuration file (YAML, or JSON with a .json extension); must exist
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Delete unreferenced blobs older than one hour
        #[arg(long)]
        repair: bool,
    },
    /// Print the version
    Version,
}

#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum ConfigAction {
    /// Load (file + environment) and validate the configuration without starting anything
    Validate {
        /// Configuration file (YAML, or JSON with a .json extension); must exist
        #[arg(short = 'c', long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

impl Cli {
    /// The command to run, `server` (with no `--config`) when none was given.
    pub fn command_or_default(&self) -> Command {
        self.command.clone().unwrap_or(Command::Server { config: None })
    }
}

/// Parses the process arguments. Unknown commands or flags print usage on stderr and exit 2;
/// `--help` and `--version` print to stdout and exit 0 (clap's behaviour).
pub fn parse() -> Cli {
    Cli::parse()
}

/// `callfs <version>`, as printed by `callfs version` and `callfs --version`.
pub fn version_string() -> String {
    format!("callfs {}", env!("CARGO_PKG_VERSION"))
}

/// `callfs version`: prints the version, returns exit code 0.
pub fn run_version() -> i32 {
    println!("{}", version_string());
    0
}

/// `callfs config validate`: prints `Configuration is valid`, the summary and any warnings to stdout
/// and returns 0; or prints `Configuration validation failed:` and one error per line to stderr and
/// returns 1.
pub fn run_validate(config: Option<&Path>) -> i32 {
    let (code, text) = render_validate(config::load(config));
    if code == 0 {
        print!("{text}");
    } else {
        eprint!("{text}");
    }
    code
}

/// The exit code and output of `config validate` for a load result.
fn render_validate(result: Result<Loaded, Vec<String>>) -> (i32, String) {
    match result {
        Ok(loaded) => {
            let mut out = String::from("Configuration is valid\n");
            if let Some(source) = &loaded.source {
                out.push_str(&format!("Configuration file: {}\n", source.display()));
            } else {
                out.push_str("Configuration file: none (defaults and environment)\n");
            }
            out.push_str(&loaded.config.summary());
            out.push('\n');
            if !loaded.warnings.is_empty() {
                out.push_str("Warnings:\n");
                for warning in &loaded.warnings {
                    out.push_str(&format!("  {warning}\n"));
                }
            }
            (0, out)
        }
        Err(errors) => {
            let mut out = String::from("Configuration validation failed:\n");
            for error in &errors {
                out.push_str(&format!("  {error}\n"));
            }
            (1, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("callfs").chain(args.iter().copied()))
    }

    #[test]
    fn no_arguments_means_server() {
        let cli = try_parse(&[]).unwrap();
        assert_eq!(cli.command, None);
        assert_eq!(cli.command_or_default(), Command::Server { config: None });
    }

    #[test]
    fn server_takes_config_flag() {
        for flag in ["-c", "--config"] {
            let cli = try_parse(&["server", flag, "/etc/callfs.yaml"]).unwrap();
            assert_eq!(cli.command, Some(Command::Server { config: Some(PathBuf::from("/etc/callfs.yaml")) }));
        }
    }

    #[test]
    fn config_validate_takes_config_flag() {
        let cli = try_parse(&["config", "validate", "-c", "c.json"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Config { action: ConfigAction::Validate { config: Some(PathBuf::from("c.json")) } })
        );
        let cli = try_parse(&["config", "validate"]).unwrap();
        assert_eq!(cli.command, Some(Command::Config { action: ConfigAction::Validate { config: None } }));
    }

    #[test]
    fn version_command_and_flag() {
        assert_eq!(try_parse(&["version"]).unwrap().command, Some(Command::Version));
        let err = try_parse(&["--version"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DisplayVersion);
        assert_eq!(err.exit_code(), 0);
        assert_eq!(err.to_string().trim(), version_string());
        assert_eq!(version_string(), format!("callfs {}", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn help_exits_zero() {
        for args in [&["--help"][..], &["server", "--help"], &["config", "validate", "--help"]] {
            let err = try_parse(args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 0);
        }
    }

    #[test]
    fn unknown_commands_and_flags_exit_two() {
        for args in
            [&["frobnicate"][..], &["server", "--bogus"], &["config"], &["config", "check"], &["cluster", "join"]]
        {
            let err = try_parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.use_stderr(), "{args:?}");
        }
    }

    #[test]
    fn validate_output_for_a_valid_config() {
        let mut cfg = config::Config::default();
        cfg.metadata_store.kind = "postgres".into();
        cfg.metadata_store.dsn = "postgres://u:topsecret@db/callfs".into();
        let loaded = Loaded {
            config: cfg,
            warnings: vec!["raft: unknown key, ignored".into()],
            source: Some(PathBuf::from("config.yaml")),
        };
        let (code, out) = render_validate(Ok(loaded));
        assert_eq!(code, 0);
        assert!(out.starts_with("Configuration is valid\n"), "{out}");
        assert!(out.contains("Metadata store: postgres (postgres://u:***@db/callfs)"), "{out}");
        assert!(out.contains("Warnings:\n  raft: unknown key, ignored\n"), "{out}");
        assert!(!out.contains("topsecret"), "{out}");
    }

    #[test]
    fn validate_output_for_errors() {
        let (code, out) = render_validate(Err(vec![
            "auth.api_keys[0]: key shorter than 16 characters".into(),
            "log.level: expected debug, info, warn or error".into(),
        ]));
        assert_eq!(code, 1);
        assert_eq!(
            out,
            "Configuration validation failed:\n  auth.api_keys[0]: key shorter than 16 characters\n  log.level: expected debug, info, warn or error\n"
        );
    }

    #[test]
    fn run_validate_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        assert_eq!(run_validate(Some(&missing)), 1);
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "auth:\n  api_keys: [\"short\"]\n").unwrap();
        assert_eq!(run_validate(Some(&path)), 1);
    }
}
