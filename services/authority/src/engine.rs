//! The decision engine: Steward's Cedar schema, compiled policy sets, and
//! decisions with their deciding policies, reasons and obligations.
//!
//! A policy set is parsed and validated strictly against the schema when it
//! is compiled; errors carry the line and column in the uploaded text.
//! Decisions evaluate only the *slice* of the set that can apply to the
//! request ([`slice`]). Cedar's cost is linear in the policies it is given,
//! and the slice is exact in what matters: it keeps every policy whose scope
//! can match, so sliced and unsliced decisions agree (a property the tests
//! check over a generated corpus).
//!
//! Steward's meaning on top of Cedar's permit/forbid comes from documented
//! policy annotations (`docs/authority-policies.md`):
//! - `@id("…")`: the policy's id in decisions and evidence;
//! - `@reason("…")`: the sentence a decision quotes;
//! - `@approvals("N")` and `@approver("technical_owner" | "business_owner" |
//!   "group:<name>")`: the permit holds only with N approvals; fewer makes
//!   the decision APPROVAL_REQUIRED;
//! - `@max_ttl("<seconds>")`: caps the credential lifetime;
//! - `@obligations("a,b")`: duties the executor takes on, such as
//!   `revoke_old_secret` or `post_action_review`.

pub mod slice;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use slice::PrincipalType;
pub use slice::SliceIndex;

/// The schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../policy/steward.cedarschema");
/// The policy set a fresh authority starts with.
pub const DEFAULT_POLICIES: &str = include_str!("../policy/default.cedar");

/// The actions whose resource is an NHI: the ones `Authorize` decides.
pub const NHI_ACTIONS: &[&str] = &[
    "issue",
    "renew",
    "rotate",
    "revoke",
    "suspend",
    "restrict",
    "watchlist",
    "elevate",
    "approve",
    "break_glass",
    "attest",
    "reinstate",
];

/// The other actions, decided by the RPC that takes them (`CloseIncident`,
/// the policy and rule uploads, delegation in `Authorize` itself).
pub const OTHER_ACTIONS: &[&str] = &["close_incident", "manage_policy", "act_for", "rotate_ca"];

/// Every action of the schema, in the order the API lists them.
pub fn actions() -> impl Iterator<Item = &'static str> {
    NHI_ACTIONS.iter().chain(OTHER_ACTIONS).copied()
}

/// What a decision is about: the entity type of its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    Nhi,
    Incident,
    Document,
    TrustDomain,
    Human,
    Workload,
}

impl ResourceType {
    fn of(uid: &EntityUid) -> Option<Self> {
        match uid.type_name().to_string().as_str() {
            "Steward::Nhi" => Some(Self::Nhi),
            "Steward::Incident" => Some(Self::Incident),
            "Steward::Document" => Some(Self::Document),
            "Steward::TrustDomain" => Some(Self::TrustDomain),
            "Steward::Human" => Some(Self::Human),
            "Steward::Workload" => Some(Self::Workload),
            _ => None,
        }
    }
}

/// Why the engine could not be built or a request evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the built-in schema is invalid: {0}")]
    Schema(String),
    #[error("{field}: {reason}")]
    Request { field: String, reason: String },
}

fn request_error(field: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Request {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// One problem in an uploaded policy set, located in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based; 0 when Cedar gave no location.
    pub line: u32,
    pub column: u32,
    pub policy_id: String,
    pub message: String,
}

/// The schema and what is derived from it once.
#[derive(Debug)]
pub struct Engine {
    schema: Schema,
    /// Per action: its entity and its groups' entities, the only action
    /// entities a request for it needs.
    action_entities: HashMap<String, Vec<Entity>>,
    /// Each action's slice keys: its id and its groups' ids.
    action_keys: HashMap<String, Vec<String>>,
    /// Principal entities, built once per principal and groups.
    principals: RwLock<HashMap<Principal, Entity>>,
    /// Cedar contexts, built once per distinct request context (decisions
    /// within the same second for the same caller and incident share one).
    contexts: RwLock<HashMap<RequestContext, Context>>,
    types: Types,
    authorizer: Authorizer,
}

/// Most principal entities and contexts kept; past it a cache starts over.
const PRINCIPAL_CACHE: usize = 16_384;
const CONTEXT_CACHE: usize = 4_096;

/// The schema's entity type names, parsed once.
#[derive(Debug)]
struct Types {
    action: EntityTypeName,
    group: EntityTypeName,
    human: EntityTypeName,
    workload: EntityTypeName,
    nhi: EntityTypeName,
    incident: EntityTypeName,
    document: EntityTypeName,
    trust_domain: EntityTypeName,
}

impl Types {
    fn uid(type_: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(type_.clone(), EntityId::new(id))
    }
}

impl Engine {
    pub fn new() -> Result<Self, EngineError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| EngineError::Schema(e.to_string()))?;
        let entities = schema
            .action_entities()
            .map_err(|e| EngineError::Schema(e.to_string()))?;
        let mut action_entities = HashMap::new();
        let mut action_keys = HashMap::new();
        for name in actions() {
            let uid = action_uid(name)?;
            let groups: Vec<EntityUid> = entities
                .ancestors(&uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
            let needed: Vec<Entity> = std::iter::once(&uid)
                .chain(groups.iter())
                .filter_map(|u| entities.get(u).cloned())
                .collect();
            action_entities.insert(name.to_owned(), needed);
            let keys = std::iter::once(&uid)
                .chain(groups.iter())
                .map(|u| u.id().unescaped().to_owned())
                .collect();
            action_keys.insert(name.to_owned(), keys);
        }
        Ok(Self {
            schema,
            action_entities,
            action_keys,
            principals: RwLock::default(),
            contexts: RwLock::default(),
            types: Types {
                action: type_name("Steward::Action")?,
                group: type_name("Steward::Group")?,
                human: type_name("Steward::Human")?,
                workload: type_name("Steward::Workload")?,
                nhi: type_name("Steward::Nhi")?,
                incident: type_name("Steward::Incident")?,
                document: type_name("Steward::Document")?,
                trust_domain: type_name("Steward::TrustDomain")?,
            },
            authorizer: Authorizer::new(),
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// `facts` with their Cedar entity, built once: whoever keeps the
    /// facts (authority's facts cache) keeps the entity with them.
    pub fn resource(&self, facts: NhiFacts) -> Result<Arc<Resource>, EngineError> {
        let entity = Entity::new_with_tags(
            Types::uid(&self.types.nhi, &facts.id),
            [
                ("kind".to_owned(), string(&facts.kind)),
                ("environment".to_owned(), string(&facts.environment)),
                ("state".to_owned(), string(&facts.state)),
                (
                    "risk_score".to_owned(),
                    RestrictedExpression::new_long(facts.risk_score),
                ),
                ("business_owner".to_owned(), string(&facts.business_owner)),
                ("technical_owner".to_owned(), string(&facts.technical_owner)),
                (
                    "business_service".to_owned(),
                    string(&facts.business_service),
                ),
                ("source_system".to_owned(), string(&facts.source_system)),
                ("spiffe_id".to_owned(), string(&facts.spiffe_id)),
                (
                    "owners".to_owned(),
                    RestrictedExpression::new_set(
                        [&facts.technical_owner, &facts.business_owner]
                            .into_iter()
                            .filter(|o| !o.is_empty())
                            .map(|o| {
                                RestrictedExpression::new_entity_uid(Types::uid(
                                    &self.types.group,
                                    o,
                                ))
                            }),
                    ),
                ),
            ],
            [],
            facts.labels.iter().map(|(k, v)| (k.clone(), string(v))),
        )
        .map_err(|e| request_error("resource", e.to_string()))?;
        Self::resource_of(ResourceType::Nhi, facts, entity)
    }

    /// An incident by its reference, as `close_incident`'s resource.
    pub fn incident(&self, reference: &str) -> Result<Arc<Resource>, EngineError> {
        self.named(ResourceType::Incident, &self.types.incident, reference)
    }

    /// One of authority's documents (`policies`, `response_rules`), as
    /// `manage_policy`'s resource.
    pub fn document(&self, name: &str) -> Result<Arc<Resource>, EngineError> {
        self.named(ResourceType::Document, &self.types.document, name)
    }

    /// A trust domain (its CA), as `rotate_ca`'s resource.
    pub fn trust_domain(&self, name: &str) -> Result<Arc<Resource>, EngineError> {
        self.named(ResourceType::TrustDomain, &self.types.trust_domain, name)
    }

    /// A principal as a resource: whom `act_for` acts for.
    pub fn principal_resource(&self, principal: &Principal) -> Result<Arc<Resource>, EngineError> {
        let entity = self.principal_entity(principal)?;
        let kind = match principal {
            Principal::Workload { .. } => ResourceType::Workload,
            Principal::Human { .. } => ResourceType::Human,
        };
        Self::resource_of(
            kind,
            NhiFacts {
                id: principal.id().to_owned(),
                ..NhiFacts::default()
            },
            entity,
        )
    }

    fn named(
        &self,
        kind: ResourceType,
        type_: &EntityTypeName,
        id: &str,
    ) -> Result<Arc<Resource>, EngineError> {
        let entity = Entity::new(
            Types::uid(type_, id),
            [("id".to_owned(), string(id))].into_iter().collect(),
            Default::default(),
        )
        .map_err(|e| request_error("resource", e.to_string()))?;
        Self::resource_of(
            kind,
            NhiFacts {
                id: id.to_owned(),
                ..NhiFacts::default()
            },
            entity,
        )
    }

    fn resource_of(
        kind: ResourceType,
        facts: NhiFacts,
        entity: Entity,
    ) -> Result<Arc<Resource>, EngineError> {
        let uid = entity.uid();
        let store = Entities::from_entities([entity], None)
            .map_err(|e| request_error("resource", e.to_string()))?;
        Ok(Arc::new(Resource {
            kind,
            facts,
            uid,
            store,
        }))
    }

    /// The principal's entity, from the cache when it was built before.
    fn principal_entity(&self, principal: &Principal) -> Result<Entity, EngineError> {
        if let Some(e) = self
            .principals
            .read()
            .ok()
            .and_then(|p| p.get(principal).cloned())
        {
            return Ok(e);
        }
        let parents = principal
            .groups()
            .iter()
            .map(|g| Types::uid(&self.types.group, g))
            .collect();
        let attrs = match principal {
            Principal::Workload {
                spiffe_id,
                trust_domain,
                ..
            } => vec![
                ("id".to_owned(), string(spiffe_id)),
                ("trust_domain".to_owned(), string(trust_domain)),
                ("role".to_owned(), string(workload_role(spiffe_id))),
            ],
            Principal::Human {
                subject, issuer, ..
            } => vec![
                ("id".to_owned(), string(subject)),
                ("issuer".to_owned(), string(issuer)),
            ],
        };
        let entity = Entity::new(principal.uid(self), attrs.into_iter().collect(), parents)
            .map_err(|e| request_error("principal", e.to_string()))?;
        if let Ok(mut cache) = self.principals.write() {
            if cache.len() >= PRINCIPAL_CACHE {
                cache.clear();
            }
            cache.insert(principal.clone(), entity.clone());
        }
        Ok(entity)
    }
}

/// The first segment of a SPIFFE ID's path: `operator` for
/// `spiffe://td/operator/admin`; empty when it has none.
pub fn workload_role(spiffe_id: &str) -> &str {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, path)| path.split('/').next().unwrap_or(""))
}

/// What a decision is about, with the Cedar entity made of it: an NHI's
/// facts ([`Engine::resource`]), or an incident, a document or a
/// principal (their facts hold only the id). The entity is in a store of
/// its own that a decision extends (cloning a store shares its entities).
#[derive(Debug, Clone)]
pub struct Resource {
    kind: ResourceType,
    facts: NhiFacts,
    uid: EntityUid,
    store: Entities,
}

impl Resource {
    pub fn facts(&self) -> &NhiFacts {
        &self.facts
    }

    pub fn kind(&self) -> ResourceType {
        self.kind
    }

    /// Whether this is an NHI (its id is an inventory identity's).
    pub fn is_nhi(&self) -> bool {
        self.kind == ResourceType::Nhi
    }
}

impl Deref for Resource {
    type Target = NhiFacts;

    fn deref(&self) -> &NhiFacts {
        &self.facts
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.facts == other.facts
    }
}

impl Eq for Resource {}

fn type_name(name: &str) -> Result<EntityTypeName, EngineError> {
    EntityTypeName::from_str(name).map_err(|e| EngineError::Schema(e.to_string()))
}

fn uid(type_: &str, id: &str) -> Result<EntityUid, EngineError> {
    Ok(EntityUid::from_type_name_and_id(
        type_name(type_)?,
        EntityId::new(id),
    ))
}

pub fn action_uid(name: &str) -> Result<EntityUid, EngineError> {
    uid("Steward::Action", name)
}

/// Who asks: a workload or a human, with its groups (transitively).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Workload {
        spiffe_id: String,
        trust_domain: String,
        groups: Vec<String>,
    },
    Human {
        subject: String,
        issuer: String,
        groups: Vec<String>,
    },
}

impl Principal {
    pub fn id(&self) -> &str {
        match self {
            Self::Workload { spiffe_id, .. } => spiffe_id,
            Self::Human { subject, .. } => subject,
        }
    }

    fn groups(&self) -> &[String] {
        match self {
            Self::Workload { groups, .. } | Self::Human { groups, .. } => groups,
        }
    }

    fn uid(&self, engine: &Engine) -> EntityUid {
        match self {
            Self::Workload { spiffe_id, .. } => Types::uid(&engine.types.workload, spiffe_id),
            Self::Human { subject, .. } => Types::uid(&engine.types.human, subject),
        }
    }

    /// Its slice key: its type and id.
    fn key(&self) -> (PrincipalType, &str) {
        match self {
            Self::Workload { spiffe_id, .. } => (PrincipalType::Workload, spiffe_id),
            Self::Human { subject, .. } => (PrincipalType::Human, subject),
        }
    }
}

/// What inventory knows about the NHI, at decision time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NhiFacts {
    pub id: String,
    pub kind: String,
    pub environment: String,
    pub state: String,
    pub risk_score: i64,
    pub business_owner: String,
    pub technical_owner: String,
    pub business_service: String,
    pub source_system: String,
    pub spiffe_id: String,
    pub labels: BTreeMap<String, String>,
}

/// Everything about the request that is not an entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestContext {
    pub incident_ref: String,
    /// Unix seconds.
    pub now: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub approvers: BTreeSet<String>,
    pub break_glass: bool,
    pub requester: String,
    pub acting_workload: String,
    pub acting_human: String,
    pub requested_ttl: i64,
}

/// One question for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRequest {
    pub principal: Principal,
    pub action: String,
    pub resource: Arc<Resource>,
    pub context: RequestContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
    ApprovalRequired,
}

/// What the deciding policies demand of the executor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obligations {
    /// The smallest `@max_ttl` among the deciding permits.
    pub max_ttl: Option<u64>,
    /// The union of their `@obligations`.
    pub duties: BTreeSet<String>,
}

/// Approvals a permit still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequirement {
    pub approvals: u32,
    /// `technical_owner`, `business_owner` or `group:<name>`; empty for anyone
    /// the policy allows to approve.
    pub approver: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The policies that decided: the satisfied forbids for a deny, the
    /// satisfied permits otherwise.
    pub policy_ids: Vec<String>,
    pub reason: String,
    pub obligations: Obligations,
    pub approval: Option<ApprovalRequirement>,
    /// Policies that failed to evaluate (they count as not satisfied).
    pub errors: Vec<String>,
}

/// Steward's reading of one policy's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    /// `permit` or `forbid`.
    pub effect: String,
    /// Steward's annotations as written (`id`, `reason`, `approvals`, …).
    pub annotations: BTreeMap<String, String>,
    pub reason: String,
    pub approvals: Option<u32>,
    pub approver: String,
    pub max_ttl: Option<u64>,
    pub duties: Vec<String>,
}

/// A validated policy set, indexed for slicing.
#[derive(Debug, Clone)]
pub struct CompiledSet {
    all: PolicySet,
    policies: Vec<Policy>,
    meta: HashMap<String, PolicyMeta>,
    index: SliceIndex,
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |n| before.len() - n - 1)
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

fn located(
    text: &str,
    diagnostic: &dyn Diagnostic,
    policy_id: &str,
    message: String,
) -> PolicyError {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
    let help = diagnostic
        .help()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    PolicyError {
        line,
        column,
        policy_id: policy_id.to_owned(),
        message: format!("{message}{help}"),
    }
}

fn meta_of(policy: &Policy) -> Result<PolicyMeta, String> {
    let approvals = match policy.annotation("approvals") {
        None => None,
        Some(n) => Some(
            n.parse::<u32>()
                .ok()
                .filter(|n| (1..=16).contains(n))
                .ok_or_else(|| format!("@approvals({n:?}) must be a number from 1 to 16"))?,
        ),
    };
    let approver = policy.annotation("approver").unwrap_or("").to_owned();
    if !(approver.is_empty()
        || approver == "technical_owner"
        || approver == "business_owner"
        || approver
            .strip_prefix("group:")
            .is_some_and(|g| !g.is_empty()))
    {
        return Err(format!(
            "@approver({approver:?}) must be technical_owner, business_owner or group:<name>"
        ));
    }
    if !approver.is_empty() && approvals.is_none() {
        return Err("@approver needs @approvals".into());
    }
    let max_ttl = match policy.annotation("max_ttl") {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("@max_ttl({s:?}) must be a positive number of seconds"))?,
        ),
    };
    let duties = policy
        .annotation("obligations")
        .map(|s| {
            s.split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let annotations = [
        "id",
        "reason",
        "approvals",
        "approver",
        "max_ttl",
        "obligations",
    ]
    .iter()
    .filter_map(|k| {
        policy
            .annotation(k)
            .map(|v| ((*k).to_owned(), v.to_owned()))
    })
    .collect();
    Ok(PolicyMeta {
        effect: match policy.effect() {
            cedar_policy::Effect::Permit => "permit".to_owned(),
            cedar_policy::Effect::Forbid => "forbid".to_owned(),
        },
        annotations,
        reason: policy.annotation("reason").unwrap_or("").to_owned(),
        approvals,
        approver,
        max_ttl,
        duties,
    })
}

impl CompiledSet {
    /// Parses `text`, names each policy by its `@id` (else `policy<N>` in
    /// order), checks Steward's annotations and validates strictly against
    /// the schema. Every problem found is returned, each located.
    pub fn compile(engine: &Engine, text: &str) -> Result<Self, Vec<PolicyError>> {
        let parsed = PolicySet::from_str(text).map_err(|e| {
            let mut out: Vec<PolicyError> = e
                .iter()
                .map(|one| located(text, one, "", one.to_string()))
                .collect();
            if out.is_empty() {
                out.push(located(text, &e, "", e.to_string()));
            }
            out
        })?;
        let mut errors = Vec::new();
        let mut policies: Vec<Policy> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut ordered: Vec<&Policy> = parsed.policies().collect();
        // `policyN` ids follow the order in the text.
        ordered.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut meta = HashMap::new();
        for policy in ordered {
            let id = policy
                .annotation("id")
                .map_or_else(|| policy.id().to_string(), str::to_owned);
            let at = |message: String| {
                // Cedar does not expose a policy's span; its `@id` is the
                // best anchor in the text.
                let (line, column) = text
                    .find(&format!("@id(\"{id}\")"))
                    .map_or((0, 0), |offset| line_col(text, offset));
                PolicyError {
                    line,
                    column,
                    policy_id: id.clone(),
                    message,
                }
            };
            if !seen.insert(id.clone()) {
                errors.push(at(format!("@id({id:?}) is used by more than one policy")));
                continue;
            }
            match meta_of(policy) {
                Ok(m) => {
                    meta.insert(id.clone(), m);
                }
                Err(message) => errors.push(at(message)),
            }
            policies.push(policy.new_id(PolicyId::new(&id)));
        }
        let all = match PolicySet::from_policies(policies.iter().cloned()) {
            Ok(set) => set,
            Err(e) => {
                errors.push(PolicyError {
                    line: 0,
                    column: 0,
                    policy_id: String::new(),
                    message: e.to_string(),
                });
                return Err(errors);
            }
        };
        let validation =
            Validator::new(engine.schema.clone()).validate(&all, ValidationMode::Strict);
        for e in validation.validation_errors() {
            errors.push(located(text, e, e.policy_id().as_ref(), e.to_string()));
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(errors);
        }
        let index = SliceIndex::build(&policies);
        Ok(Self {
            all,
            policies,
            meta,
            index,
        })
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The ids of the policies, in the text's order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.iter().map(|p| p.id().to_string()).collect()
    }

    pub fn meta(&self, id: &str) -> Option<&PolicyMeta> {
        self.meta.get(id)
    }

    /// How many policies the request's slice holds.
    pub fn slice_len(
        &self,
        engine: &Engine,
        request: &DecisionRequest,
    ) -> Result<usize, EngineError> {
        Ok(self.slice(engine, request)?.len())
    }

    fn slice(&self, engine: &Engine, request: &DecisionRequest) -> Result<Vec<u32>, EngineError> {
        let actions = engine.action_keys.get(&request.action).ok_or_else(|| {
            request_error(
                "action",
                format!("{:?} is not a Steward action", request.action),
            )
        })?;
        Ok(self.index.candidates(
            actions,
            request.principal.key(),
            request.principal.groups(),
            (request.resource.kind, &request.resource.id),
        ))
    }

    /// Decides `request` with the policies of its slice.
    pub fn decide(
        &self,
        engine: &Engine,
        request: &DecisionRequest,
    ) -> Result<Decision, EngineError> {
        let slice = self.slice(engine, request)?;
        let set = self
            .index
            .set(slice, &self.policies)
            .map_err(|e| request_error("policy", e))?;
        self.evaluate(engine, request, &set)
    }

    /// Decides `request` with the whole set: the reference the slice must
    /// agree with, and what `Explain` uses to show every policy considered.
    pub fn decide_unsliced(
        &self,
        engine: &Engine,
        request: &DecisionRequest,
    ) -> Result<Decision, EngineError> {
        self.evaluate(engine, request, &self.all)
    }

    fn evaluate(
        &self,
        engine: &Engine,
        request: &DecisionRequest,
        set: &PolicySet,
    ) -> Result<Decision, EngineError> {
        let (cedar_request, entities) = cedar_inputs(engine, request)?;
        let response = engine
            .authorizer
            .is_authorized(&cedar_request, set, &entities);
        let mut policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        policy_ids.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let reasons = |ids: &[String]| {
            ids.iter()
                .filter_map(|id| self.meta.get(id))
                .map(|m| m.reason.clone())
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if response.decision() == cedar_policy::Decision::Deny {
            let reason = if policy_ids.is_empty() {
                "no policy permits this request".to_owned()
            } else {
                let r = reasons(&policy_ids);
                if r.is_empty() {
                    format!("forbidden by {}", policy_ids.join(", "))
                } else {
                    r
                }
            };
            return Ok(Decision {
                effect: Effect::Deny,
                policy_ids,
                reason,
                obligations: Obligations::default(),
                approval: None,
                errors,
            });
        }
        let metas: Vec<&PolicyMeta> = policy_ids
            .iter()
            .filter_map(|id| self.meta.get(id))
            .collect();
        let mut obligations = Obligations::default();
        for m in &metas {
            if let Some(ttl) = m.max_ttl {
                obligations.max_ttl = Some(obligations.max_ttl.map_or(ttl, |t| t.min(ttl)));
            }
            obligations.duties.extend(m.duties.iter().cloned());
        }
        // A permit with no approval condition allows outright; otherwise the
        // least demanding permit says how many approvals are needed.
        let held = u32::try_from(request.context.approvers.len()).unwrap_or(u32::MAX);
        let needed = metas
            .iter()
            .map(|m| (m.approvals.unwrap_or(0), m.approver.clone()))
            .min_by_key(|(n, _)| *n);
        let (effect, approval) = match needed {
            Some((n, approver)) if n > held => (
                Effect::ApprovalRequired,
                Some(ApprovalRequirement {
                    approvals: n,
                    approver,
                }),
            ),
            _ => (Effect::Allow, None),
        };
        let reason = match effect {
            Effect::ApprovalRequired => {
                let r = reasons(&policy_ids);
                let need = approval.as_ref().map_or(0, |a| a.approvals);
                format!(
                    "{} approval{} required, {held} held{}",
                    need,
                    if need == 1 { "" } else { "s" },
                    if r.is_empty() {
                        String::new()
                    } else {
                        format!(": {r}")
                    }
                )
            }
            _ => {
                let r = reasons(&policy_ids);
                if r.is_empty() {
                    format!("permitted by {}", policy_ids.join(", "))
                } else {
                    r
                }
            }
        };
        Ok(Decision {
            effect,
            policy_ids,
            reason,
            obligations,
            approval,
            errors,
        })
    }
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The Cedar request and entities for one decision: the resource's store
/// plus the action's and the principal's entities, all built before.
fn cedar_inputs(
    engine: &Engine,
    request: &DecisionRequest,
) -> Result<(Request, Entities), EngineError> {
    let actions = engine.action_entities.get(&request.action).ok_or_else(|| {
        request_error(
            "action",
            format!("{:?} is not a Steward action", request.action),
        )
    })?;
    // Group entities themselves need not exist: `principal in Group` is
    // answered from the principal's own ancestors.
    let principal = engine.principal_entity(&request.principal)?;
    let principal_uid = principal.uid();
    let entities = request
        .resource
        .store
        .clone()
        .add_entities(actions.iter().cloned().chain([principal]), None)
        .map_err(|e| request_error("entities", e.to_string()))?;
    let context = engine.context(&request.context)?;
    let action = Types::uid(&engine.types.action, &request.action);
    let cedar_request = Request::new(
        principal_uid,
        action,
        request.resource.uid.clone(),
        context,
        None,
    )
    .map_err(|e| request_error("request", e.to_string()))?;
    Ok((cedar_request, entities))
}

impl Engine {
    /// The Cedar context of `c`, from the cache when it was built before.
    fn context(&self, c: &RequestContext) -> Result<Context, EngineError> {
        if let Some(context) = self.contexts.read().ok().and_then(|m| m.get(c).cloned()) {
            return Ok(context);
        }
        let context = Context::from_pairs([
            ("incident_ref".to_owned(), string(&c.incident_ref)),
            (
                "has_incident".to_owned(),
                RestrictedExpression::new_bool(!c.incident_ref.is_empty()),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(c.now)),
            (
                "window_start".to_owned(),
                RestrictedExpression::new_long(c.window_start),
            ),
            (
                "window_end".to_owned(),
                RestrictedExpression::new_long(c.window_end),
            ),
            (
                "approvals".to_owned(),
                RestrictedExpression::new_long(
                    i64::try_from(c.approvers.len()).unwrap_or(i64::MAX),
                ),
            ),
            (
                "approvers".to_owned(),
                RestrictedExpression::new_set(c.approvers.iter().map(|a| string(a))),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(c.break_glass),
            ),
            ("requester".to_owned(), string(&c.requester)),
            ("acting_workload".to_owned(), string(&c.acting_workload)),
            ("acting_human".to_owned(), string(&c.acting_human)),
            (
                "requested_ttl".to_owned(),
                RestrictedExpression::new_long(c.requested_ttl),
            ),
        ])
        .map_err(|e| request_error("context", e.to_string()))?;
        if let Ok(mut cache) = self.contexts.write() {
            if cache.len() >= CONTEXT_CACHE {
                cache.clear();
            }
            cache.insert(c.clone(), context.clone());
        }
        Ok(context)
    }
}

#[cfg(test)]
mod tests;
