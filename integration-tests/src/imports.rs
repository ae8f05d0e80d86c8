//! Import test helpers: the sample exports in `deploy/samples/`, one
//! import call, and the posture reports read as of a fixed day so that
//! what is stale or expiring does not move with the calendar.

use steward_proto::steward::inventory::v1 as pb;

use crate::inventory::Client;
use crate::workspace_root;

/// A sample export's bytes.
pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("deploy/samples").join(name)).unwrap()
}

/// Imports `content` into `source_system` (empty: the format's default)
/// for production.
pub async fn import(
    client: &mut Client,
    format: pb::ImportFormat,
    content: Vec<u8>,
    source_system: &str,
) -> pb::ImportIdentitiesResponse {
    client
        .import_identities(pb::ImportIdentitiesRequest {
            format: format as i32,
            content,
            source_system: source_system.into(),
            environment: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The day the samples are read as of (2026-12-07), so that what is
/// stale, long-lived or unused does not move with the calendar.
pub const AS_OF: i64 = 1_796_601_600;

/// A report's first page as of [`AS_OF`], as (display name, reasons).
pub async fn report(client: &mut Client, report: pb::PostureReport) -> Vec<(String, Vec<String>)> {
    let page = client
        .get_posture_report(pb::GetPostureReportRequest {
            report: report as i32,
            page_size: 500,
            as_of: Some(prost_types::Timestamp {
                seconds: AS_OF,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.findings
        .into_iter()
        .map(|f| (f.display_name, f.reasons))
        .collect()
}

/// The reasons `report` gives for `name`, or `None` when it is not there.
pub fn reasons<'a>(found: &'a [(String, Vec<String>)], name: &str) -> Option<&'a [String]> {
    found
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, r)| r.as_slice())
}

/// The one identity of `source` with `external_id`.
pub async fn identity(client: &mut Client, source: &str, external_id: &str) -> pb::Identity {
    let found = client
        .list_identities(pb::ListIdentitiesRequest {
            filter: Some(pb::IdentityFilter {
                source_system: source.into(),
                text: external_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .identities;
    let mut found: Vec<_> = found
        .into_iter()
        .filter(|i| i.external_id == external_id)
        .collect();
    assert_eq!(found.len(), 1, "{source} {external_id}");
    found.remove(0)
}

/// An identity's granted entitlements as (system, permission, resource).
pub async fn entitlements(client: &mut Client, id: &str) -> Vec<(String, String, String)> {
    client
        .list_entitlements(pb::ListEntitlementsRequest {
            identity_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entitlements
        .into_iter()
        .filter(|e| e.granted)
        .map(|e| (e.system, e.permission, e.resource))
        .collect()
}
