//! `steward breakglass` and `steward review`: emergency authority and the
//! post-action review that always follows it.
//!
//! `breakglass invoke` asks authority for emergency authority over one
//! action on one identity, as the logged-in human; authority grants it
//! only to principals its policies name, records it, and opens a review
//! assigned to the identity's owners. `review list` shows reviews
//! (`--overdue`: open past their due time), `review complete` closes one
//! as an assignee who did not invoke it.

use std::process::ExitCode;

use steward_proto::steward::authority::v1 as pb;

use crate::Output;
use crate::approval::{as_human, authority};
use crate::client::ConnectionArgs;
use crate::format;

/// What `invoke` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct InvokeArgs {
    /// The action to take under break-glass: suspend, revoke, rotate …
    #[arg(long)]
    pub action: String,
    /// The inventory identity it concerns.
    #[arg(long)]
    pub identity: String,
    #[arg(long)]
    pub incident: String,
    /// Why; recorded, and shown to the reviewers.
    #[arg(long)]
    pub reason: String,
    /// How long the grant lasts (at most 4 hours).
    #[arg(long, default_value_t = 3600)]
    pub duration_seconds: u32,
    /// Joins the records to a chain of evidence (a signal's id, say).
    #[arg(long, default_value = "")]
    pub correlation_id: String,
}

/// Which reviews `list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct ReviewFilter {
    /// Only open reviews past their due time.
    #[arg(long)]
    pub overdue: bool,
    /// open, completed or all.
    #[arg(long, value_enum, default_value_t = ReviewState::Open)]
    pub state: ReviewState,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewState {
    Open,
    Completed,
    All,
}

/// A post-action review as printed.
#[derive(Debug, serde::Serialize)]
pub struct ReviewRow {
    pub id: String,
    pub state: String,
    pub overdue: bool,
    pub principal: String,
    pub action: String,
    pub resource_id: String,
    pub incident_ref: String,
    pub reason: String,
    pub assignees: Vec<String>,
    pub due: String,
    pub grant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub completed_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub completion_note: String,
}

#[derive(Debug, serde::Serialize)]
struct Invoked {
    grant_id: String,
    grant_ends: String,
    review: ReviewRow,
}

pub async fn invoke(
    args: &ConnectionArgs,
    invoke: InvokeArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let message = pb::BreakGlassRequest {
        action: invoke.action,
        resource_id: invoke.identity,
        incident_ref: invoke.incident,
        reason: invoke.reason,
        duration_seconds: invoke.duration_seconds,
        correlation_id: invoke.correlation_id,
    };
    let answer = authority(args)
        .await?
        .break_glass(as_human(message, args.token_file.as_deref())?)
        .await?
        .into_inner();
    let grant = answer.grant.unwrap_or_default();
    let invoked = Invoked {
        grant_id: grant.id,
        grant_ends: format::time(grant.window_end.as_ref()),
        review: row(&answer.review.unwrap_or_default()),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&invoked)?),
        Output::Table => {
            println!(
                "break-glass grant {} lets {} {} {} until {}",
                invoked.grant_id,
                invoked.review.principal,
                invoked.review.action,
                invoked.review.resource_id,
                invoked.grant_ends
            );
            println!(
                "post-action review {} is open for {}, due {}",
                invoked.review.id,
                invoked.review.assignees.join(", "),
                invoked.review.due
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(
    args: &ConnectionArgs,
    filter: ReviewFilter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = authority(args).await?;
    let request = pb::ListPostActionReviewsRequest {
        state: match filter.state {
            ReviewState::Open => pb::ReviewState::Open,
            ReviewState::Completed => pb::ReviewState::Completed,
            ReviewState::All => pb::ReviewState::Unspecified,
        } as i32,
        overdue_only: filter.overdue,
        page_size: 100,
        page_token: String::new(),
    };
    let rows = format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_post_action_reviews(pb::ListPostActionReviewsRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((page.reviews.iter().map(row).collect(), page.next_page_token))
        }
    })
    .await?;
    format::rows(&rows, output, |rows| {
        println!(
            "{:<36}  {:<9} {:<8} {:<9} {:<12} {:<20}  ASSIGNEES",
            "REVIEW", "STATE", "OVERDUE", "ACTION", "INCIDENT", "DUE"
        );
        for r in rows {
            println!(
                "{:<36}  {:<9} {:<8} {:<9} {:<12} {:<20}  {}",
                r.id,
                r.state,
                if r.overdue { "OVERDUE" } else { "" },
                r.action,
                r.incident_ref,
                r.due,
                r.assignees.join(", ")
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn complete(
    args: &ConnectionArgs,
    id: &str,
    note: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let message = pb::CompletePostActionReviewRequest {
        id: id.to_owned(),
        note: note.to_owned(),
    };
    let review = authority(args)
        .await?
        .complete_post_action_review(as_human(message, args.token_file.as_deref())?)
        .await?
        .into_inner()
        .review
        .ok_or_else(|| anyhow::anyhow!("authority answered without the review"))?;
    format::record(&row(&review), output)?;
    Ok(ExitCode::SUCCESS)
}

fn row(r: &pb::PostActionReview) -> ReviewRow {
    ReviewRow {
        id: r.id.clone(),
        state: match pb::ReviewState::try_from(r.state) {
            Ok(pb::ReviewState::Open) => "open",
            Ok(pb::ReviewState::Completed) => "completed",
            _ => "unknown",
        }
        .to_owned(),
        overdue: r.overdue,
        principal: r.principal.clone(),
        action: r.action.clone(),
        resource_id: r.resource_id.clone(),
        incident_ref: r.incident_ref.clone(),
        reason: r.reason.clone(),
        assignees: r.assignees.clone(),
        due: format::time(r.due_time.as_ref()),
        grant_id: r.grant_id.clone(),
        completed_by: r.completed_by.clone(),
        completion_note: r.completion_note.clone(),
    }
}
