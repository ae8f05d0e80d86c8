//! The runtime every Steward service shares: typed configuration, the mTLS
//! listener with caller authorisation, gRPC health and reflection, the
//! `WhoAmI` debugging RPC, database start-up, and graceful shutdown.
//!
//! A service binary is `tracing → config → Application::build → run_until`.
//! `build` binds before returning, so tests pass port 0 and read the real
//! port back with [`Application::local_addr`].
//!
//! Layer order, outermost first: connect info (the verified
//! [`steward_identity::PeerIdentity`], set by the transport) → trace span →
//! timeout → caller authorisation → the wire bound ([`bounds`]) → the
//! service's handlers.

/// Every Steward binary (each links this crate) allocates with mimalloc.
/// Cedar's evaluation, tonic's request path and sqlx allocate heavily, and
/// glibc's allocator cost them about a fifth of the CPU under load
/// (ADR 0009).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod balancer;
pub mod bounds;
pub mod config;
mod forward;
mod ops;
mod readiness;
pub mod roles;
pub mod shutdown;
pub mod singleton;
pub mod streams;
pub mod whoami;

pub use app::{Application, ServiceContext, ServiceSpec, StartError};
pub use config::{ConfigError, Peers, ServiceConfig, Settings, TlsConfig};

use std::path::PathBuf;
use std::process::ExitCode;

/// Command-line arguments every service binary accepts.
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// Path of a TOML config file (`--config`, or `STEWARD_CONFIG`).
    pub config: Option<PathBuf>,
}

impl Args {
    /// Parses `--config <path>` / `--config=<path>`; `STEWARD_CONFIG` is the
    /// fallback. Anything else is an error naming the argument.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut config = None;
        while let Some(arg) = args.next() {
            if arg == "--config" {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?));
            } else if let Some(path) = arg.strip_prefix("--config=") {
                config = Some(PathBuf::from(path));
            } else if arg == "--help" || arg == "-h" {
                return Err(String::new());
            } else {
                return Err(format!("unexpected argument {arg:?}"));
            }
        }
        if config.is_none() {
            config = std::env::var_os("STEWARD_CONFIG").map(PathBuf::from);
        }
        Ok(Self { config })
    }
}

/// The whole `main` of a service binary: parse arguments, load config
/// (`defaults`, then the file, then `STEWARD_*`), set up tracing, build, and
/// serve until SIGINT/SIGTERM.
pub fn service_main<C, F>(spec: ServiceSpec, defaults: C, build: F) -> ExitCode
where
    C: Settings,
    F: AsyncFnOnce(C) -> Result<Application, StartError>,
{
    let binary = format!("steward-{}", spec.name);
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{binary}: {message}");
            }
            eprintln!("usage: {binary} [--config <file.toml>]  (settings also from STEWARD_* env)");
            return if message.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let config = match config::load(defaults, args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{binary}: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match steward_telemetry::init(spec.name, &config.service().telemetry) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("{binary}: {error}");
                return ExitCode::from(2);
            }
        };
        let mut signals = match shutdown::Signals::install() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let app = match build(config).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        match app.run_until(async move { signals.recv().await }).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
