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

mod compile;
mod evaluate;
mod request;
pub mod slice;

pub use compile::{CompiledSet, PolicyMeta};
use evaluate::string;
pub use request::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use steward_vocab::Action;

use slice::PrincipalType;
pub use slice::SliceIndex;

/// The schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../policy/steward.cedarschema");
/// The policy set a fresh authority starts with.
pub const DEFAULT_POLICIES: &str = include_str!("../policy/default.cedar");

/// The actions whose resource is an NHI: the ones `Authorize` decides.
pub const NHI_ACTIONS: &[Action] = Action::ON_IDENTITIES;

/// Every action of the schema, in the order the API lists them.
pub fn actions() -> impl Iterator<Item = &'static str> {
    Action::ALL.iter().map(|a| a.as_str())
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

impl CompiledSet {
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
}

#[cfg(test)]
mod tests;
