//! The SPIFFE registration entry handlers.

use steward_errors::Invalid;

use super::*;
use crate::store::registration::{EntryChange, EntryFilter};

impl InventoryServer {
    pub(super) async fn create_registration_entry_impl(
        &self,
        request: Request<pb::CreateRegistrationEntryRequest>,
    ) -> Result<Response<pb::CreateRegistrationEntryResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let e = r
            .entry
            .ok_or_else(|| steward_errors::invalid("entry", "is required"))?;
        let spiffe = |field: &str, value: &str| {
            if value.is_empty() {
                return Err(steward_errors::invalid(field, "is required"));
            }
            SpiffeId::parse(value).map_err(|err| steward_errors::invalid(field, err.to_string()))
        };
        let spiffe_id = spiffe("entry.spiffe_id", &e.spiffe_id)?;
        let parent_id = spiffe("entry.parent_id", &e.parent_id)?;
        if spiffe_id.trust_domain() != &self.trust_domain {
            return Err(steward_errors::invalid(
                "entry.spiffe_id",
                format!(
                    "must be in this trust domain ({})",
                    self.trust_domain.name()
                ),
            )
            .into());
        }
        let selectors = selectors_of(&e.selectors)?;
        ttl("entry.x509_svid_ttl", e.x509_svid_ttl)?;
        ttl("entry.jwt_svid_ttl", e.jwt_svid_ttl)?;
        let identity_id = id("entry.identity_id", &e.identity_id)?;
        let dns_names = dns_names("entry.dns_names", &e.dns_names)?;
        let entry = RegistrationEntry {
            id: Uuid::now_v7(),
            spiffe_id,
            parent_id,
            selectors,
            x509_ttl: e.x509_svid_ttl,
            jwt_ttl: e.jwt_svid_ttl,
            identity_id,
            created_at: now_ns(),
            dns_names,
        };
        self.store
            .create_entry(&entry, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateRegistrationEntryResponse {
            entry: Some(entry_to_pb(&entry)),
        }))
    }

    pub(super) async fn update_registration_entry_impl(
        &self,
        request: Request<pb::UpdateRegistrationEntryRequest>,
    ) -> Result<Response<pb::UpdateRegistrationEntryResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let r = request.into_inner();
        let e = r
            .entry
            .ok_or_else(|| steward_errors::invalid("entry", "is required"))?;
        let entry_id = id("entry.id", &e.id)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(steward_errors::invalid(
                "update_mask",
                "name what changes (selectors, x509_svid_ttl, jwt_svid_ttl, dns_names)",
            )
            .into());
        }
        let mut change = EntryChange::default();
        for path in &paths {
            match path.as_str() {
                "selectors" => change.selectors = Some(selectors_of(&e.selectors)?),
                "x509_svid_ttl" => {
                    change.x509_ttl = Some(ttl("entry.x509_svid_ttl", e.x509_svid_ttl)?)
                }
                "jwt_svid_ttl" => change.jwt_ttl = Some(ttl("entry.jwt_svid_ttl", e.jwt_svid_ttl)?),
                "dns_names" => change.dns_names = Some(dns_names("entry.dns_names", &e.dns_names)?),
                other => {
                    return Err(steward_errors::invalid("update_mask", format!("{} cannot change (selectors, x509_svid_ttl, jwt_svid_ttl, dns_names can)",
                        steward_errors::shown(other))).into());
                }
            }
        }
        let entry = self
            .store
            .update_entry(&entry_id, &change, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateRegistrationEntryResponse {
            entry: Some(entry_to_pb(&entry)),
        }))
    }

    pub(super) async fn delete_registration_entry_impl(
        &self,
        request: Request<pb::DeleteRegistrationEntryRequest>,
    ) -> Result<Response<pb::DeleteRegistrationEntryResponse>, Status> {
        let context = context(&request, request.get_ref().context.as_ref())?;
        let entry_id = id("id", &request.get_ref().id)?;
        self.store
            .delete_entry(&entry_id, &context)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteRegistrationEntryResponse {}))
    }

    pub(super) async fn list_registration_entries_impl(
        &self,
        request: Request<pb::ListRegistrationEntriesRequest>,
    ) -> Result<Response<pb::ListRegistrationEntriesResponse>, Status> {
        let r = request.into_inner();
        let filter = EntryFilter {
            identity_id: if r.identity_id.is_empty() {
                None
            } else {
                Some(id("identity_id", &r.identity_id)?)
            },
            spiffe_id: if r.spiffe_id.is_empty() {
                None
            } else {
                Some(
                    SpiffeId::parse(&r.spiffe_id)
                        .map_err(|e| steward_errors::invalid("spiffe_id", format!("{e}")))?,
                )
            },
            selector: r
                .selector
                .as_ref()
                .map(|s| Selector::parse("selector", &s.r#type, &s.value))
                .transpose()
                .map_err(invalid)?,
        };
        let (entries, next_page_token) = self
            .store
            .entries(&filter, page_size(r.page_size)?, &r.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListRegistrationEntriesResponse {
            entries: entries.iter().map(entry_to_pb).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn match_selectors_impl(
        &self,
        request: Request<pb::MatchSelectorsRequest>,
    ) -> Result<Response<pb::MatchSelectorsResponse>, Status> {
        let r = request.into_inner();
        if r.selectors.len() > 4 * selector::MAX_SELECTORS {
            return Err(steward_errors::invalid("selectors", "too many").into());
        }
        let attested = r
            .selectors
            .iter()
            .enumerate()
            .map(|(i, s)| Selector::parse(&format!("selectors[{i}]"), &s.r#type, &s.value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let entries = self
            .store
            .match_selectors(&attested)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MatchSelectorsResponse {
            entries: entries.iter().map(entry_to_pb).collect(),
        }))
    }
}

/// An entry's selectors, checked and in canonical order.
fn selectors_of(wire: &[pb::Selector]) -> Result<Vec<Selector>, Status> {
    let selectors = wire
        .iter()
        .enumerate()
        .map(|(i, s)| Selector::parse(&format!("entry.selectors[{i}]"), &s.r#type, &s.value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    selector::canonical("entry.selectors", selectors).map_err(invalid)
}

/// An SVID lifetime: 0 (the broker's default) to 30 days.
fn ttl(field: &str, seconds: i32) -> Result<i32, Invalid> {
    if (0..=86_400 * 30).contains(&seconds) {
        Ok(seconds)
    } else {
        let why = "must be 0 (the default) to 2592000 seconds";
        Err(steward_errors::invalid(field, why))
    }
}

/// The most DNS names one entry may carry.
const MAX_DNS_NAMES: usize = 32;

/// Checked DNS names: valid host names (RFC 1123 labels; a leading `*.`
/// for a wildcard), lower-cased, without duplicates.
fn dns_names(field: &str, names: &[String]) -> Result<Vec<String>, Invalid> {
    if names.len() > MAX_DNS_NAMES {
        let why = format!("at most {MAX_DNS_NAMES}");
        return Err(steward_errors::invalid(field, why));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        if !host_name(&lower) {
            let why = format!("{} is not a host name", steward_errors::shown(name));
            return Err(steward_errors::invalid(format!("{field}[{i}]"), why));
        }
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

fn host_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}
