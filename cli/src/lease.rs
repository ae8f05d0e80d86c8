//! `steward lease`: read and revoke the broker's credential leases.
//!
//! `list` pages through every lease matching its filters, `show` prints one,
//! `revoke` ends one lease or every active lease of an incident, identity
//! or holder (the broker asks authority first), `watch` follows the
//! revocation log as it grows (one JSON object a line with `--output
//! json`). Tables by default,
//! `--output json` for scripts; a refused call exits as [`crate::exit`]
//! says.

use std::process::ExitCode;

use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
use steward_telemetry::TracedChannel;

use crate::Output;
use crate::client::ConnectionArgs;

/// Which leases `list` shows.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Leases of this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Leases bound to this incident or ticket.
    #[arg(long)]
    pub incident: Option<String>,
    /// Leases held by this SPIFFE ID.
    #[arg(long)]
    pub holder: Option<String>,
    /// Only leases in this state.
    #[arg(long, value_enum)]
    pub state: Option<State>,
    /// Stop after this many leases.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    Active,
    Revoked,
    Expired,
}

/// What `revoke` ends: one lease, or every active lease of a selector.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selector {
    /// The lease to revoke.
    pub lease_id: Option<String>,
    /// Every active lease of this incident.
    #[arg(long)]
    pub incident: Option<String>,
    /// Every active lease of this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Every active lease held by this SPIFFE ID.
    #[arg(long)]
    pub holder: Option<String>,
}

/// A lease as printed.
#[derive(Debug, serde::Serialize)]
pub struct LeaseRow {
    pub lease_id: String,
    pub identity_id: String,
    pub kind: String,
    pub state: String,
    pub holder: String,
    pub spiffe_id: String,
    pub incident_ref: String,
    pub credential_ref: String,
    pub issued: String,
    pub expires: String,
    pub renewable: bool,
    pub decision_id: String,
    pub grant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoked: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoked_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub revoke_reason: String,
}

async fn broker(args: &ConnectionArgs) -> anyhow::Result<CredentialBrokerClient<TracedChannel>> {
    Ok(CredentialBrokerClient::new(
        args.channel("credential-broker").await?,
    ))
}

pub async fn list(
    args: &ConnectionArgs,
    filter: Filter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = broker(args).await?;
    let request = pb::ListLeasesRequest {
        identity_id: filter.identity.unwrap_or_default(),
        incident_ref: filter.incident.unwrap_or_default(),
        holder: filter.holder.unwrap_or_default(),
        state: match filter.state {
            None => pb::LeaseState::Unspecified,
            Some(State::Active) => pb::LeaseState::Active,
            Some(State::Revoked) => pb::LeaseState::Revoked,
            Some(State::Expired) => pb::LeaseState::Expired,
        } as i32,
        page_size: 1000,
        page_token: String::new(),
    };
    let rows = crate::format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_leases(pb::ListLeasesRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((page.leases.iter().map(row).collect(), page.next_page_token))
        }
    })
    .await?;
    crate::format::rows(&rows, output, table)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(
    args: &ConnectionArgs,
    lease_id: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let lease = broker(args)
        .await?
        .get_lease(pb::GetLeaseRequest {
            lease_id: lease_id.to_owned(),
        })
        .await?
        .into_inner()
        .lease
        .ok_or_else(|| anyhow::anyhow!("the broker answered without the lease"))?;
    crate::format::record(&row(&lease), output)?;
    Ok(ExitCode::SUCCESS)
}

/// What `revoke` did.
#[derive(Debug, serde::Serialize)]
struct Revoked {
    revoked: Vec<String>,
}

pub async fn revoke(
    args: &ConnectionArgs,
    selector: Selector,
    reason: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut client = broker(args).await?;
    let revoked = if let Some(lease_id) = selector.lease_id {
        let lease = client
            .revoke_lease(pb::RevokeLeaseRequest {
                lease_id,
                reason: reason.to_owned(),
            })
            .await?
            .into_inner()
            .lease
            .ok_or_else(|| anyhow::anyhow!("the broker answered without the lease"))?;
        vec![lease.lease_id]
    } else {
        use pb::revoke_leases_request::Selector as By;
        let by = match (selector.incident, selector.identity, selector.holder) {
            (Some(incident), _, _) => By::IncidentRef(incident),
            (_, Some(identity), _) => By::IdentityId(identity),
            (_, _, Some(holder)) => By::Holder(holder),
            (None, None, None) => anyhow::bail!(
                "say which leases to revoke: a lease id, --incident, --identity or --holder"
            ),
        };
        // At most 10,000 per call: repeat while the broker says there are more.
        let mut all = Vec::new();
        loop {
            let answer = client
                .revoke_leases(pb::RevokeLeasesRequest {
                    selector: Some(by.clone()),
                    reason: reason.to_owned(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(answer.lease_ids);
            if !answer.more {
                break all;
            }
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&Revoked { revoked })?),
        Output::Table => {
            if revoked.is_empty() {
                println!("no active lease matched; nothing was revoked");
            }
            for id in &revoked {
                println!("revoked {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(rows: &[LeaseRow]) {
    println!(
        "{:<36}  {:<13} {:<8} {:<12} {:<20}  HOLDER",
        "LEASE", "KIND", "STATE", "INCIDENT", "EXPIRES"
    );
    for r in rows {
        println!(
            "{:<36}  {:<13} {:<8} {:<12} {:<20}  {}",
            r.lease_id, r.kind, r.state, r.incident_ref, r.expires, r.holder
        );
    }
}

fn kind_word(kind: i32) -> &'static str {
    match pb::CredentialKind::try_from(kind) {
        Ok(pb::CredentialKind::X509Svid) => "x509-svid",
        Ok(pb::CredentialKind::JwtSvid) => "jwt-svid",
        Ok(pb::CredentialKind::ApiToken) => "api-token",
        Ok(pb::CredentialKind::DatabaseRole) => "database-role",
        _ => "unknown",
    }
}

fn state_word(state: i32) -> &'static str {
    match pb::LeaseState::try_from(state) {
        Ok(pb::LeaseState::Active) => "active",
        Ok(pb::LeaseState::Revoked) => "revoked",
        Ok(pb::LeaseState::Expired) => "expired",
        _ => "unknown",
    }
}

pub fn row(lease: &pb::Lease) -> LeaseRow {
    let (kind, state) = (kind_word(lease.kind), state_word(lease.state));
    LeaseRow {
        lease_id: lease.lease_id.clone(),
        identity_id: lease.identity_id.clone(),
        kind: kind.to_owned(),
        state: state.to_owned(),
        holder: lease.holder.clone(),
        spiffe_id: lease.spiffe_id.clone(),
        incident_ref: lease.incident_ref.clone(),
        credential_ref: lease.credential_ref.clone(),
        issued: crate::format::time(lease.issue_time.as_ref()),
        expires: crate::format::time(lease.expire_time.as_ref()),
        renewable: lease.renewable,
        decision_id: lease.decision_id.clone(),
        grant_id: lease.grant_id.clone(),
        revoked: crate::format::time(lease.revoke_time.as_ref()),
        revoked_by: lease.revoked_by.clone(),
        revoke_reason: lease.revoke_reason.clone(),
    }
}

/// Where `watch` starts and when it stops.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Replay the revocations after this sequence first (0: the whole
    /// log); without it, only what is revoked from now on.
    #[arg(long)]
    pub after: Option<u64>,
    /// Only revocations of this incident.
    #[arg(long)]
    pub incident: Option<String>,
    /// Stop after this many (shown) revocations.
    #[arg(long)]
    pub count: Option<usize>,
}

/// A revocation as printed.
#[derive(Debug, serde::Serialize)]
struct RevocationRow {
    sequence: u64,
    lease_id: String,
    identity_id: String,
    kind: String,
    state: String,
    incident_ref: String,
    credential_ref: String,
    revoked: String,
    reason: String,
}

pub async fn watch(
    args: &ConnectionArgs,
    watch: WatchArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut stream = broker(args)
        .await?
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: watch.after,
        })
        .await?
        .into_inner();
    if output == Output::Table {
        println!(
            "{:>8}  {:<36}  {:<13} {:<8} {:<12} {:<20}  REASON",
            "SEQ", "LEASE", "KIND", "STATE", "INCIDENT", "REVOKED"
        );
    }
    let mut shown = 0;
    while watch.count.is_none_or(|n| shown < n) {
        let Some(r) = stream.message().await? else {
            anyhow::bail!("the broker ended the stream; resume with --after <last sequence>");
        };
        if watch
            .incident
            .as_ref()
            .is_some_and(|i| *i != r.incident_ref)
        {
            continue;
        }
        let row = RevocationRow {
            sequence: r.sequence,
            lease_id: r.lease_id,
            identity_id: r.identity_id,
            kind: kind_word(r.kind).to_owned(),
            state: state_word(r.state).to_owned(),
            incident_ref: r.incident_ref,
            credential_ref: r.credential_ref,
            revoked: crate::format::time(r.revoke_time.as_ref()),
            reason: r.reason,
        };
        match output {
            Output::Json => println!("{}", serde_json::to_string(&row)?),
            Output::Table => println!(
                "{:>8}  {:<36}  {:<13} {:<8} {:<12} {:<20}  {}",
                row.sequence,
                row.lease_id,
                row.kind,
                row.state,
                row.incident_ref,
                row.revoked,
                row.reason
            ),
        }
        shown += 1;
    }
    Ok(ExitCode::SUCCESS)
}
