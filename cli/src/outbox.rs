//! `steward outbox`: the evidence a service holds for audit. `show` counts
//! what waits and lists what audit refused (parked); `retry` sends parked
//! records again once their cause is fixed.

use std::process::ExitCode;

use steward_proto::steward::common::v1 as pb;
use steward_proto::steward::common::v1::evidence_outbox_client::EvidenceOutboxClient;

use crate::Output;
use crate::client::ConnectionArgs;
use crate::format;

/// The services that keep an evidence outbox.
pub const SERVICES: &[&str] = &["inventory", "authority", "credential-broker"];

/// One service's outbox, as printed.
#[derive(Debug, serde::Serialize)]
pub struct OutboxRow {
    pub service: String,
    pub pending: i64,
    pub parked: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub oldest_pending: String,
    pub parked_records: Vec<ParkedRow>,
}

#[derive(Debug, serde::Serialize)]
pub struct ParkedRow {
    pub seq: i64,
    pub record_id: String,
    pub action: String,
    pub error: String,
    pub attempts: i64,
    pub enqueued: String,
}

async fn client(
    args: &ConnectionArgs,
    service: &str,
) -> anyhow::Result<EvidenceOutboxClient<steward_telemetry::TracedChannel>> {
    if !SERVICES.contains(&service) {
        anyhow::bail!(
            "{service} keeps no evidence outbox; one of: {}",
            SERVICES.join(", ")
        );
    }
    Ok(EvidenceOutboxClient::new(args.channel(service).await?))
}

/// `steward outbox show`: every named service's outbox (all three by
/// default).
pub async fn show(
    args: &ConnectionArgs,
    services: &[String],
    output: Output,
) -> anyhow::Result<ExitCode> {
    let services: Vec<&str> = if services.is_empty() {
        SERVICES.to_vec()
    } else {
        services.iter().map(String::as_str).collect()
    };
    let mut rows = Vec::new();
    for service in services {
        let answer = client(args, service)
            .await?
            .get_outbox(pb::GetOutboxRequest { page_size: 1000 })
            .await?
            .into_inner();
        rows.push(OutboxRow {
            service: service.to_owned(),
            pending: answer.pending,
            parked: answer.parked,
            oldest_pending: format::time(answer.oldest_pending_time.as_ref()),
            parked_records: answer
                .parked_records
                .iter()
                .map(|p| ParkedRow {
                    seq: p.seq,
                    record_id: p.record_id.clone(),
                    action: p.action.clone(),
                    error: p.error.clone(),
                    attempts: p.attempts,
                    enqueued: format::time(p.enqueue_time.as_ref()),
                })
                .collect(),
        });
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:<18} {:>8} {:>7}  OLDEST WAITING",
                "SERVICE", "PENDING", "PARKED"
            );
            for row in &rows {
                println!(
                    "{:<18} {:>8} {:>7}  {}",
                    row.service, row.pending, row.parked, row.oldest_pending
                );
            }
            for row in rows.iter().filter(|r| !r.parked_records.is_empty()) {
                println!(
                    "\nparked in {} (send again: steward outbox retry --service {} --all):",
                    row.service, row.service
                );
                for p in &row.parked_records {
                    println!(
                        "  seq {:<6} {} {:<24} {} attempts, queued {}: {}",
                        p.seq, p.record_id, p.action, p.attempts, p.enqueued, p.error
                    );
                }
            }
        }
    }
    // Parked evidence is an acknowledged change whose record is not in the
    // log yet: a script checking this wants to know.
    Ok(if rows.iter().any(|r| r.parked > 0) {
        ExitCode::from(6)
    } else {
        ExitCode::SUCCESS
    })
}

/// `steward outbox retry`: parked records of one service back in line.
pub async fn retry(
    args: &ConnectionArgs,
    service: &str,
    seqs: Vec<i64>,
    all: bool,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let answer = client(args, service)
        .await?
        .retry_parked(pb::RetryParkedRequest { seqs, all })
        .await?
        .into_inner();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({ "service": service, "requeued": answer.requeued })
        ),
        Output::Table => println!(
            "{} parked record(s) of {service} sent to audit again",
            answer.requeued
        ),
    }
    Ok(ExitCode::SUCCESS)
}
