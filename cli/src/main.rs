//! `steward`: the command-line tool for operators and scripts, over mTLS
//! with the operator's SVID and, for what only a person may do, the OIDC
//! token `steward login` keeps.
//!
//! - `dev up|reset`: the development environment;
//! - `health`, `whoami`: are the services there, who do they see;
//! - `login`, `logout`: the human's token;
//! - `identity import|list|show`, `signal post`: inventory;
//! - `policy` and `rules` `validate|upload|list|show|activate|rollback`,
//!   `approval list|show|approve|deny`, `breakglass invoke`,
//!   `review list|complete`, `incident close`: authority;
//! - `lease list|show|revoke|watch`: the broker's leases;
//! - `audit verify|export`: the evidence log.
//!
//! Tables by default, `--output json` for scripts; a refused call exits
//! with a code per gRPC status (`exit.rs`).

mod approval;
mod audit;
mod breakglass;
mod client;
mod config;
mod credential;
mod dev;
mod exit;
mod format;
mod grant;
mod health;
mod identity;
mod lease;
mod login;
mod outbox;
mod policy;

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
    /// The settings file (default `~/.config/steward/config.toml`, if it
    /// exists): flags and the environment win over it.
    #[arg(long, global = true, env = "STEWARD_CONFIG")]
    config: Option<PathBuf>,
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
    /// The evidence log: verify it, export it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Keep an OIDC token naming you, the human behind the operator SVID,
    /// for the actions only a person may take (approve, break-glass,
    /// complete a review).
    Login {
        /// Get the token from the dev issuer of `steward dev up`.
        #[arg(long, conflicts_with = "from_file")]
        dev: bool,
        /// Your name as the token's subject (with --dev). Default: $USER.
        #[arg(long = "as", requires = "dev")]
        subject: Option<String>,
        /// The dev state directory (with --dev).
        #[arg(long, env = "STEWARD_DEV_DIR", default_value = ".steward/dev")]
        dir: PathBuf,
        /// How long the dev token lasts.
        #[arg(long, default_value_t = login::DEV_TOKEN_MINUTES)]
        ttl_minutes: u32,
        /// Keep a token you obtained from your organisation's OIDC issuer.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Forget the stored OIDC token.
    Logout,
    /// Inventory: import identities, list and show them.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Risk signals: report one (response rules may act on it).
    Signal {
        #[command(subcommand)]
        command: SignalCommand,
    },
    /// Cedar policy sets: validate, upload, list, show, activate, roll back.
    Policy {
        #[command(subcommand)]
        command: DocumentCommand,
    },
    /// Response rules (what a risk signal sets off): validate, upload,
    /// list, show, activate, roll back.
    Rules {
        #[command(subcommand)]
        command: DocumentCommand,
    },
    /// Approval requests: list, show, approve, deny (approving needs
    /// `steward login`).
    Approval {
        #[command(subcommand)]
        command: ApprovalCommand,
    },
    /// Break-glass: emergency authority for one action, as the logged-in
    /// human; always recorded, always reviewed afterwards.
    Breakglass {
        #[command(subcommand)]
        command: BreakglassCommand,
    },
    /// Post-action reviews of break-glass: list (--overdue), complete.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Incidents: close one (its grants end, its leases are revoked).
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Credential leases: list, show, revoke.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Credentials for a task: issue one, or rotate an identity's (the
    /// broker asks authority first; exit 6 names an approval to wait for).
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
    /// Grants from approvals and break-glass: list, show, revoke.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Print a completion script for your shell: `steward completions bash
    /// > ~/.local/share/bash-completion/completions/steward`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The evidence each service holds for audit: what waits, and what
    /// audit refused (parked) until you send it again.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Ask a service which SPIFFE ID it verified for you.
    Whoami {
        /// Which service to ask.
        #[arg(long, default_value = "inventory")]
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Count what waits and list what is parked, per service. Exits 6
    /// when any record is parked.
    Show {
        /// Only this service (repeatable; default: inventory, authority,
        /// credential-broker).
        #[arg(long)]
        service: Vec<String>,
    },
    /// Send parked records to audit again, once their cause is fixed.
    Retry {
        /// The service whose outbox holds them.
        #[arg(long)]
        service: String,
        /// The parked records, by seq (as `show` lists them).
        #[arg(long = "seq", required_unless_present = "all", conflicts_with = "all")]
        seqs: Vec<i64>,
        /// Every parked record of the service.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the evidence log: checkpoint signature, every leaf, the tree,
    /// and consistency with the checkpoint trusted on the previous run.
    /// Exits 3 when the log fails verification.
    Verify {
        /// The log's verifier key (`<name>+<hash>+<key>`), from a source you trust.
        #[arg(long, default_value = ".steward/dev/pki/audit-log.vkey")]
        vkey: PathBuf,
        /// Where the last trusted checkpoint is kept between runs.
        #[arg(long, default_value = ".steward/audit/trusted-checkpoint")]
        state: PathBuf,
    },
    /// Prove one record is in the log: its inclusion proof against a
    /// checkpoint whose signature is checked with --vkey, and its leaf
    /// recomputed from its fields. Exits 3 when the proof fails.
    Proof {
        /// The record's leaf hash (64 hex digits) or its index.
        leaf: String,
        /// The log's verifier key (`<name>+<hash>+<key>`), from a source you trust.
        #[arg(long, default_value = ".steward/dev/pki/audit-log.vkey")]
        vkey: PathBuf,
    },
    /// Stream the log as it grows (the whole log first with the default
    /// --from 0), filtered by chain, incident, identity or action.
    Follow {
        #[command(flatten)]
        follow: audit::FollowArgs,
    },
    /// Export entries as JSON Lines (one `{index, leaf_hash, entry}` per line) for SIEM ingestion.
    Export {
        /// First index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// End index (exclusive); default: the current tree size.
        #[arg(long)]
        to: Option<u64>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Import an AWS IAM credential report, Kubernetes ServiceAccounts or
    /// Steward's generic CSV/JSON; prints the drift and rejected rows, and
    /// exits 2 when any row was rejected (the others are applied).
    Import {
        #[command(flatten)]
        import: identity::ImportArgs,
    },
    /// Identities matching the filters.
    List {
        #[command(flatten)]
        filter: identity::Filter,
    },
    /// One identity: owners, state, risk and why.
    Show { id: String },
    /// Move an identity to another lifecycle state (watchlisted,
    /// restricted, suspended, revoked, active …). When you are logged in,
    /// authority decides first, with any grant you hold (break-glass too).
    Transition {
        #[command(flatten)]
        transition: identity::TransitionArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SignalCommand {
    /// Report a risk signal on an identity; prints its new risk.
    Post {
        #[command(flatten)]
        signal: identity::SignalArgs,
    },
}

/// The commands of a versioned document of authority's.
#[derive(Debug, Subcommand)]
enum DocumentCommand {
    /// Check a file without uploading it (exit 2 when it is not valid).
    Validate { file: PathBuf },
    /// Upload a file as the next version (checked first).
    Upload {
        file: PathBuf,
        /// What this version changes.
        #[arg(long, default_value = "")]
        description: String,
        /// Make it the active version too (needs --reason).
        #[arg(long, requires = "reason")]
        activate: bool,
        /// Why it is activated (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Every version, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One version with its text (the active one by default).
    Show { version: Option<u64> },
    /// Make a version the active one.
    Activate {
        version: u64,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Go back to the version active before this one.
    Rollback {
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalCommand {
    /// Approval requests, newest first (pending unless --state says).
    List {
        #[command(flatten)]
        filter: approval::Filter,
    },
    /// One request with its reviews.
    Show { id: String },
    /// Approve as the logged-in human.
    Approve {
        id: String,
        /// Why (recorded with the review).
        #[arg(long)]
        reason: String,
    },
    /// Deny as the logged-in human; one deny denies the request.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum BreakglassCommand {
    /// Ask for emergency authority over one action on one identity.
    Invoke {
        #[command(flatten)]
        invoke: breakglass::InvokeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ReviewCommand {
    /// Post-action reviews (open ones by default).
    List {
        #[command(flatten)]
        filter: breakglass::ReviewFilter,
    },
    /// Complete a review as one of its assignees.
    Complete {
        id: String,
        /// What the review found.
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// Close an incident: end its grants, cancel its pending approval
    /// requests, revoke its credential leases.
    Close {
        incident_ref: String,
        #[arg(long)]
        reason: String,
        /// Joins the closure's records, and the revocations of the
        /// incident's leases, to a chain of evidence.
        #[arg(long, default_value = "")]
        correlation_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Issue an API token or a JWT-SVID for an identity; prints the secret
    /// once.
    Issue {
        #[command(flatten)]
        task: credential::TaskArgs,
    },
    /// Replace an identity's credentials of a kind: the new one now, the
    /// old ones revoked after the overlap and confirmed rejected.
    Rotate {
        #[command(flatten)]
        task: credential::TaskArgs,
        /// How long the old credentials stay valid.
        #[arg(long, default_value_t = 0)]
        overlap_seconds: u32,
    },
}

#[derive(Debug, Subcommand)]
enum GrantCommand {
    /// Grants matching the filters, newest first.
    List {
        #[command(flatten)]
        filter: grant::Filter,
    },
    /// One grant, every field.
    Show { id: String },
    /// End a grant early.
    Revoke {
        id: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Leases matching the filters, newest last.
    List {
        #[command(flatten)]
        filter: lease::Filter,
    },
    /// One lease, every field.
    Show { lease_id: String },
    /// Follow revocations as they happen (and replay with --after).
    Watch {
        #[command(flatten)]
        watch: lease::WatchArgs,
    },
    /// Revoke one lease, or every active lease of an incident, identity or
    /// holder. The broker asks authority first.
    Revoke {
        #[command(flatten)]
        selector: lease::Selector,
        /// Why (recorded with the revocation).
        #[arg(long)]
        reason: String,
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

/// The command line, with the settings file below it.
fn parse() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (path, explicit) = match &cli.config {
        Some(path) => (Some(path.clone()), true),
        None => (config::default_path(), false),
    };
    if let Some(path) = path
        && let Some(file) = config::load(&path, explicit)?
    {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        config::apply(file, dir, &matches, &mut cli.conn, &mut cli.output)?;
    }
    Ok(cli)
}

/// `steward … | head` closes the pipe early. End as other tools do, with
/// the shell's code for SIGPIPE, instead of `println!`'s panic.
fn quiet_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.contains("Broken pipe") || text.contains("BrokenPipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_a_closed_pipe();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(exit::BAD_ARGUMENT);
        }
    };
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
            Command::Audit {
                command: AuditCommand::Verify { vkey, state },
            } => audit::verify(&cli.conn, &vkey, &state, cli.output).await,
            Command::Audit {
                command: AuditCommand::Proof { leaf, vkey },
            } => audit::proof(&cli.conn, &vkey, &leaf, cli.output).await,
            Command::Audit {
                command: AuditCommand::Follow { follow },
            } => audit::follow(&cli.conn, follow, cli.output).await,
            Command::Audit {
                command: AuditCommand::Export { from, to, file },
            } => audit::export(&cli.conn, from, to, file).await,
            Command::Outbox {
                command: OutboxCommand::Show { service },
            } => outbox::show(&cli.conn, &service, cli.output).await,
            Command::Outbox {
                command: OutboxCommand::Retry { service, seqs, all },
            } => outbox::retry(&cli.conn, &service, seqs, all, cli.output).await,
            Command::Whoami { service } => health::whoami(&cli.conn, &service, cli.output).await,
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "steward",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Login {
                dev,
                subject,
                dir,
                ttl_minutes,
                from_file,
            } => match (dev, from_file) {
                (true, _) => {
                    let subject = subject.unwrap_or_else(login::default_subject);
                    login::login_dev(
                        &dir,
                        &subject,
                        ttl_minutes,
                        cli.conn.token_file.as_deref(),
                        cli.output,
                    )
                }
                (false, Some(file)) => {
                    login::login_from_file(&file, cli.conn.token_file.as_deref(), cli.output)
                }
                (false, None) => Err(anyhow::anyhow!(
                    "say where the token comes from: --dev (the dev issuer of `steward dev up`) or --from-file <token file>"
                )),
            },
            Command::Logout => login::logout(cli.conn.token_file.as_deref()),
            Command::Identity { command } => match command {
                IdentityCommand::Import { import } => {
                    identity::import(&cli.conn, import, cli.output).await
                }
                IdentityCommand::List { filter } => {
                    identity::list(&cli.conn, filter, cli.output).await
                }
                IdentityCommand::Show { id } => identity::show(&cli.conn, &id, cli.output).await,
                IdentityCommand::Transition { transition } => {
                    identity::transition(&cli.conn, transition, cli.output).await
                }
            },
            Command::Signal {
                command: SignalCommand::Post { signal },
            } => identity::post_signal(&cli.conn, signal, cli.output).await,
            Command::Policy { command } => document(&cli.conn, policy::Kind::Policy, command, cli.output).await,
            Command::Rules { command } => document(&cli.conn, policy::Kind::Rules, command, cli.output).await,
            Command::Approval { command } => match command {
                ApprovalCommand::List { filter } => {
                    approval::list(&cli.conn, filter, cli.output).await
                }
                ApprovalCommand::Show { id } => approval::show(&cli.conn, &id, cli.output).await,
                ApprovalCommand::Approve { id, reason } => {
                    approval::review(&cli.conn, &id, true, &reason, cli.output).await
                }
                ApprovalCommand::Deny { id, reason } => {
                    approval::review(&cli.conn, &id, false, &reason, cli.output).await
                }
            },
            Command::Breakglass {
                command: BreakglassCommand::Invoke { invoke },
            } => breakglass::invoke(&cli.conn, invoke, cli.output).await,
            Command::Review { command } => match command {
                ReviewCommand::List { filter } => {
                    breakglass::list(&cli.conn, filter, cli.output).await
                }
                ReviewCommand::Complete { id, note } => {
                    breakglass::complete(&cli.conn, &id, &note, cli.output).await
                }
            },
            Command::Incident {
                command:
                    IncidentCommand::Close {
                        incident_ref,
                        reason,
                        correlation_id,
                    },
            } => {
                approval::close_incident(
                    &cli.conn,
                    &incident_ref,
                    &reason,
                    &correlation_id,
                    cli.output,
                )
                .await
            }
            Command::Lease { command } => match command {
                LeaseCommand::List { filter } => lease::list(&cli.conn, filter, cli.output).await,
                LeaseCommand::Watch { watch } => lease::watch(&cli.conn, watch, cli.output).await,
                LeaseCommand::Show { lease_id } => {
                    lease::show(&cli.conn, &lease_id, cli.output).await
                }
                LeaseCommand::Revoke { selector, reason } => {
                    lease::revoke(&cli.conn, selector, &reason, cli.output).await
                }
            },
            Command::Credential { command } => match command {
                CredentialCommand::Issue { task } => {
                    credential::issue(&cli.conn, task, cli.output).await
                }
                CredentialCommand::Rotate {
                    task,
                    overlap_seconds,
                } => credential::rotate(&cli.conn, task, overlap_seconds, cli.output).await,
            },
            Command::Grant { command } => match command {
                GrantCommand::List { filter } => grant::list(&cli.conn, filter, cli.output).await,
                GrantCommand::Show { id } => grant::show(&cli.conn, &id, cli.output).await,
                GrantCommand::Revoke { id, reason } => {
                    grant::revoke(&cli.conn, &id, &reason, cli.output).await
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {:?}: {}", status.code(), status.message()),
                None => eprintln!("error: {error:#}"),
            }
            let (code, hint) = exit::failure(&error);
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            code
        }
    }
}

async fn document(
    conn: &client::ConnectionArgs,
    kind: policy::Kind,
    command: DocumentCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        DocumentCommand::Validate { file } => policy::validate(conn, kind, &file, output).await,
        DocumentCommand::Upload {
            file,
            description,
            activate,
            reason,
        } => {
            let activate = reason.as_deref().filter(|_| activate);
            policy::upload(conn, kind, &file, &description, activate, output).await
        }
        DocumentCommand::List { limit } => policy::list(conn, kind, limit, output).await,
        DocumentCommand::Show { version } => {
            policy::show(conn, kind, version.unwrap_or(0), output).await
        }
        DocumentCommand::Activate { version, reason } => {
            policy::activate(conn, kind, Some(version), &reason, output).await
        }
        DocumentCommand::Rollback { reason } => {
            policy::activate(conn, kind, None, &reason, output).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks names, groups and defaults only when asked: ask here, so
    /// a clash fails the build's tests rather than the operator's shell.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
