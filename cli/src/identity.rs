//! `steward identity` and `steward signal`: inventory from the command line.
//!
//! `identity import` sends an AWS IAM credential report, Kubernetes
//! ServiceAccounts or Steward's generic CSV/JSON (`docs/inventory-import.md`)
//! and prints the drift and every rejected row; `identity list|show` read
//! identities with their owners, state and risk; `signal post` reports a
//! risk signal (a leaked secret, say), which response rules may act on.

use std::process::ExitCode;

use anyhow::Context;
use steward_proto::steward::inventory::v1 as pb;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use steward_telemetry::TracedChannel;

use crate::Output;
use crate::client::ConnectionArgs;
use crate::format;

/// The exit code of an import that rejected rows (the others were applied).
pub const EXIT_ROWS_REJECTED: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `aws iam get-credential-report` (its JSON, or the CSV in it).
    Aws,
    /// `aws iam get-account-authorization-details`: users, roles and the
    /// policies they hold.
    #[value(name = "aws-authz")]
    AwsAuthz,
    /// `kubectl get serviceaccounts -A -o json`.
    #[value(name = "k8s", alias = "kubernetes")]
    Kubernetes,
    /// `gcloud iam service-accounts list` / `… keys list`, `--format=json`.
    Gcp,
    /// Microsoft Graph `/applications` and `/servicePrincipals` JSON.
    Azure,
    /// GitHub app installations, deploy keys, fine-grained tokens (REST JSON).
    Github,
    /// Steward's generic CSV.
    Csv,
    /// Steward's generic JSON.
    Json,
}

/// What `import` sends.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The file to import.
    pub file: std::path::PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// The source system of the rows (vanished NHIs are those of this
    /// source missing from the file); per format by default.
    #[arg(long)]
    pub source_system: Option<String>,
    /// The environment of rows that name none.
    #[arg(long)]
    pub environment: Option<String>,
    /// Report what would change (every drift, not only the counts) and
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kubernetes: an annotation naming a ServiceAccount's technical owner
    /// (repeatable, first present wins); by default steward/technical-owner,
    /// owner, team.
    #[arg(long = "owner-annotation")]
    pub owner_annotations: Vec<String>,
    /// The incident or ticket this import serves (recorded as evidence).
    #[arg(long)]
    pub incident: Option<String>,
}

/// Which identities `list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Lifecycle states (repeatable): active, watchlisted, restricted,
    /// suspended, revoked, decommissioned.
    #[arg(long = "state", value_parser = lifecycle_state)]
    pub states: Vec<i32>,
    /// Kinds (repeatable), e.g. connector, api-key, service-account.
    #[arg(long = "kind", value_parser = identity_kind)]
    pub kinds: Vec<i32>,
    /// The business or technical owner's name.
    #[arg(long)]
    pub owner: Option<String>,
    /// "key" or "key=value".
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub environment: Option<String>,
    #[arg(long)]
    pub source_system: Option<String>,
    /// A substring of the name, external id or purpose.
    #[arg(long)]
    pub text: Option<String>,
    /// Stop after this many identities.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// What `signal post` reports.
#[derive(Debug, Clone, clap::Args)]
pub struct SignalArgs {
    /// The inventory identity.
    #[arg(long)]
    pub identity: String,
    /// secret-exposed, anomalous-location, privilege-sprawl,
    /// rotation-failed, dormant, owner-departed, policy-violation, custom.
    #[arg(long, value_parser = signal_kind)]
    pub kind: i32,
    /// low, medium, high, critical.
    #[arg(long, value_parser = severity)]
    pub severity: i32,
    /// What raised it, e.g. "secret-scanner".
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub summary: String,
    /// Where the evidence is, e.g. the finding's URL.
    #[arg(long, default_value = "")]
    pub evidence_ref: String,
    #[arg(long)]
    pub incident: Option<String>,
}

/// An identity as printed.
#[derive(Debug, serde::Serialize)]
pub struct IdentityRow {
    pub id: String,
    pub kind: String,
    pub display_name: String,
    pub source_system: String,
    pub external_id: String,
    pub environment: String,
    pub state: String,
    pub business_owner: String,
    pub technical_owner: String,
    pub purpose: String,
    pub spiffe_id: String,
    pub risk_score: u32,
    pub risk_reasons: Vec<String>,
    pub expires: String,
    pub last_used: String,
    pub last_rotated: String,
    pub version: i64,
}

async fn inventory(args: &ConnectionArgs) -> anyhow::Result<InventoryServiceClient<TracedChannel>> {
    Ok(
        InventoryServiceClient::new(args.channel("inventory").await?)
            .max_encoding_message_size(64 * 1024 * 1024),
    )
}

fn context(incident: Option<&String>) -> Option<pb::ChangeContext> {
    incident.map(|i| pb::ChangeContext {
        incident_ref: i.clone(),
        correlation_id: String::new(),
    })
}

/// The words the CLI takes for an enum, from its proto names
/// (`LIFECYCLE_STATE_SUSPENDED` → `suspended`).
fn word(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_lowercase()
        .replace('_', "-")
}

/// A proto enum value from its CLI word (`suspended` →
/// `LIFECYCLE_STATE_SUSPENDED`); `UNSPECIFIED` is never one.
fn proto_enum<E: Into<i32>>(
    text: &str,
    prefix: &str,
    from: impl Fn(&str) -> Option<E>,
) -> Result<i32, String> {
    let name = format!("{prefix}{}", text.to_uppercase().replace('-', "_"));
    match from(&name).map(Into::into) {
        Some(value) if value != 0 => Ok(value),
        _ => Err(format!("{text:?} is not one Steward knows")),
    }
}

fn lifecycle_state(text: &str) -> Result<i32, String> {
    proto_enum(text, "LIFECYCLE_STATE_", pb::LifecycleState::from_str_name)
}

fn identity_kind(text: &str) -> Result<i32, String> {
    proto_enum(text, "IDENTITY_KIND_", pb::IdentityKind::from_str_name)
}

fn signal_kind(text: &str) -> Result<i32, String> {
    proto_enum(text, "SIGNAL_KIND_", pb::SignalKind::from_str_name)
}

fn severity(text: &str) -> Result<i32, String> {
    proto_enum(text, "SEVERITY_", pb::Severity::from_str_name)
}

#[derive(Debug, serde::Serialize)]
struct Imported {
    rows: u64,
    created: u64,
    changed: u64,
    unchanged: u64,
    vanished: u64,
    rejected: u64,
    dry_run: bool,
    errors: Vec<serde_json::Value>,
    drift: Vec<serde_json::Value>,
}

pub async fn import(
    args: &ConnectionArgs,
    import: ImportArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let content = std::fs::read(&import.file)
        .with_context(|| format!("cannot read {}", import.file.display()))?;
    let format = match import.format {
        Format::Aws => pb::ImportFormat::AwsIamCredentialReport,
        Format::AwsAuthz => pb::ImportFormat::AwsIamAuthorizationDetails,
        Format::Kubernetes => pb::ImportFormat::KubernetesServiceAccounts,
        Format::Gcp => pb::ImportFormat::GcpServiceAccounts,
        Format::Azure => pb::ImportFormat::EntraApplications,
        Format::Github => pb::ImportFormat::GithubCredentials,
        Format::Csv => pb::ImportFormat::Csv,
        Format::Json => pb::ImportFormat::Json,
    };
    if output == Output::Table {
        eprintln!(
            "importing {} ({} bytes)…",
            import.file.display(),
            content.len()
        );
    }
    let mut client = inventory(args).await?;
    let call = client.import_identities(pb::ImportIdentitiesRequest {
        format: format as i32,
        content,
        source_system: import.source_system.unwrap_or_default(),
        environment: import.environment.unwrap_or_default(),
        dry_run: import.dry_run,
        context: context(import.incident.as_ref()),
        owner_annotations: import.owner_annotations,
    });
    let r = format::waiting("inventory is importing", call)
        .await?
        .into_inner();
    let imported = Imported {
        rows: r.rows,
        created: r.created,
        changed: r.changed,
        unchanged: r.unchanged,
        vanished: r.vanished,
        rejected: r.rejected,
        dry_run: r.dry_run,
        errors: r
            .errors
            .iter()
            .map(|e| serde_json::json!({"line": e.line, "field": e.field, "reason": e.reason}))
            .collect(),
        drift: r
            .drift
            .iter()
            .map(|d| {
                serde_json::json!({
                    "kind": word(pb::DriftKind::try_from(d.kind).map(|k| k.as_str_name()).unwrap_or("?"), "DRIFT_KIND_"),
                    "identity_id": d.identity_id,
                    "source_system": d.source_system,
                    "external_id": d.external_id,
                    "fields": d.fields,
                })
            })
            .collect(),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&imported)?),
        Output::Table => {
            println!(
                "{} rows: {} created, {} changed, {} unchanged, {} vanished, {} rejected{}",
                r.rows,
                r.created,
                r.changed,
                r.unchanged,
                r.vanished,
                r.rejected,
                if r.dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            );
            for e in &r.errors {
                println!("  line {}: {}: {}", e.line, e.field, e.reason);
            }
            if r.dry_run {
                for d in &r.drift {
                    let kind = pb::DriftKind::try_from(d.kind).map_or("?", |k| k.as_str_name());
                    let mut line = format!(
                        "  {:<8} {} {}",
                        word(kind, "DRIFT_KIND_"),
                        d.source_system,
                        d.external_id
                    );
                    if !d.fields.is_empty() {
                        line.push_str(&format!(" ({})", d.fields.join(", ")));
                    }
                    println!("{line}");
                }
                let shown = r.drift.len() as u64;
                let total = r.created + r.changed + r.vanished;
                if total > shown {
                    println!("  … and {} more", total - shown);
                }
            }
        }
    }
    Ok(if r.rejected > 0 {
        ExitCode::from(EXIT_ROWS_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn list(
    args: &ConnectionArgs,
    filter: Filter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = inventory(args).await?;
    let request = pb::ListIdentitiesRequest {
        filter: Some(pb::IdentityFilter {
            kinds: filter.kinds,
            states: filter.states,
            owner: filter.owner.unwrap_or_default(),
            label: filter.label.unwrap_or_default(),
            business_service: String::new(),
            environment: filter.environment.unwrap_or_default(),
            source_system: filter.source_system.unwrap_or_default(),
            text: filter.text.unwrap_or_default(),
        }),
        page_size: 1000,
        page_token: String::new(),
    };
    let rows = format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_identities(pb::ListIdentitiesRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((
                page.identities.iter().map(row).collect(),
                page.next_page_token,
            ))
        }
    })
    .await?;
    format::rows(&rows, output, |rows| {
        println!(
            "{:<36}  {:<16} {:<12} {:<11} {:>4}  {:<14} NAME",
            "IDENTITY", "KIND", "STATE", "ENV", "RISK", "OWNER"
        );
        for r in rows {
            println!(
                "{:<36}  {:<16} {:<12} {:<11} {:>4}  {:<14} {}",
                r.id,
                r.kind,
                r.state,
                r.environment,
                r.risk_score,
                r.technical_owner,
                r.display_name
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(args: &ConnectionArgs, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    let identity = inventory(args)
        .await?
        .get_identity(pb::GetIdentityRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .identity
        .ok_or_else(|| anyhow::anyhow!("inventory answered without the identity"))?;
    format::record(&row(&identity), output)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, serde::Serialize)]
struct Posted {
    signal_id: String,
    identity_id: String,
    risk_score: u32,
    risk_reasons: Vec<String>,
}

pub async fn post_signal(
    args: &ConnectionArgs,
    signal: SignalArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let answer = inventory(args)
        .await?
        .add_signal(pb::AddSignalRequest {
            identity_id: signal.identity.clone(),
            kind: signal.kind,
            severity: signal.severity,
            source: signal.source,
            observe_time: None,
            evidence_ref: signal.evidence_ref,
            summary: signal.summary,
            context: context(signal.incident.as_ref()),
        })
        .await?
        .into_inner();
    let risk = answer.risk.unwrap_or_default();
    let posted = Posted {
        signal_id: answer.signal.map(|s| s.id).unwrap_or_default(),
        identity_id: signal.identity,
        risk_score: risk.score,
        risk_reasons: risk.reasons,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&posted)?),
        Output::Table => {
            println!(
                "signal {} recorded on {}",
                posted.signal_id, posted.identity_id
            );
            println!("risk is now {}/100", posted.risk_score);
            for reason in &posted.risk_reasons {
                println!("  {reason}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn owner(o: Option<&pb::Owner>) -> String {
    o.map(|o| o.name.clone()).unwrap_or_default()
}

fn row(i: &pb::Identity) -> IdentityRow {
    let risk = i.risk.clone().unwrap_or_default();
    IdentityRow {
        id: i.id.clone(),
        kind: word(
            pb::IdentityKind::try_from(i.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("?"),
            "IDENTITY_KIND_",
        ),
        display_name: i.display_name.clone(),
        source_system: i.source_system.clone(),
        external_id: i.external_id.clone(),
        environment: i.environment.clone(),
        state: word(
            pb::LifecycleState::try_from(i.state)
                .map(|s| s.as_str_name())
                .unwrap_or("?"),
            "LIFECYCLE_STATE_",
        ),
        business_owner: owner(i.business_owner.as_ref()),
        technical_owner: owner(i.technical_owner.as_ref()),
        purpose: i.purpose.clone(),
        spiffe_id: i.spiffe_id.clone(),
        risk_score: risk.score,
        risk_reasons: risk.reasons,
        expires: format::time(i.expire_time.as_ref()),
        last_used: format::time(i.last_use_time.as_ref()),
        last_rotated: format::time(i.last_rotate_time.as_ref()),
        version: i.version,
    }
}

/// What `transition` changes.
#[derive(Debug, Clone, clap::Args)]
pub struct TransitionArgs {
    /// The identity.
    pub id: String,
    /// The lifecycle state to move it to.
    #[arg(long = "to", value_parser = lifecycle_state)]
    pub target: i32,
    /// Why (recorded).
    #[arg(long)]
    pub reason: String,
    /// The incident or ticket this serves.
    #[arg(long, default_value = "")]
    pub incident: String,
    /// Joins the records to a chain of evidence (a signal's id, say).
    #[arg(long, default_value = "")]
    pub correlation_id: String,
}

/// Moves an identity to another lifecycle state. Inventory has authority
/// decide first, for the logged-in person when there is one (their token
/// goes with the call; the decision may use their grant, break-glass among
/// them) and else for this SVID; nothing changes unless it allows.
pub async fn transition(
    args: &ConnectionArgs,
    t: TransitionArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut request = tonic::Request::new(pb::TransitionStateRequest {
        id: t.id,
        target_state: t.target,
        reason: t.reason,
        expected_version: 0,
        context: Some(pb::ChangeContext {
            incident_ref: t.incident,
            correlation_id: t.correlation_id,
        }),
    });
    if let Some(token) = crate::login::stored_token(args.token_file.as_deref())? {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let answer = inventory(args)
        .await?
        .transition_state(request)
        .await?
        .into_inner();
    let identity = answer
        .identity
        .context("inventory answered without the identity")?;
    let row = row(&identity);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&row)?),
        Output::Table => println!("{} ({}) is now {}", row.display_name, row.id, row.state),
    }
    Ok(ExitCode::SUCCESS)
}
