//! `steward credential`: ask the broker for a credential, or rotate one,
//! for a task: an incident or ticket and a window. The broker asks
//! authority first; a request that needs approval exits 6 and names the
//! approval request, to retry once it is approved. The secret is printed
//! once, here, and never again.

use std::process::ExitCode;

use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;

use crate::Output;
use crate::client::ConnectionArgs;
use crate::lease::{LeaseRow, row};

/// The kinds the CLI can ask for (an X.509-SVID needs the holder's CSR,
/// which the Workload API or a client library sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    ApiToken,
    JwtSvid,
}

/// The task a credential serves, and what it may do.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskArgs {
    /// The inventory identity the credential is for.
    #[arg(long)]
    pub identity: String,
    #[arg(long, value_enum, default_value = "api-token")]
    pub kind: Kind,
    /// The incident or ticket it serves.
    #[arg(long)]
    pub incident: String,
    /// The task window, from now; the credential never outlives it.
    #[arg(long, default_value_t = 30)]
    pub window_minutes: u32,
    /// Why (becomes the approval request's reason when one is needed).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Joins the records to a chain of evidence (a signal's id, say).
    #[arg(long, default_value = "")]
    pub correlation_id: String,
    /// API token scopes (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// JWT-SVID audiences (repeatable; at least one for a JWT-SVID).
    #[arg(long = "audience")]
    pub audience: Vec<String>,
    /// The lifetime; 0 is the broker's default, and authority may cap it.
    #[arg(long, default_value_t = 0)]
    pub ttl_seconds: u32,
}

impl TaskArgs {
    fn task(&self) -> pb::Task {
        let end =
            time::OffsetDateTime::now_utc().unix_timestamp() + i64::from(self.window_minutes) * 60;
        pb::Task {
            incident_ref: self.incident.clone(),
            window_start: None,
            window_end: Some(prost_types::Timestamp {
                seconds: end,
                nanos: 0,
            }),
            reason: self.reason.clone(),
            correlation_id: self.correlation_id.clone(),
        }
    }

    fn kind(&self) -> pb::CredentialKind {
        match self.kind {
            Kind::ApiToken => pb::CredentialKind::ApiToken,
            Kind::JwtSvid => pb::CredentialKind::JwtSvid,
        }
    }
}

/// An issued credential as printed.
#[derive(Debug, serde::Serialize)]
struct Issued {
    lease: LeaseRow,
    /// The secret, shown once.
    token: String,
}

/// A rotation as printed.
#[derive(Debug, serde::Serialize)]
struct Rotated {
    rotation_id: String,
    state: String,
    old_lease_ids: Vec<String>,
    revoke_at: String,
    detail: String,
    lease: LeaseRow,
    token: String,
}

async fn broker(
    args: &ConnectionArgs,
) -> anyhow::Result<CredentialBrokerClient<steward_telemetry::TracedChannel>> {
    Ok(CredentialBrokerClient::new(
        args.channel("credential-broker").await?,
    ))
}

pub async fn issue(
    args: &ConnectionArgs,
    task: TaskArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut client = broker(args).await?;
    let (lease, token) = match task.kind {
        Kind::ApiToken => {
            let answer = client
                .issue_api_token(pb::IssueApiTokenRequest {
                    identity_id: task.identity.clone(),
                    scopes: task.scopes.clone(),
                    ttl_seconds: task.ttl_seconds,
                    task: Some(task.task()),
                })
                .await?
                .into_inner();
            (answer.lease, answer.token)
        }
        Kind::JwtSvid => {
            let answer = client
                .issue_jwt_svid(pb::IssueJwtSvidRequest {
                    identity_id: task.identity.clone(),
                    audience: task.audience.clone(),
                    ttl_seconds: task.ttl_seconds,
                    task: Some(task.task()),
                })
                .await?
                .into_inner();
            (answer.lease, answer.token)
        }
    };
    let lease = lease.ok_or_else(|| anyhow::anyhow!("the broker answered without the lease"))?;
    let issued = Issued {
        lease: row(&lease),
        token,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&issued)?),
        Output::Table => {
            println!(
                "issued {} for identity {} on lease {} (expires {})",
                issued.lease.kind,
                issued.lease.identity_id,
                issued.lease.lease_id,
                issued.lease.expires
            );
            println!("secret (shown once): {}", issued.token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate(
    args: &ConnectionArgs,
    task: TaskArgs,
    overlap_seconds: u32,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let answer = broker(args)
        .await?
        .rotate(pb::RotateRequest {
            identity_id: task.identity.clone(),
            kind: task.kind() as i32,
            task: Some(task.task()),
            overlap_seconds,
            ttl_seconds: task.ttl_seconds,
            csr: Vec::new(),
            audience: task.audience.clone(),
            scopes: task.scopes.clone(),
            template: String::new(),
        })
        .await?
        .into_inner();
    let (rotation, lease) = match (answer.rotation, answer.lease) {
        (Some(rotation), Some(lease)) => (rotation, lease),
        _ => anyhow::bail!("the broker answered without the rotation and its lease"),
    };
    let state = match pb::RotationState::try_from(rotation.state) {
        Ok(pb::RotationState::Overlap) => "overlap",
        Ok(pb::RotationState::Confirmed) => "confirmed",
        Ok(pb::RotationState::Failed) => "failed",
        _ => "unknown",
    };
    let rotated = Rotated {
        rotation_id: rotation.rotation_id,
        state: state.to_owned(),
        old_lease_ids: rotation.old_lease_ids,
        revoke_at: crate::format::time(rotation.revoke_time.as_ref()),
        detail: rotation.detail,
        lease: row(&lease),
        token: answer.token,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rotated)?),
        Output::Table => {
            println!(
                "rotation {} is {}: new lease {}",
                rotated.rotation_id, rotated.state, rotated.lease.lease_id
            );
            match rotated.state.as_str() {
                "overlap" => println!(
                    "the old credential(s) {} stay valid until {}, then are revoked and checked",
                    rotated.old_lease_ids.join(", "),
                    rotated.revoke_at
                ),
                _ => println!("{}", rotated.detail),
            }
            println!("secret (shown once): {}", rotated.token);
        }
    }
    // A rotation whose old credential still works is not done.
    Ok(if state == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
