//! Protobuf ⇄ domain conversions. Every wire value is checked here, and an
//! error names the field as the request spells it.

use prost_types::Timestamp;
use steward_identity::SpiffeId;
use steward_proto::steward::inventory::v1 as pb;

use crate::domain::risk::{Severity, SignalKind};
use crate::domain::selector::Selector;
use crate::domain::{
    Classification, FieldError, Filter, Identity, IdentitySpec, Kind, Nanos, Owner, OwnerKind,
    State, UPDATABLE, bad,
};
use crate::store::activity::{Entitlement, Signal};
use crate::store::registration::RegistrationEntry;
use crate::store::reviews::{Campaign, Decision, ReviewItem};
use crate::store::transitions::Transition;

pub fn timestamp(ns: Nanos) -> Timestamp {
    steward_evidence::clock::timestamp_of_ns(ns)
}

pub fn opt_timestamp(ns: Option<Nanos>) -> Option<Timestamp> {
    ns.map(timestamp)
}

/// A wire time as nanoseconds; unset is `None`.
pub fn nanos(field: &str, ts: Option<&Timestamp>) -> Result<Option<Nanos>, FieldError> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(bad(field, "nanos must be within 0..1e9"));
    }
    // 1970 to 2262, the range of i64 nanoseconds.
    if !(0..9_223_372_036).contains(&ts.seconds) {
        return Err(bad(field, "must lie between 1970 and 2262"));
    }
    Ok(Some(ts.seconds * 1_000_000_000 + i64::from(ts.nanos)))
}

macro_rules! enum_map {
    ($fn_to:ident, $fn_from:ident, $pb:ty, $domain:ty, $what:literal, { $($p:ident => $d:ident),+ $(,)? }) => {
        /// The domain value of a wire enum; UNSPECIFIED and unknown numbers
        /// are errors naming `field`.
        pub fn $fn_to(field: &str, value: i32) -> Result<$domain, FieldError> {
            match <$pb>::try_from(value) {
                $(Ok(<$pb>::$p) => Ok(<$domain>::$d),)+
                Ok(_) => Err(bad(field, concat!("is required (a ", $what, ")"))),
                Err(_) => Err(bad(field, format!(concat!("{} is not a known ", $what), value))),
            }
        }

        pub fn $fn_from(value: $domain) -> i32 {
            match value { $(<$domain>::$d => <$pb>::$p as i32,)+ }
        }
    };
}

enum_map!(kind, kind_to_pb, pb::IdentityKind, Kind, "IdentityKind", {
    ServiceAccount => ServiceAccount,
    ApiKey => ApiKey,
    OauthApp => OauthApp,
    Certificate => Certificate,
    WorkloadIdentity => WorkloadIdentity,
    AiAgent => AiAgent,
    Connector => Connector,
    WebhookSecret => WebhookSecret,
    SshKey => SshKey,
    Other => Other,
});

enum_map!(state, state_to_pb, pb::LifecycleState, State, "LifecycleState", {
    Active => Active,
    Watchlisted => Watchlisted,
    Restricted => Restricted,
    Suspended => Suspended,
    Revoked => Revoked,
    Decommissioned => Decommissioned,
});

enum_map!(signal_kind, signal_kind_to_pb, pb::SignalKind, SignalKind, "SignalKind", {
    SecretExposed => SecretExposed,
    AnomalousLocation => AnomalousLocation,
    PrivilegeSprawl => PrivilegeSprawl,
    RotationFailed => RotationFailed,
    Dormant => Dormant,
    OwnerDeparted => OwnerDeparted,
    PolicyViolation => PolicyViolation,
    Custom => Custom,
});

enum_map!(severity, severity_to_pb, pb::Severity, Severity, "Severity", {
    Low => Low,
    Medium => Medium,
    High => High,
    Critical => Critical,
});

enum_map!(owner_kind_strict, owner_kind_to_pb, pb::OwnerKind, OwnerKind, "OwnerKind", {
    Person => Person,
    Team => Team,
});

enum_map!(classification_strict, classification_to_pb, pb::Classification, Classification, "Classification", {
    MachineToMachine => MachineToMachine,
    Interactive => Interactive,
});

enum_map!(decision, decision_to_pb, pb::ReviewDecision, Decision, "ReviewDecision", {
    Pending => Pending,
    StillNeeded => StillNeeded,
    Revoke => Revoke,
    Flagged => Flagged,
});

/// Unset classification means machine-to-machine, the common case.
fn classification(field: &str, value: i32) -> Result<Classification, FieldError> {
    if value == 0 {
        return Ok(Classification::MachineToMachine);
    }
    classification_strict(field, value)
}

fn owner(field: &str, value: Option<&pb::Owner>) -> Result<Option<Owner>, FieldError> {
    let Some(o) = value else { return Ok(None) };
    if o.name.is_empty() && o.contact.is_empty() && o.kind == 0 {
        return Ok(None);
    }
    let kind = if o.kind == 0 {
        OwnerKind::Person
    } else {
        owner_kind_strict(&format!("{field}.kind"), o.kind)?
    };
    Ok(Some(Owner {
        kind,
        name: o.name.clone(),
        contact: o.contact.clone(),
    }))
}

fn spiffe_id(field: &str, value: &str) -> Result<Option<SpiffeId>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    SpiffeId::parse(value)
        .map(Some)
        .map_err(|e| bad(field, e.to_string()))
}

/// Copies one IdentitySpec field, by its proto name, from the wire.
pub fn apply_path(
    spec: &mut IdentitySpec,
    wire: &pb::IdentitySpec,
    path: &str,
    prefix: &str,
) -> Result<(), FieldError> {
    let field = format!("{prefix}{path}");
    match path {
        "kind" => spec.kind = kind(&field, wire.kind)?,
        "display_name" => spec.display_name = wire.display_name.clone(),
        "source_system" => spec.source_system = wire.source_system.clone(),
        "external_id" => spec.external_id = wire.external_id.clone(),
        "environment" => spec.environment = wire.environment.clone(),
        "business_service" => spec.business_service = wire.business_service.clone(),
        "workload" => spec.workload = wire.workload.clone(),
        "classification" => spec.classification = classification(&field, wire.classification)?,
        "purpose" => spec.purpose = wire.purpose.clone(),
        "business_owner" => spec.business_owner = owner(&field, wire.business_owner.as_ref())?,
        "technical_owner" => spec.technical_owner = owner(&field, wire.technical_owner.as_ref())?,
        "unowned" => spec.unowned = wire.unowned,
        "spiffe_id" => spec.spiffe_id = spiffe_id(&field, &wire.spiffe_id)?,
        "labels" => spec.labels = wire.labels.clone().into_iter().collect(),
        "expire_time" => spec.expires_at = nanos(&field, wire.expire_time.as_ref())?,
        "last_rotate_time" => {
            spec.last_rotated_at = nanos(&field, wire.last_rotate_time.as_ref())?;
        }
        "last_use_time" => spec.last_used_at = nanos(&field, wire.last_use_time.as_ref())?,
        "source_create_time" => {
            spec.source_created_at = nanos(&field, wire.source_create_time.as_ref())?;
        }
        other => {
            return Err(bad(
                "update_mask",
                format!(
                    "{} is not an IdentitySpec field",
                    steward_errors::shown(other)
                ),
            ));
        }
    }
    Ok(())
}

/// The IdentitySpec fields that name an identity; with
/// [`UPDATABLE`], every field a create reads.
const IDENTIFYING: &[&str] = &["kind", "source_system", "external_id"];

/// A whole spec from the wire, validated; errors are prefixed `identity.`.
pub fn spec(wire: &pb::IdentitySpec) -> Result<IdentitySpec, FieldError> {
    let mut spec = IdentitySpec::new(Kind::Other, "", "");
    for path in IDENTIFYING.iter().chain(UPDATABLE) {
        apply_path(&mut spec, wire, path, "identity.")?;
    }
    spec.validate().map_err(|e| prefixed("identity.", e))?;
    Ok(spec)
}

pub fn prefixed(prefix: &str, e: FieldError) -> FieldError {
    FieldError {
        field: format!("{prefix}{}", e.field),
        reason: e.reason,
    }
}

fn owner_to_pb(o: &Option<Owner>) -> Option<pb::Owner> {
    o.as_ref().map(|o| pb::Owner {
        kind: owner_kind_to_pb(o.kind),
        name: o.name.clone(),
        contact: o.contact.clone(),
    })
}

pub fn identity_to_pb(i: &Identity, risk: (u32, Vec<String>)) -> pb::Identity {
    let s = &i.spec;
    pb::Identity {
        id: i.id.hyphenated().to_string(),
        kind: kind_to_pb(s.kind),
        display_name: s.display_name.clone(),
        source_system: s.source_system.clone(),
        external_id: s.external_id.clone(),
        environment: s.environment.clone(),
        business_service: s.business_service.clone(),
        workload: s.workload.clone(),
        classification: classification_to_pb(s.classification),
        purpose: s.purpose.clone(),
        business_owner: owner_to_pb(&s.business_owner),
        technical_owner: owner_to_pb(&s.technical_owner),
        unowned: s.unowned,
        state: state_to_pb(i.state),
        spiffe_id: s
            .spiffe_id
            .as_ref()
            .map(|x| x.to_string())
            .unwrap_or_default(),
        labels: s.labels.clone().into_iter().collect(),
        create_time: Some(timestamp(i.created_at)),
        update_time: Some(timestamp(i.updated_at)),
        expire_time: opt_timestamp(s.expires_at),
        last_rotate_time: opt_timestamp(s.last_rotated_at),
        last_use_time: opt_timestamp(s.last_used_at),
        state_change_time: Some(timestamp(i.state_changed_at)),
        source_create_time: opt_timestamp(s.source_created_at),
        version: i.version,
        risk: Some(pb::RiskAssessment {
            score: risk.0,
            reasons: risk.1,
        }),
    }
}

/// A filter from the wire; field names are prefixed with `prefix`.
pub fn filter(wire: Option<&pb::IdentityFilter>, prefix: &str) -> Result<Filter, FieldError> {
    let Some(f) = wire else {
        return Ok(Filter::default());
    };
    let kinds = f
        .kinds
        .iter()
        .enumerate()
        .map(|(i, k)| kind(&format!("{prefix}kinds[{i}]"), *k))
        .collect::<Result<Vec<_>, _>>()?;
    let states = f
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| state(&format!("{prefix}states[{i}]"), *s))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = Filter {
        kinds,
        states,
        owner: f.owner.clone(),
        label: Filter::parse_label(&f.label).map_err(|e| prefixed(prefix, e))?,
        business_service: f.business_service.clone(),
        environment: f.environment.clone(),
        source_system: f.source_system.clone(),
        text: f.text.clone(),
    };
    filter.validate().map_err(|e| prefixed(prefix, e))?;
    Ok(filter)
}

pub fn filter_to_pb(f: &Filter) -> pb::IdentityFilter {
    pb::IdentityFilter {
        kinds: f.kinds.iter().map(|k| kind_to_pb(*k)).collect(),
        states: f.states.iter().map(|s| state_to_pb(*s)).collect(),
        owner: f.owner.clone(),
        label: match &f.label {
            Some((k, Some(v))) => format!("{k}={v}"),
            Some((k, None)) => k.clone(),
            None => String::new(),
        },
        business_service: f.business_service.clone(),
        environment: f.environment.clone(),
        source_system: f.source_system.clone(),
        text: f.text.clone(),
    }
}

pub fn transition_to_pb(t: &Transition) -> pb::Transition {
    pb::Transition {
        id: t.id.hyphenated().to_string(),
        identity_id: t.identity_id.hyphenated().to_string(),
        from_state: state_to_pb(t.from),
        to_state: state_to_pb(t.to),
        actor: t.actor.clone(),
        reason: t.reason.clone(),
        incident_ref: t.incident_ref.clone(),
        reversible: t.reversible,
        time: Some(timestamp(t.at)),
    }
}

pub fn signal_to_pb(s: &Signal) -> pb::Signal {
    pb::Signal {
        id: s.id.hyphenated().to_string(),
        identity_id: s.identity_id.hyphenated().to_string(),
        kind: signal_kind_to_pb(s.kind),
        severity: severity_to_pb(s.severity),
        source: s.source.clone(),
        observe_time: Some(timestamp(s.observed_at)),
        evidence_ref: s.evidence_ref.clone(),
        summary: s.summary.clone(),
        status: if s.open {
            pb::SignalStatus::Open as i32
        } else {
            pb::SignalStatus::Resolved as i32
        },
        resolution: s.resolution.clone(),
        resolve_time: opt_timestamp(s.resolved_at),
        reported_by: s.reported_by.clone(),
    }
}

pub fn entitlement_to_pb(e: &Entitlement) -> pb::Entitlement {
    pb::Entitlement {
        identity_id: e.identity_id.hyphenated().to_string(),
        system: e.system.clone(),
        permission: e.permission.clone(),
        resource: e.resource.clone(),
        granted: e.granted,
        grant_time: opt_timestamp(e.granted_at),
        last_use_time: opt_timestamp(e.last_used_at),
        use_count: u64::try_from(e.use_count).unwrap_or(0),
    }
}

pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector {
        r#type: s.kind.clone(),
        value: s.value.clone(),
    }
}

pub fn entry_to_pb(e: &RegistrationEntry) -> pb::RegistrationEntry {
    pb::RegistrationEntry {
        id: e.id.hyphenated().to_string(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(selector_to_pb).collect(),
        x509_svid_ttl: e.x509_ttl,
        jwt_svid_ttl: e.jwt_ttl,
        identity_id: e.identity_id.hyphenated().to_string(),
        create_time: Some(timestamp(e.created_at)),
        dns_names: e.dns_names.clone(),
    }
}

pub fn campaign_to_pb(c: &Campaign) -> pb::ReviewCampaign {
    pb::ReviewCampaign {
        id: c.id.hyphenated().to_string(),
        name: c.name.clone(),
        filter: Some(filter_to_pb(&c.filter)),
        deadline: Some(timestamp(c.deadline)),
        state: if c.open {
            pb::CampaignState::Open as i32
        } else {
            pb::CampaignState::Closed as i32
        },
        created_by: c.created_by.clone(),
        create_time: Some(timestamp(c.created_at)),
        pending: c.pending,
        still_needed: c.still_needed,
        revoked: c.revoked,
        flagged: c.flagged,
    }
}

pub fn item_to_pb(i: &ReviewItem) -> pb::ReviewItem {
    pb::ReviewItem {
        campaign_id: i.campaign_id.hyphenated().to_string(),
        identity_id: i.identity_id.hyphenated().to_string(),
        display_name: i.display_name.clone(),
        owners: i.owners.clone(),
        decision: decision_to_pb(i.decision),
        reviewer: i.reviewer.clone(),
        reason: i.reason.clone(),
        new_expire_time: opt_timestamp(i.new_expires_at),
        decide_time: opt_timestamp(i.decided_at),
    }
}
