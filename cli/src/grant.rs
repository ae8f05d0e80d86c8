//! `steward grant`: the grants approvals and break-glass produced, which
//! let one principal take one action on one identity within a window.
//! `list` and `show` read them; `revoke` ends one early (recorded, with the
//! logged-in human when there is one).

use std::process::ExitCode;

use steward_proto::steward::authority::v1 as pb;

use crate::Output;
use crate::approval::{as_human, authority};
use crate::client::ConnectionArgs;

/// Which grants `list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Only grants in this state (default: every state).
    #[arg(long, value_enum)]
    pub state: Option<State>,
    /// Grants held by this principal (a SPIFFE ID or a human's name).
    #[arg(long)]
    pub principal: Option<String>,
    /// Grants on this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Grants of this incident.
    #[arg(long)]
    pub incident: Option<String>,
    /// Stop after this many grants.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    Active,
    Used,
    Expired,
    Revoked,
    IncidentClosed,
}

/// A grant as printed.
#[derive(Debug, serde::Serialize)]
pub struct GrantRow {
    pub id: String,
    pub state: String,
    pub principal: String,
    pub action: String,
    pub identity_id: String,
    pub incident_ref: String,
    pub break_glass: bool,
    pub approval_request_id: String,
    pub approvers: Vec<String>,
    pub window_start: String,
    pub window_end: String,
    pub claim_by: String,
    pub single_use: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub claimed: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ended: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub end_reason: String,
    pub correlation_id: String,
}

fn state_word(state: i32) -> &'static str {
    match pb::GrantState::try_from(state) {
        Ok(pb::GrantState::Active) => "active",
        Ok(pb::GrantState::Used) => "used",
        Ok(pb::GrantState::Expired) => "expired",
        Ok(pb::GrantState::Revoked) => "revoked",
        Ok(pb::GrantState::IncidentClosed) => "incident-closed",
        _ => "unknown",
    }
}

fn row(g: &pb::Grant) -> GrantRow {
    let time = |t: &Option<prost_types::Timestamp>| crate::format::time(t.as_ref());
    GrantRow {
        id: g.id.clone(),
        state: state_word(g.state).to_owned(),
        principal: g.principal.clone(),
        action: g.action.clone(),
        identity_id: g.resource_id.clone(),
        incident_ref: g.incident_ref.clone(),
        break_glass: g.break_glass,
        approval_request_id: g.approval_request_id.clone(),
        approvers: g.approvers.clone(),
        window_start: time(&g.window_start),
        window_end: time(&g.window_end),
        claim_by: time(&g.claim_by),
        single_use: g.single_use,
        claimed: time(&g.claim_time),
        ended: time(&g.end_time),
        end_reason: g.end_reason.clone(),
        correlation_id: g.correlation_id.clone(),
    }
}

fn table(rows: &[GrantRow]) {
    println!(
        "{:<36}  {:<15} {:<10} {:<12} {:<20}  PRINCIPAL",
        "GRANT", "STATE", "ACTION", "INCIDENT", "WINDOW ENDS"
    );
    for r in rows {
        let action = if r.break_glass {
            format!("{}!", r.action)
        } else {
            r.action.clone()
        };
        println!(
            "{:<36}  {:<15} {:<10} {:<12} {:<20}  {}",
            r.id, r.state, action, r.incident_ref, r.window_end, r.principal
        );
    }
}

pub async fn list(
    args: &ConnectionArgs,
    filter: Filter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = authority(args).await?;
    let request = pb::ListGrantsRequest {
        state: match filter.state {
            None => pb::GrantState::Unspecified,
            Some(State::Active) => pb::GrantState::Active,
            Some(State::Used) => pb::GrantState::Used,
            Some(State::Expired) => pb::GrantState::Expired,
            Some(State::Revoked) => pb::GrantState::Revoked,
            Some(State::IncidentClosed) => pb::GrantState::IncidentClosed,
        } as i32,
        principal: filter.principal.unwrap_or_default(),
        resource_id: filter.identity.unwrap_or_default(),
        incident_ref: filter.incident.unwrap_or_default(),
        page_size: 500,
        page_token: String::new(),
    };
    let rows = crate::format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_grants(pb::ListGrantsRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((page.grants.iter().map(row).collect(), page.next_page_token))
        }
    })
    .await?;
    crate::format::rows(&rows, output, table)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(args: &ConnectionArgs, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    let grant = authority(args)
        .await?
        .get_grant(pb::GetGrantRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .grant
        .ok_or_else(|| anyhow::anyhow!("authority answered without the grant"))?;
    crate::format::record(&row(&grant), output)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(
    args: &ConnectionArgs,
    id: &str,
    reason: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let message = pb::RevokeGrantRequest {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    // A human who is logged in is recorded as the one who revoked it.
    let request = as_human(message.clone(), args.token_file.as_deref())
        .unwrap_or_else(|_| tonic::Request::new(message));
    let grant = authority(args)
        .await?
        .revoke_grant(request)
        .await?
        .into_inner()
        .grant
        .ok_or_else(|| anyhow::anyhow!("authority answered without the grant"))?;
    let grant = row(&grant);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&grant)?),
        Output::Table => println!(
            "grant {} is {}: {} may no longer {} {}",
            grant.id, grant.state, grant.principal, grant.action, grant.identity_id
        ),
    }
    Ok(ExitCode::SUCCESS)
}
