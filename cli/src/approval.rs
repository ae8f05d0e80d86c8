//! `steward approval` and `steward incident`: the human side of authority.
//!
//! `approval list|show` read approval requests; `approval approve|deny`
//! review one as the human of the token `steward login` stored (authority
//! refuses a requester or principal reviewing their own request, and a
//! reviewer the policies do not name). `incident close` ends an incident's
//! grants, cancels its pending requests and has the broker revoke its
//! leases.

use std::path::Path;
use std::process::ExitCode;

use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_telemetry::TracedChannel;

use crate::Output;
use crate::client::ConnectionArgs;
use crate::format;

/// Which requests `list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Only requests in this state (default: pending).
    #[arg(long, value_enum, default_value_t = State::Pending)]
    pub state: State,
    /// Requests about this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Requests of this incident.
    #[arg(long)]
    pub incident: Option<String>,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Cancelled,
    All,
}

/// An approval request as printed.
#[derive(Debug, serde::Serialize)]
pub struct RequestRow {
    pub id: String,
    pub state: String,
    pub principal: String,
    pub action: String,
    pub resource_id: String,
    pub incident_ref: String,
    pub requester: String,
    pub reason: String,
    /// "1 of technical_owner", "2 of group:security".
    pub needs: String,
    pub suggested_reviewers: Vec<String>,
    pub reviews: Vec<ReviewRow>,
    pub created: String,
    pub expires: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub grant_id: String,
}

#[derive(Debug, serde::Serialize)]
pub struct ReviewRow {
    pub reviewer: String,
    pub verdict: String,
    pub reason: String,
    pub time: String,
}

pub async fn authority(
    args: &ConnectionArgs,
) -> anyhow::Result<AuthorityServiceClient<TracedChannel>> {
    Ok(AuthorityServiceClient::new(
        args.channel("authority").await?,
    ))
}

/// `message` as a request carrying the stored human token, which reviews
/// and break-glass require.
pub fn as_human<T>(message: T, token_file: Option<&Path>) -> anyhow::Result<tonic::Request<T>> {
    let token = crate::login::stored_token(token_file)?.ok_or_else(|| {
        anyhow::anyhow!(
            "only a person may do this: log in first (`steward login --dev` with `steward dev up`, or `steward login --from-file <token>`)"
        )
    })?;
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

pub async fn list(
    args: &ConnectionArgs,
    filter: Filter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = authority(args).await?;
    let state = match filter.state {
        State::Pending => pb::ApprovalState::Pending,
        State::Approved => pb::ApprovalState::Approved,
        State::Denied => pb::ApprovalState::Denied,
        State::Expired => pb::ApprovalState::Expired,
        State::Cancelled => pb::ApprovalState::Cancelled,
        State::All => pb::ApprovalState::Unspecified,
    };
    let request = pb::ListApprovalRequestsRequest {
        state: state as i32,
        resource_id: filter.identity.unwrap_or_default(),
        incident_ref: filter.incident.unwrap_or_default(),
        page_size: 100,
        page_token: String::new(),
    };
    let rows = format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_approval_requests(pb::ListApprovalRequestsRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((
                page.approval_requests.iter().map(row).collect(),
                page.next_page_token,
            ))
        }
    })
    .await?;
    format::rows(&rows, output, |rows| {
        println!(
            "{:<36}  {:<9} {:<8} {:<12} {:<22} PRINCIPAL",
            "REQUEST", "STATE", "ACTION", "INCIDENT", "NEEDS"
        );
        for r in rows {
            println!(
                "{:<36}  {:<9} {:<8} {:<12} {:<22} {}",
                r.id, r.state, r.action, r.incident_ref, r.needs, r.principal
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(args: &ConnectionArgs, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    let request = authority(args)
        .await?
        .get_approval_request(pb::GetApprovalRequestRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .approval_request
        .ok_or_else(|| anyhow::anyhow!("authority answered without the request"))?;
    format::record(&row(&request), output)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn review(
    args: &ConnectionArgs,
    id: &str,
    approve: bool,
    reason: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let message = pb::ReviewApprovalRequestRequest {
        id: id.to_owned(),
        verdict: if approve {
            pb::Verdict::Approve
        } else {
            pb::Verdict::Deny
        } as i32,
        reason: reason.to_owned(),
    };
    let request = as_human(message, args.token_file.as_deref())?;
    let reviewed = authority(args)
        .await?
        .review_approval_request(request)
        .await?
        .into_inner()
        .approval_request
        .ok_or_else(|| anyhow::anyhow!("authority answered without the request"))?;
    let reviewed = row(&reviewed);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reviewed)?),
        Output::Table => {
            println!("request {} is {}", reviewed.id, reviewed.state);
            if !reviewed.grant_id.is_empty() {
                println!(
                    "grant {} lets {} {} until the task window ends",
                    reviewed.grant_id, reviewed.principal, reviewed.action
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What closing an incident did.
#[derive(Debug, serde::Serialize)]
struct Closed {
    incident_ref: String,
    ended_grant_ids: Vec<String>,
    cancelled_approval_request_ids: Vec<String>,
    revoked_lease_ids: Vec<String>,
    leases_pending: bool,
}

pub async fn close_incident(
    args: &ConnectionArgs,
    incident: &str,
    reason: &str,
    correlation_id: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let message = pb::CloseIncidentRequest {
        incident_ref: incident.to_owned(),
        reason: reason.to_owned(),
        correlation_id: correlation_id.to_owned(),
    };
    // A human who is logged in is recorded as the one who closed it.
    let request = match as_human(message.clone(), args.token_file.as_deref()) {
        Ok(request) => request,
        Err(_) => tonic::Request::new(message),
    };
    let answer = authority(args)
        .await?
        .close_incident(request)
        .await?
        .into_inner();
    let closed = Closed {
        incident_ref: incident.to_owned(),
        ended_grant_ids: answer.ended_grant_ids,
        cancelled_approval_request_ids: answer.cancelled_approval_request_ids,
        revoked_lease_ids: answer.revoked_lease_ids,
        leases_pending: answer.leases_pending,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&closed)?),
        Output::Table => {
            println!("incident {incident} is closed");
            println!(
                "  {} grant(s) ended, {} approval request(s) cancelled, {} lease(s) revoked",
                closed.ended_grant_ids.len(),
                closed.cancelled_approval_request_ids.len(),
                closed.revoked_lease_ids.len()
            );
            if closed.leases_pending {
                println!(
                    "  the broker could not be reached yet: authority keeps asking it to revoke the incident's leases"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(r: &pb::ApprovalRequest) -> RequestRow {
    let state = match pb::ApprovalState::try_from(r.state) {
        Ok(pb::ApprovalState::Pending) => "pending",
        Ok(pb::ApprovalState::Approved) => "approved",
        Ok(pb::ApprovalState::Denied) => "denied",
        Ok(pb::ApprovalState::Expired) => "expired",
        Ok(pb::ApprovalState::Cancelled) => "cancelled",
        _ => "unknown",
    };
    let approver = if r.approver.is_empty() {
        "anyone allowed"
    } else {
        r.approver.as_str()
    };
    RequestRow {
        id: r.id.clone(),
        state: state.to_owned(),
        principal: r.principal.clone(),
        action: r.action.clone(),
        resource_id: r.resource_id.clone(),
        incident_ref: r.incident_ref.clone(),
        requester: r.requester.clone(),
        reason: r.reason.clone(),
        needs: format!("{} of {approver}", r.approvals_required),
        suggested_reviewers: r.suggested_reviewers.clone(),
        reviews: r
            .reviews
            .iter()
            .map(|v| ReviewRow {
                reviewer: v.reviewer.clone(),
                verdict: match pb::Verdict::try_from(v.verdict) {
                    Ok(pb::Verdict::Approve) => "approve",
                    Ok(pb::Verdict::Deny) => "deny",
                    _ => "unknown",
                }
                .to_owned(),
                reason: v.reason.clone(),
                time: format::time(v.review_time.as_ref()),
            })
            .collect(),
        created: format::time(r.create_time.as_ref()),
        expires: format::time(r.expire_time.as_ref()),
        grant_id: r.grant_id.clone(),
    }
}
