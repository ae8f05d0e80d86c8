//! The posture reports and imports.

use super::*;
use crate::domain::validate_label_key;
use crate::import::Format;
use crate::store::reports::Report;

/// Most owner annotations an import may name.
const MAX_OWNER_ANNOTATIONS: usize = 16;

impl InventoryServer {
    pub(super) async fn get_posture_report_impl(
        &self,
        request: Request<pb::GetPostureReportRequest>,
    ) -> Result<Response<pb::GetPostureReportResponse>, Status> {
        let r = request.into_inner();
        let report = report(r.report)?;
        if r.days > 36_500 {
            return Err(steward_errors::invalid("days", "at most 36500").into());
        }
        let days = if r.days == 0 {
            report.default_days()
        } else {
            i64::from(r.days)
        };
        let filter = filter(r.filter.as_ref(), "filter.").map_err(invalid)?;
        let now = nanos("as_of", r.as_of.as_ref())
            .map_err(invalid)?
            .unwrap_or_else(now_ns);
        let page = self
            .store
            .report(
                report,
                days,
                &filter,
                page_size(r.page_size)?,
                &r.page_token,
                now,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetPostureReportResponse {
            findings: page
                .findings
                .iter()
                .map(|f| {
                    let s = &f.identity.spec;
                    pb::PostureFinding {
                        identity_id: f.identity.id.hyphenated().to_string(),
                        display_name: s.display_name.clone(),
                        kind: kind_to_pb(s.kind),
                        state: state_to_pb(f.identity.state),
                        business_owner: s
                            .business_owner
                            .as_ref()
                            .map(|o| o.name.clone())
                            .unwrap_or_default(),
                        technical_owner: s
                            .technical_owner
                            .as_ref()
                            .map(|o| o.name.clone())
                            .unwrap_or_default(),
                        reasons: f.reasons.clone(),
                    }
                })
                .collect(),
            next_page_token: page.next_page_token,
            total: page.total.unwrap_or(0),
            as_of: Some(timestamp(now)),
        }))
    }

    pub(super) async fn import_identities_impl(
        &self,
        request: Request<pb::ImportIdentitiesRequest>,
    ) -> Result<Response<pb::ImportIdentitiesResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let format = format(r.format)?;
        if r.content.is_empty() {
            return Err(steward_errors::invalid("content", "is required").into());
        }
        optional("source_system", &r.source_system, MAX_NAME).map_err(invalid)?;
        optional("environment", &r.environment, MAX_NAME).map_err(invalid)?;
        if r.owner_annotations.len() > MAX_OWNER_ANNOTATIONS {
            return Err(steward_errors::invalid(
                "owner_annotations",
                format!("at most {MAX_OWNER_ANNOTATIONS}"),
            )
            .into());
        }
        for (i, key) in r.owner_annotations.iter().enumerate() {
            validate_label_key(&format!("owner_annotations[{i}]"), key).map_err(invalid)?;
        }
        let defaults = Defaults {
            source_system: r.source_system.clone(),
            environment: r.environment.clone(),
            trust_domain: self.trust_domain.clone(),
            owner_annotations: r.owner_annotations.clone(),
        };
        let content = r.content;
        let parsed =
            tokio::task::spawn_blocking(move || import::parse(format, &content, &defaults))
                .await
                .map_err(|_| status(Error::Internal("the import parser failed")))?;
        // Vanished is judged only over the source systems the import covers.
        let mut sources: BTreeSet<String> = parsed.sources.clone();
        if !r.source_system.is_empty() {
            sources.insert(r.source_system.clone());
        }
        let outcome = self
            .store
            .import(
                parsed.rows,
                &sources,
                parsed.kinds.as_deref(),
                r.dry_run,
                format.as_str(),
                &context,
            )
            .await
            .map_err(status)?;
        let mut errors: Vec<pb::ImportError> = parsed
            .errors
            .iter()
            .map(|e| pb::ImportError {
                line: e.line,
                field: e.field.clone(),
                reason: e.reason.clone(),
            })
            .chain(
                outcome
                    .rejected
                    .iter()
                    .map(|(line, field, reason)| pb::ImportError {
                        line: *line,
                        field: field.clone(),
                        reason: reason.clone(),
                    }),
            )
            .collect();
        errors.sort_by_key(|e| e.line);
        let rejected = errors.len() as u64;
        errors.truncate(crate::store::import::MAX_REPORTED);
        Ok(Response::new(pb::ImportIdentitiesResponse {
            rows: parsed.total,
            created: outcome.created,
            changed: outcome.changed,
            unchanged: outcome.unchanged,
            vanished: outcome.vanished,
            rejected,
            drift: outcome
                .drift
                .iter()
                .map(|d| pb::Drift {
                    kind: match d.kind {
                        DriftKind::New => pb::DriftKind::New,
                        DriftKind::Changed => pb::DriftKind::Changed,
                        DriftKind::Vanished => pb::DriftKind::Vanished,
                    } as i32,
                    identity_id: d.identity_id.hyphenated().to_string(),
                    source_system: d.source_system.clone(),
                    external_id: d.external_id.clone(),
                    fields: d.fields.clone(),
                })
                .collect(),
            errors,
            dry_run: r.dry_run,
        }))
    }
}

fn report(value: i32) -> Result<Report, Status> {
    match pb::PostureReport::try_from(value) {
        Ok(pb::PostureReport::Stale) => Ok(Report::Stale),
        Ok(pb::PostureReport::Orphaned) => Ok(Report::Orphaned),
        Ok(pb::PostureReport::OverPrivileged) => Ok(Report::OverPrivileged),
        Ok(pb::PostureReport::Expiring) => Ok(Report::Expiring),
        Ok(pb::PostureReport::ExpiredButActive) => Ok(Report::ExpiredButActive),
        Ok(pb::PostureReport::Shared) => Ok(Report::Shared),
        Ok(pb::PostureReport::NoExpiry) => Ok(Report::NoExpiry),
        Ok(pb::PostureReport::LongLivedSecret) => Ok(Report::LongLivedSecret),
        Ok(pb::PostureReport::MultipleActiveKeys) => Ok(Report::MultipleActiveKeys),
        Ok(pb::PostureReport::Unspecified) => {
            Err(steward_errors::invalid("report", "is required").into())
        }
        Err(_) => Err(steward_errors::invalid(
            "report",
            format!("{value} is not a known PostureReport"),
        )
        .into()),
    }
}

fn format(value: i32) -> Result<Format, Status> {
    match pb::ImportFormat::try_from(value) {
        Ok(pb::ImportFormat::AwsIamCredentialReport) => Ok(Format::AwsIamCredentialReport),
        Ok(pb::ImportFormat::AwsIamAuthorizationDetails) => Ok(Format::AwsAuthorizationDetails),
        Ok(pb::ImportFormat::KubernetesServiceAccounts) => Ok(Format::KubernetesServiceAccounts),
        Ok(pb::ImportFormat::Csv) => Ok(Format::Csv),
        Ok(pb::ImportFormat::Json) => Ok(Format::Json),
        Ok(pb::ImportFormat::GcpServiceAccounts) => Ok(Format::Gcp),
        Ok(pb::ImportFormat::EntraApplications) => Ok(Format::Azure),
        Ok(pb::ImportFormat::GithubCredentials) => Ok(Format::Github),
        Ok(pb::ImportFormat::Unspecified) => {
            Err(steward_errors::invalid("format", "is required").into())
        }
        Err(_) => Err(steward_errors::invalid(
            "format",
            format!("{value} is not a known ImportFormat"),
        )
        .into()),
    }
}
