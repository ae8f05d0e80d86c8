//! `steward health` and `steward whoami`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use steward_proto::steward::common::v1::WhoAmIRequest;
use steward_proto::steward::common::v1::identity_service_client::IdentityServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::Output;
use crate::client::{ConnectionArgs, connect, service_id};

/// One service's health, as printed.
#[derive(Debug, serde::Serialize)]
pub struct ServiceHealth {
    pub service: String,
    pub endpoint: String,
    pub spiffe_id: String,
    pub status: String,
    pub latency_ms: f64,
}

/// Checks one service's overall health over mTLS; `Ok(true)` when SERVING.
pub async fn check(args: &ConnectionArgs, service: &str) -> anyhow::Result<ServiceHealth> {
    let source = args.source()?;
    let trust_domain = source.material().id.trust_domain().clone();
    let expected = service_id(&trust_domain, service)?;
    let endpoint = args.address(service)?;
    let started = Instant::now();
    let status = match connect(&source, &endpoint, expected.clone()).await {
        Ok(channel) => {
            let request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            match tokio::time::timeout(
                Duration::from_secs(5),
                HealthClient::new(channel).check(request),
            )
            .await
            {
                Ok(Ok(response)) => response.into_inner().status().as_str_name().to_owned(),
                Ok(Err(status)) => format!("ERROR: {}", status.message()),
                Err(_) => "ERROR: timed out".to_owned(),
            }
        }
        Err(error) => format!("UNREACHABLE: {error:#}"),
    };
    Ok(ServiceHealth {
        service: service.to_owned(),
        endpoint,
        spiffe_id: expected.to_string(),
        status,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

pub async fn health(args: &ConnectionArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (inventory, authority, broker, audit) = tokio::join!(
        check(args, "inventory"),
        check(args, "authority"),
        check(args, "credential-broker"),
        check(args, "audit"),
    );
    let rows = vec![inventory?, authority?, broker?, audit?];
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:<18} {:<17} {:<50} {:>8}  STATUS",
                "SERVICE", "ENDPOINT", "SPIFFE ID", "LATENCY"
            );
            for row in &rows {
                println!(
                    "{:<18} {:<17} {:<50} {:>6.1}ms  {}",
                    row.service, row.endpoint, row.spiffe_id, row.latency_ms, row.status
                );
            }
        }
    }
    let all_serving = rows.iter().all(|r| r.status == "SERVING");
    Ok(if all_serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn whoami(
    args: &ConnectionArgs,
    service: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let source = args.source()?;
    let trust_domain = source.material().id.trust_domain().clone();
    let channel = connect(
        &source,
        &args.address(service)?,
        service_id(&trust_domain, service)?,
    )
    .await?;
    let reply = IdentityServiceClient::new(channel)
        .who_am_i(WhoAmIRequest {})
        .await?
        .into_inner();
    let human = crate::login::stored_human(args.token_file.as_deref())?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "caller_spiffe_id": reply.caller_spiffe_id,
                "server_spiffe_id": reply.server_spiffe_id,
                "service": reply.service,
                "version": reply.version,
                "human": human,
            })
        ),
        Output::Table => {
            println!("you are     {}", reply.caller_spiffe_id);
            if let Some(h) = &human {
                println!(
                    "as human    {} ({}, token until {})",
                    h.subject, h.issuer, h.expires_at
                );
            }
            println!(
                "talking to  {} ({} {})",
                reply.server_spiffe_id, reply.service, reply.version
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
