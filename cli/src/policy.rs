//! `steward policy` and `steward rules`: authority's two versioned
//! documents, the Cedar policy set and the response rules. Both are
//! validated, uploaded as a new version, listed, shown, activated with a
//! reason and rolled back; the commands and their output are the same for
//! both.

use std::path::Path;
use std::process::ExitCode;

use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_telemetry::TracedChannel;

use crate::Output;
use crate::approval::authority;
use crate::client::ConnectionArgs;
use crate::format;

type Authority = AuthorityServiceClient<TracedChannel>;

/// Which of authority's documents a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cedar policies (`.cedar`).
    Policy,
    /// Response rules (JSON).
    Rules,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Policy => "policy set",
            Self::Rules => "response rules",
        }
    }
}

/// One version as printed.
#[derive(Debug, serde::Serialize)]
pub struct VersionRow {
    pub version: u64,
    pub active: bool,
    pub description: String,
    pub uploaded_by: String,
    pub created: String,
    /// The policy ids, or the rule ids.
    pub ids: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub document: String,
}

/// Why a document is not valid.
#[derive(Debug, serde::Serialize)]
struct Problem {
    /// `line 3, column 7`, `policy p1`, or a JSON path.
    at: String,
    message: String,
}

#[derive(Debug, serde::Serialize)]
struct Validation {
    valid: bool,
    ids: Vec<String>,
    problems: Vec<Problem>,
}

fn policy_row(set: pb::PolicySet) -> VersionRow {
    VersionRow {
        version: set.version,
        active: set.active,
        description: set.description,
        uploaded_by: set.uploaded_by,
        created: format::time(set.create_time.as_ref()),
        ids: set.policy_ids,
        document: set.policies,
    }
}

fn rules_row(set: pb::ResponseRuleSet) -> VersionRow {
    VersionRow {
        version: set.version,
        active: set.active,
        description: set.description,
        uploaded_by: set.uploaded_by,
        created: format::time(set.create_time.as_ref()),
        ids: set.rule_ids,
        document: set.document,
    }
}

fn missing(kind: Kind) -> anyhow::Error {
    anyhow::anyhow!("authority answered without the {}", kind.noun())
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
}

async fn validation(
    client: &mut Authority,
    kind: Kind,
    document: String,
) -> anyhow::Result<Validation> {
    Ok(match kind {
        Kind::Policy => {
            let answer = client
                .validate_policy_set(pb::ValidatePolicySetRequest { policies: document })
                .await?
                .into_inner();
            Validation {
                valid: answer.valid,
                ids: answer.policy_ids,
                problems: answer
                    .errors
                    .into_iter()
                    .map(|e| Problem {
                        at: match (e.line, e.policy_id.is_empty()) {
                            (0, true) => String::new(),
                            (0, false) => format!("policy {}", e.policy_id),
                            (line, _) => format!("line {line}, column {}", e.column),
                        },
                        message: e.message,
                    })
                    .collect(),
            }
        }
        Kind::Rules => {
            let answer = client
                .validate_response_rules(pb::ValidateResponseRulesRequest { document })
                .await?
                .into_inner();
            Validation {
                valid: answer.valid,
                ids: answer.rule_ids,
                problems: answer
                    .errors
                    .into_iter()
                    .map(|e| Problem {
                        at: e.path,
                        message: e.message,
                    })
                    .collect(),
            }
        }
    })
}

/// Prints the problems; exit 2 when there are any.
fn report(
    kind: Kind,
    file: &Path,
    checked: &Validation,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(checked)?),
        Output::Table if checked.valid => println!(
            "{} is valid {}: {}",
            file.display(),
            kind.noun(),
            checked.ids.join(", ")
        ),
        Output::Table => {
            for p in &checked.problems {
                match p.at.as_str() {
                    "" => eprintln!("{}: {}", file.display(), p.message),
                    at => eprintln!("{}: {at}: {}", file.display(), p.message),
                }
            }
        }
    }
    Ok(if checked.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::BAD_ARGUMENT)
    })
}

pub async fn validate(
    args: &ConnectionArgs,
    kind: Kind,
    file: &Path,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut client = authority(args).await?;
    let checked = validation(&mut client, kind, read(file)?).await?;
    report(kind, file, &checked, output)
}

/// Uploads `file` as a new version; with `activate`, also makes it the
/// active version. A document authority refuses as not valid is reported
/// like `validate`.
pub async fn upload(
    args: &ConnectionArgs,
    kind: Kind,
    file: &Path,
    description: &str,
    activate: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let document = read(file)?;
    let mut client = authority(args).await?;
    let description = description.to_owned();
    let sent = match kind {
        Kind::Policy => client
            .upload_policy_set(pb::UploadPolicySetRequest {
                policies: document.clone(),
                description,
            })
            .await
            .map(|r| r.into_inner().policy_set.map(policy_row)),
        Kind::Rules => client
            .upload_response_rules(pb::UploadResponseRulesRequest {
                document: document.clone(),
                description,
            })
            .await
            .map(|r| r.into_inner().rule_set.map(rules_row)),
    };
    let mut uploaded = match sent {
        Ok(row) => row.ok_or_else(|| missing(kind))?,
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            // Say where, as `validate` does; a refusal for another reason
            // (the description, say) is the service's own message.
            let checked = validation(&mut client, kind, document).await?;
            if checked.valid {
                return Err(status.into());
            }
            return report(kind, file, &checked, output);
        }
        Err(status) => return Err(status.into()),
    };
    let mut previous = None;
    if let Some(reason) = activate {
        let (row, before) = activation(&mut client, kind, Some(uploaded.version), reason).await?;
        uploaded = row;
        previous = Some(before);
    }
    uploaded.document.clear();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&uploaded)?),
        Output::Table => {
            println!("uploaded {} version {}", kind.noun(), uploaded.version);
            if let Some(before) = previous {
                println!("  active now (was version {before})");
            } else {
                println!(
                    "  not active yet: `steward {} activate {} --reason …`",
                    match kind {
                        Kind::Policy => "policy",
                        Kind::Rules => "rules",
                    },
                    uploaded.version
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(
    args: &ConnectionArgs,
    kind: Kind,
    limit: usize,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = authority(args).await?;
    let rows = format::collect(limit, |page_token| {
        let mut client = client.clone();
        async move {
            Ok(match kind {
                Kind::Policy => {
                    let page = client
                        .list_policy_sets(pb::ListPolicySetsRequest {
                            page_size: 100,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    let rows = page.policy_sets.into_iter().map(policy_row).collect();
                    (rows, page.next_page_token)
                }
                Kind::Rules => {
                    let page = client
                        .list_response_rules(pb::ListResponseRulesRequest {
                            page_size: 100,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    let rows = page.rule_sets.into_iter().map(rules_row).collect();
                    (rows, page.next_page_token)
                }
            })
        }
    })
    .await?;
    format::rows(&rows, output, |rows| {
        println!(
            "{:<8} {:<7} {:<20} {:<44} DESCRIPTION",
            "VERSION", "ACTIVE", "CREATED", "UPLOADED BY"
        );
        for r in rows {
            println!(
                "{:<8} {:<7} {:<20} {:<44} {}",
                r.version,
                if r.active { "yes" } else { "" },
                r.created,
                r.uploaded_by,
                r.description
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One version (the active one when `version` is 0), with its document.
pub async fn show(
    args: &ConnectionArgs,
    kind: Kind,
    version: u64,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut client = authority(args).await?;
    let row = match kind {
        Kind::Policy => client
            .get_policy_set(pb::GetPolicySetRequest { version })
            .await?
            .into_inner()
            .policy_set
            .map(policy_row),
        Kind::Rules => client
            .get_response_rules(pb::GetResponseRulesRequest { version })
            .await?
            .into_inner()
            .rule_set
            .map(rules_row),
    }
    .ok_or_else(|| missing(kind))?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&row)?),
        Output::Table => {
            println!(
                "{} version {}{}, uploaded {} by {}",
                kind.noun(),
                row.version,
                if row.active { " (active)" } else { "" },
                row.created,
                row.uploaded_by
            );
            if !row.description.is_empty() {
                println!("{}", row.description);
            }
            println!();
            println!("{}", row.document.trim_end());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Activates `version`, or with `None` goes back to the version active
/// before the current one; returns the now active version and the one
/// active before.
async fn activation(
    client: &mut Authority,
    kind: Kind,
    version: Option<u64>,
    reason: &str,
) -> anyhow::Result<(VersionRow, u64)> {
    let reason = reason.to_owned();
    let (row, previous) = match (kind, version) {
        (Kind::Policy, Some(version)) => {
            let answer = client
                .activate_policy_set(pb::ActivatePolicySetRequest { version, reason })
                .await?
                .into_inner();
            (answer.policy_set.map(policy_row), answer.previous_version)
        }
        (Kind::Policy, None) => {
            let answer = client
                .rollback_policy_set(pb::RollbackPolicySetRequest { reason })
                .await?
                .into_inner();
            (answer.policy_set.map(policy_row), answer.previous_version)
        }
        (Kind::Rules, Some(version)) => {
            let answer = client
                .activate_response_rules(pb::ActivateResponseRulesRequest { version, reason })
                .await?
                .into_inner();
            (answer.rule_set.map(rules_row), answer.previous_version)
        }
        (Kind::Rules, None) => {
            let answer = client
                .rollback_response_rules(pb::RollbackResponseRulesRequest { reason })
                .await?
                .into_inner();
            (answer.rule_set.map(rules_row), answer.previous_version)
        }
    };
    Ok((row.ok_or_else(|| missing(kind))?, previous))
}

/// Activates `version` (or, when `version` is `None`, the one active
/// before the current one).
pub async fn activate(
    args: &ConnectionArgs,
    kind: Kind,
    version: Option<u64>,
    reason: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut client = authority(args).await?;
    let (mut row, previous) = activation(&mut client, kind, version, reason).await?;
    row.document.clear();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&row)?),
        Output::Table => println!(
            "{} version {} is active (was version {previous})",
            kind.noun(),
            row.version
        ),
    }
    Ok(ExitCode::SUCCESS)
}
