//! `steward workload`: registration entries, as `spire-server entry` keeps
//! them. An entry says which attested selectors (`unix:uid:1000`,
//! `k8s:ns:payments`) make a workload act as which inventory identity, and
//! with which SPIFFE ID, TTLs and DNS names its SVIDs are issued.
//! `register` makes one, `list` pages through them (by identity, SPIFFE ID
//! or selector), `show` prints one, `update` changes its selectors, TTLs
//! or DNS names, `delete` removes one. Inventory
//! validates every field; its refusal names the field.

use std::process::ExitCode;

use steward_proto::steward::inventory::v1 as pb;

use crate::Output;
use crate::client::ConnectionArgs;

/// What `register` registers.
#[derive(Debug, Clone, clap::Args)]
pub struct Registration {
    /// The SPIFFE ID the workload gets (the identity's own, when it has one).
    #[arg(long)]
    pub spiffe_id: String,
    /// The inventory identity the workload acts as.
    #[arg(long)]
    pub identity: String,
    /// A selector the workload must show, `type:value` (`unix:uid:1000`,
    /// `unix:path:/usr/bin/app`); repeat for several, all must match.
    #[arg(long = "selector", required = true)]
    pub selectors: Vec<String>,
    /// Who attests the workload (default: this trust domain's broker).
    #[arg(long)]
    pub parent_id: Option<String>,
    /// X.509-SVID lifetime in seconds (0: the broker's default).
    #[arg(long, default_value_t = 0)]
    pub x509_ttl: i32,
    /// JWT-SVID lifetime in seconds (0: the broker's default).
    #[arg(long, default_value_t = 0)]
    pub jwt_ttl: i32,
    /// A DNS name for its X.509-SVIDs; repeat for several.
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
}

/// What `update` changes: only the flags given.
#[derive(Debug, Clone, clap::Args)]
pub struct Change {
    /// The entry.
    pub id: String,
    /// The entry's selectors from now on (replacing all of them); repeat.
    #[arg(long = "selector")]
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime in seconds (0: the broker's default).
    #[arg(long)]
    pub x509_ttl: Option<i32>,
    /// JWT-SVID lifetime in seconds (0: the broker's default).
    #[arg(long)]
    pub jwt_ttl: Option<i32>,
    /// The entry's DNS names from now on (replacing all of them); repeat.
    #[arg(long = "dns-name", conflicts_with = "no_dns_names")]
    pub dns_names: Vec<String>,
    /// Remove every DNS name.
    #[arg(long)]
    pub no_dns_names: bool,
}

/// Which entries `list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Entries of this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Entries that give this SPIFFE ID.
    #[arg(long)]
    pub spiffe_id: Option<String>,
    /// Entries with this selector among theirs, `type:value`.
    #[arg(long)]
    pub selector: Option<String>,
    /// Stop after this many entries.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// An entry as printed.
#[derive(Debug, serde::Serialize)]
pub struct EntryRow {
    pub id: String,
    pub spiffe_id: String,
    pub parent_id: String,
    pub identity_id: String,
    pub selectors: Vec<String>,
    pub x509_svid_ttl: i32,
    pub jwt_svid_ttl: i32,
    pub dns_names: Vec<String>,
    pub created: String,
}

fn row(e: &pb::RegistrationEntry) -> EntryRow {
    EntryRow {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent_id: e.parent_id.clone(),
        identity_id: e.identity_id.clone(),
        selectors: e
            .selectors
            .iter()
            .map(|s| format!("{}:{}", s.r#type, s.value))
            .collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        dns_names: e.dns_names.clone(),
        created: crate::format::time(e.create_time.as_ref()),
    }
}

fn table(rows: &[EntryRow]) {
    println!("{:<36}  {:<48}  SELECTORS", "ENTRY", "SPIFFE ID");
    for r in rows {
        println!(
            "{:<36}  {:<48}  {}",
            r.id,
            r.spiffe_id,
            r.selectors.join(" ")
        );
    }
}

/// `type:value` as a selector; the value may hold further colons
/// (`unix:uid:1000`). Inventory checks the rest.
fn selector(text: &str) -> anyhow::Result<pb::Selector> {
    match text.split_once(':') {
        Some((kind, value)) if !kind.is_empty() && !value.is_empty() => Ok(pb::Selector {
            r#type: kind.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(tonic::Status::invalid_argument(format!(
            "--selector: {} is not type:value (unix:uid:1000, say)",
            steward_errors::shown(text)
        ))
        .into()),
    }
}

async fn inventory(
    args: &ConnectionArgs,
) -> anyhow::Result<
    pb::inventory_service_client::InventoryServiceClient<steward_telemetry::TracedChannel>,
> {
    Ok(pb::inventory_service_client::InventoryServiceClient::new(
        args.channel("inventory").await?,
    ))
}

pub async fn register(
    args: &ConnectionArgs,
    r: Registration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let selectors = r
        .selectors
        .iter()
        .map(|s| selector(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let parent_id = match r.parent_id {
        Some(parent) => parent,
        None => {
            let source = args.source()?;
            let td = source.material().id.trust_domain().clone();
            crate::client::service_id(&td, "credential-broker")?.to_string()
        }
    };
    let entry = inventory(args)
        .await?
        .create_registration_entry(pb::CreateRegistrationEntryRequest {
            entry: Some(pb::RegistrationEntry {
                spiffe_id: r.spiffe_id,
                parent_id,
                selectors,
                x509_svid_ttl: r.x509_ttl,
                jwt_svid_ttl: r.jwt_ttl,
                identity_id: r.identity,
                dns_names: r.dns_names,
                ..Default::default()
            }),
            context: None,
        })
        .await?
        .into_inner()
        .entry
        .ok_or_else(|| anyhow::anyhow!("inventory answered without the entry"))?;
    let entry = row(&entry);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&entry)?),
        Output::Table => println!(
            "entry {}: workloads showing {} get {}",
            entry.id,
            entry.selectors.join(" and "),
            entry.spiffe_id
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn update(args: &ConnectionArgs, c: Change, output: Output) -> anyhow::Result<ExitCode> {
    let mut paths = Vec::new();
    let mut entry = pb::RegistrationEntry {
        id: c.id,
        ..Default::default()
    };
    if !c.selectors.is_empty() {
        entry.selectors = c
            .selectors
            .iter()
            .map(|s| selector(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        paths.push("selectors");
    }
    if let Some(ttl) = c.x509_ttl {
        entry.x509_svid_ttl = ttl;
        paths.push("x509_svid_ttl");
    }
    if let Some(ttl) = c.jwt_ttl {
        entry.jwt_svid_ttl = ttl;
        paths.push("jwt_svid_ttl");
    }
    if !c.dns_names.is_empty() || c.no_dns_names {
        entry.dns_names = c.dns_names;
        paths.push("dns_names");
    }
    if paths.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "nothing to change: give --selector, --x509-ttl, --jwt-ttl, --dns-name or --no-dns-names",
        )
        .into());
    }
    let entry = inventory(args)
        .await?
        .update_registration_entry(pb::UpdateRegistrationEntryRequest {
            entry: Some(entry),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            context: None,
        })
        .await?
        .into_inner()
        .entry
        .ok_or_else(|| anyhow::anyhow!("inventory answered without the entry"))?;
    crate::format::record(&row(&entry), output)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn list(
    args: &ConnectionArgs,
    filter: Filter,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = inventory(args).await?;
    let request = pb::ListRegistrationEntriesRequest {
        identity_id: filter.identity.unwrap_or_default(),
        spiffe_id: filter.spiffe_id.unwrap_or_default(),
        selector: filter.selector.as_deref().map(selector).transpose()?,
        page_size: 500,
        page_token: String::new(),
    };
    let rows = crate::format::collect(filter.limit, |page_token| {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            let page = client
                .list_registration_entries(pb::ListRegistrationEntriesRequest {
                    page_token,
                    ..request
                })
                .await?
                .into_inner();
            Ok((page.entries.iter().map(row).collect(), page.next_page_token))
        }
    })
    .await?;
    crate::format::rows(&rows, output, table)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn show(args: &ConnectionArgs, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    let entry = inventory(args)
        .await?
        .get_registration_entry(pb::GetRegistrationEntryRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .entry
        .ok_or_else(|| anyhow::anyhow!("inventory answered without the entry"))?;
    crate::format::record(&row(&entry), output)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: &ConnectionArgs, id: &str, output: Output) -> anyhow::Result<ExitCode> {
    inventory(args)
        .await?
        .delete_registration_entry(pb::DeleteRegistrationEntryRequest {
            id: id.to_owned(),
            context: None,
        })
        .await?;
    match output {
        Output::Json => println!("{}", serde_json::json!({ "deleted": id })),
        Output::Table => println!("entry {id} deleted"),
    }
    Ok(ExitCode::SUCCESS)
}
