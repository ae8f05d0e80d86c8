//! The command line as clap reads it: the global flags and every
//! subcommand with its arguments. `main.rs` dispatches them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    approval, audit, breakglass, client, credential, grant, identity, lease, login, workload,
};

#[derive(Debug, Parser)]
#[command(
    name = "steward",
    version,
    about = "Govern the non-human identities your automation uses"
)]
pub(crate) struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// The settings file (default `~/.config/steward/config.toml`, if it
    /// exists): flags and the environment win over it.
    #[arg(long, global = true, env = "STEWARD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) conn: client::ConnectionArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// SPIFFE registration entries: register, list, show, update, delete.
    Workload {
        #[command(subcommand)]
        command: WorkloadCommand,
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
pub(crate) enum OutboxCommand {
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
pub(crate) enum AuditCommand {
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
pub(crate) enum IdentityCommand {
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
pub(crate) enum SignalCommand {
    /// Report a risk signal on an identity; prints its new risk.
    Post {
        #[command(flatten)]
        signal: identity::SignalArgs,
    },
}

/// The commands of a versioned document of authority's.
#[derive(Debug, Subcommand)]
pub(crate) enum DocumentCommand {
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
pub(crate) enum ApprovalCommand {
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
pub(crate) enum BreakglassCommand {
    /// Ask for emergency authority over one action on one identity.
    Invoke {
        #[command(flatten)]
        invoke: breakglass::InvokeArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReviewCommand {
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
pub(crate) enum IncidentCommand {
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
pub(crate) enum CredentialCommand {
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
pub(crate) enum GrantCommand {
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
pub(crate) enum WorkloadCommand {
    /// Register a workload: the selectors that make it act as an identity.
    Register {
        #[command(flatten)]
        register: workload::Registration,
    },
    /// Entries matching the filters.
    List {
        #[command(flatten)]
        filter: workload::Filter,
    },
    /// One entry, every field.
    Show { id: String },
    /// Change an entry's selectors, SVID lifetimes or DNS names.
    Update {
        #[command(flatten)]
        change: workload::Change,
    },
    /// Remove an entry: workloads showing its selectors no longer get its
    /// SVIDs.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCommand {
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
pub(crate) enum DevCommand {
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
        /// Run two replicas of each service on PostgreSQL behind local
        /// balancers: on the server this admin URL names (a database per
        /// service is created), or, with no URL, on a throwaway server
        /// made under the dev directory.
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        postgres: Option<String>,
    },
    /// Delete the dev PKI, data and configs.
    Reset {
        #[arg(long, env = "STEWARD_DEV_DIR", default_value = ".steward/dev")]
        dir: PathBuf,
    },
}
