//! `steward`: the command-line tool for operators and scripts.
//!
//! Today it runs the development environment (`steward dev up`, `steward dev
//! reset`) and checks the services (`steward health`, `steward whoami`), all
//! over mTLS with the operator's SVID.

mod client;
mod dev;
mod health;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Services, their default ports and their SPIFFE ID path.
pub const SERVICES: &[(&str, u16)] = &[
    ("inventory", 50051),
    ("authority", 50052),
    ("credential-broker", 50053),
    ("audit", 50054),
];

#[derive(Debug, Parser)]
#[command(
    name = "steward",
    version,
    about = "Govern the non-human identities your automation uses"
)]
struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    conn: client::ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The local development environment.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Check that every service answers its gRPC health check over mTLS.
    Health,
    /// Ask a service which SPIFFE ID it verified for you.
    Whoami {
        /// Which service to ask.
        #[arg(long, default_value = "inventory")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Create the dev PKI if missing, start all four services, wait until
    /// they are healthy and run until Ctrl-C.
    Up {
        /// Root of the dev state (PKI, data, configs).
        #[arg(long, env = "STEWARD_DEV_DIR", default_value = ".steward/dev")]
        dir: PathBuf,
        /// First port; the services listen on it and the three after it.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// Log format of the services: pretty, compact or json.
        #[arg(long, default_value = "compact")]
        log_format: String,
    },
    /// Delete the dev PKI, data and configs.
    Reset {
        #[arg(long, env = "STEWARD_DEV_DIR", default_value = ".steward/dev")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev {
                command:
                    DevCommand::Up {
                        dir,
                        base_port,
                        log_format,
                    },
            } => dev::up(&dir, base_port, &log_format).await,
            Command::Dev {
                command: DevCommand::Reset { dir },
            } => dev::reset(&dir),
            Command::Health => health::health(&cli.conn, cli.output).await,
            Command::Whoami { service } => health::whoami(&cli.conn, &service, cli.output).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
