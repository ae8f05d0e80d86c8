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
//! - `workload register|list|show|update|delete`: SPIFFE registration entries;
//! - `audit verify|export`: the evidence log.
//!
//! Tables by default, `--output json` for scripts; a refused call exits
//! with a code per gRPC status (`exit.rs`).

mod approval;
mod args;
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
mod workload;

use std::process::ExitCode;

pub use args::Output;
use args::*;
use client::ConnectionArgs;

/// Services, their default ports and their SPIFFE ID path.
pub const SERVICES: &[(&str, u16)] = &[
    ("inventory", 50051),
    ("authority", 50052),
    ("credential-broker", 50053),
    ("audit", 50054),
];

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
    let result = runtime.block_on(run(cli));
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

/// Runs one parsed command line.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dev {
            command:
                DevCommand::Up {
                    dir,
                    base_port,
                    log_format,
                    postgres,
                },
        } => dev::up(&dir, base_port, &log_format, postgres).await,
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
        Command::Identity { command } => identity_command(&cli.conn, command, cli.output).await,
        Command::Signal {
            command: SignalCommand::Post { signal },
        } => identity::post_signal(&cli.conn, signal, cli.output).await,
        Command::Policy { command } => {
            document(&cli.conn, policy::Kind::Policy, command, cli.output).await
        }
        Command::Rules { command } => {
            document(&cli.conn, policy::Kind::Rules, command, cli.output).await
        }
        Command::Approval { command } => approval_command(&cli.conn, command, cli.output).await,
        Command::Breakglass {
            command: BreakglassCommand::Invoke { invoke },
        } => breakglass::invoke(&cli.conn, invoke, cli.output).await,
        Command::Review { command } => review_command(&cli.conn, command, cli.output).await,
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
        Command::Lease { command } => lease_command(&cli.conn, command, cli.output).await,
        Command::Credential { command } => credential_command(&cli.conn, command, cli.output).await,
        Command::Grant { command } => grant_command(&cli.conn, command, cli.output).await,
        Command::Workload { command } => workload_command(&cli.conn, command, cli.output).await,
    }
}

async fn workload_command(
    conn: &ConnectionArgs,
    command: WorkloadCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        WorkloadCommand::Register { register } => workload::register(conn, register, output).await,
        WorkloadCommand::List { filter } => workload::list(conn, filter, output).await,
        WorkloadCommand::Show { id } => workload::show(conn, &id, output).await,
        WorkloadCommand::Update { change } => workload::update(conn, change, output).await,
        WorkloadCommand::Delete { id } => workload::delete(conn, &id, output).await,
    }
}

async fn identity_command(
    conn: &ConnectionArgs,
    command: IdentityCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        IdentityCommand::Import { import } => identity::import(conn, import, output).await,
        IdentityCommand::List { filter } => identity::list(conn, filter, output).await,
        IdentityCommand::Show { id } => identity::show(conn, &id, output).await,
        IdentityCommand::Transition { transition } => {
            identity::transition(conn, transition, output).await
        }
    }
}

async fn approval_command(
    conn: &ConnectionArgs,
    command: ApprovalCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalCommand::List { filter } => approval::list(conn, filter, output).await,
        ApprovalCommand::Show { id } => approval::show(conn, &id, output).await,
        ApprovalCommand::Approve { id, reason } => {
            approval::review(conn, &id, true, &reason, output).await
        }
        ApprovalCommand::Deny { id, reason } => {
            approval::review(conn, &id, false, &reason, output).await
        }
    }
}

async fn review_command(
    conn: &ConnectionArgs,
    command: ReviewCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        ReviewCommand::List { filter } => breakglass::list(conn, filter, output).await,
        ReviewCommand::Complete { id, note } => {
            breakglass::complete(conn, &id, &note, output).await
        }
    }
}

async fn lease_command(
    conn: &ConnectionArgs,
    command: LeaseCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        LeaseCommand::List { filter } => lease::list(conn, filter, output).await,
        LeaseCommand::Watch { watch } => lease::watch(conn, watch, output).await,
        LeaseCommand::Show { lease_id } => lease::show(conn, &lease_id, output).await,
        LeaseCommand::Revoke { selector, reason } => {
            lease::revoke(conn, selector, &reason, output).await
        }
    }
}

async fn credential_command(
    conn: &ConnectionArgs,
    command: CredentialCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        CredentialCommand::Issue { task } => credential::issue(conn, task, output).await,
        CredentialCommand::Rotate {
            task,
            overlap_seconds,
        } => credential::rotate(conn, task, overlap_seconds, output).await,
    }
}

async fn grant_command(
    conn: &ConnectionArgs,
    command: GrantCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        GrantCommand::List { filter } => grant::list(conn, filter, output).await,
        GrantCommand::Show { id } => grant::show(conn, &id, output).await,
        GrantCommand::Revoke { id, reason } => grant::revoke(conn, &id, &reason, output).await,
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
        super::args::Cli::command().debug_assert();
    }
}
