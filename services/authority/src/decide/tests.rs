//! The decision path on a real SQLite database, with inventory replaced by
//! a scripted [`Inventory`]: whom a caller may ask about, what is read,
//! what is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use prost::Message as _;
use steward_db::{Database, DatabaseConfig};
use steward_errors::ServiceError as _;
use steward_proto::steward::audit::v1 as audit_pb;
use steward_server::ServiceConfig;
use tonic::Code;

use super::*;
use crate::closures::Closures;
use crate::config::AuthorityConfig;
use crate::engine::{DEFAULT_POLICIES, Engine, NhiFacts};
use crate::humans::Humans;
use crate::state::{Active, Shared};
use crate::store::Store;

const IDENTITY: &str = "0192b1c4-5e8a-7cc0-9b1e-2f3a4b5c6d7e";
const SOAR: &str = "spiffe://test.local/automation/soar";
const RUNNER: &str = "spiffe://test.local/automation/runner";
const BROKER: &str = "spiffe://test.local/service/credential-broker";

const SITE: &str = r#"
@id("soar-issues")
permit (principal == Steward::Workload::"spiffe://test.local/automation/soar", action == Steward::Action::"issue", resource);

@id("soar-rotates-with-approval")
@approvals("1")
@approver("technical_owner")
permit (principal == Steward::Workload::"spiffe://test.local/automation/soar", action == Steward::Action::"rotate", resource);

@id("runner-acts-for-soar")
permit (
  principal == Steward::Workload::"spiffe://test.local/automation/runner",
  action == Steward::Action::"act_for",
  resource == Steward::Workload::"spiffe://test.local/automation/soar"
);
"#;

/// Inventory as a script: one identity, or none, or down.
struct Scripted {
    answer: fn(&Uuid) -> Result<NhiFacts, Error>,
    reads: AtomicUsize,
}

#[tonic::async_trait]
impl Inventory for Scripted {
    async fn facts(&self, id: &Uuid) -> Result<NhiFacts, Error> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        (self.answer)(id)
    }
}

fn active_identity(id: &Uuid) -> Result<NhiFacts, Error> {
    Ok(NhiFacts {
        id: id.hyphenated().to_string(),
        kind: "service_account".into(),
        state: "active".into(),
        technical_owner: "alice".into(),
        spiffe_id: "spiffe://test.local/workload/api".into(),
        ..NhiFacts::default()
    })
}

struct Core {
    decider: Decider,
    inventory: Arc<Scripted>,
    shared: Arc<Shared>,
    database: Database,
    _dir: tempfile::TempDir,
}

async fn core(answer: fn(&Uuid) -> Result<NhiFacts, Error>) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::connect(&DatabaseConfig::sqlite(&dir.path().join("authority.db")))
        .await
        .unwrap();
    database.migrate(&crate::SPEC.migrations).await.unwrap();
    let store = Store::new(database.clone());
    let engine = Engine::new().unwrap();
    let set = CompiledSet::compile(&engine, &format!("{DEFAULT_POLICIES}\n{SITE}")).unwrap();
    let mut config = AuthorityConfig::new(ServiceConfig::defaults("authority", 0));
    config.durable_decisions = true;
    let shared = Arc::new(Shared {
        engine,
        store: store.clone(),
        active: RwLock::new(Arc::new(Active {
            version: 2,
            set: Arc::new(set),
        })),
        compiled: RwLock::new(HashMap::new()),
        humans: Humans::new(None).unwrap(),
        config,
        own: SpiffeId::parse("spiffe://test.local/service/authority").unwrap(),
        grant_holders: RwLock::new(Default::default()),
        facts: Arc::default(),
        closures: Arc::new(Closures::new(store, None)),
        currency: crate::currency::Currency::alone(),
    });
    let (evidence, writer) = Batcher::start(database.clone(), None, std::future::pending());
    tokio::spawn(writer);
    let inventory = Arc::new(Scripted {
        answer,
        reads: AtomicUsize::new(0),
    });
    Core {
        decider: Decider::new(Arc::clone(&shared), inventory.clone(), evidence),
        inventory,
        shared,
        database,
        _dir: dir,
    }
}

impl Core {
    /// The evidence records written, oldest first.
    async fn records(&self) -> Vec<audit_pb::EvidenceRecord> {
        let Database::Sqlite(db) = &self.database else {
            unreachable!()
        };
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT record FROM evidence_outbox ORDER BY seq")
                .fetch_all(db.pool())
                .await
                .unwrap();
        rows.iter()
            .map(|(blob,)| audit_pb::EvidenceRecord::decode(blob.as_slice()).unwrap())
            .collect()
    }

    fn reads(&self) -> usize {
        self.inventory.reads.load(Ordering::SeqCst)
    }
}

fn actor(workload: &str) -> Actor {
    Actor {
        workload: workload.into(),
        ..Actor::default()
    }
}

fn ask(principal: Named, action: &str) -> Ask {
    Ask {
        principal,
        action: Action::parse(action).unwrap(),
        resource: AskedResource::Nhi(IdentityId::parse("resource_id", IDENTITY).unwrap()),
        context: AskContext::default(),
        with_outcome: false,
    }
}

fn soar() -> Named {
    Named::Workload(SpiffeId::parse(SOAR).unwrap())
}

#[tokio::test]
async fn a_caller_asking_for_itself_is_decided_on_the_identitys_facts_and_recorded() {
    let core = core(active_identity).await;
    let decided = core
        .decider
        .authorize(ask(Named::Caller, "issue"), &actor(SOAR))
        .await
        .unwrap();
    assert_eq!(decided.decision.effect, Effect::Allow);
    assert_eq!(decided.decision.policy_ids, vec!["soar-issues".to_owned()]);
    assert_eq!(decided.request.principal.id(), SOAR);
    assert_eq!(decided.request.context.requester, SOAR);
    assert_eq!(core.reads(), 1);
    let records = core.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, "decision.authorize");
    assert_eq!(records[0].record_id, decided.id.hyphenated().to_string());
    assert_eq!(records[0].target.as_ref().unwrap().nhi_id, IDENTITY);
}

#[tokio::test]
async fn naming_another_principal_without_a_delegation_is_refused_before_anything_is_read() {
    let core = core(active_identity).await;
    let other = actor("spiffe://test.local/automation/other");
    let refused = core
        .decider
        .authorize(ask(soar(), "issue"), &other)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.field(), Some("principal"));
    assert!(refused.to_string().contains("may not act for"), "{refused}");
    assert_eq!(core.reads(), 0, "inventory was asked for a refused request");
    assert!(core.records().await.is_empty());
    // Naming another requester is refused the same way.
    let mut named = ask(Named::Caller, "issue");
    named.context.requester = SOAR.into();
    let refused = core.decider.authorize(named, &other).await.unwrap_err();
    assert_eq!(refused.field(), Some("context.requester"));
    assert!(core.records().await.is_empty());
}

#[tokio::test]
async fn a_delegate_decides_for_its_principal_and_the_record_says_so() {
    let core = core(active_identity).await;
    let decided = core
        .decider
        .authorize(ask(soar(), "issue"), &actor(RUNNER))
        .await
        .unwrap();
    assert_eq!(decided.decision.effect, Effect::Allow);
    assert_eq!(decided.request.principal.id(), SOAR);
    assert_eq!(decided.request.context.requester, RUNNER);
    let records = core.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].attributes["delegated"], "act_for");
    assert_eq!(
        records[0].attributes["delegation_policy_ids"],
        "runner-acts-for-soar"
    );
    assert_eq!(
        records[0].actor.as_ref().unwrap().workload_spiffe_id,
        RUNNER
    );
}

#[tokio::test]
async fn without_inventorys_facts_nothing_is_decided() {
    let missing = core(|id| Err(Error::NoSuchIdentity(*id))).await;
    let e = missing
        .decider
        .authorize(ask(Named::Caller, "issue"), &actor(SOAR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.to_string().starts_with("resource_id: identity"), "{e}");
    assert!(missing.records().await.is_empty());

    let down = core(|_| Err(Error::unavailable("inventory is unreachable", "refused"))).await;
    let e = down
        .decider
        .authorize(ask(Named::Caller, "issue"), &actor(SOAR))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(!e.to_string().contains("refused"), "detail shown: {e}");
    assert!(down.records().await.is_empty());
}

#[tokio::test]
async fn an_action_needing_approval_opens_one_request_that_states_why() {
    let core = core(active_identity).await;
    let unstated = core
        .decider
        .authorize(ask(Named::Caller, "rotate"), &actor(SOAR))
        .await
        .unwrap_err();
    assert_eq!(unstated.field(), Some("context.reason"));
    assert!(core.records().await.is_empty());

    let mut asked = ask(Named::Caller, "rotate");
    asked.context.reason = "  key leaked in a ticket  ".into();
    let decided = core.decider.authorize(asked, &actor(SOAR)).await.unwrap();
    assert_eq!(decided.decision.effect, Effect::ApprovalRequired);
    let id = decided.approval_request_id.expect("an approval request");
    let opened = core.shared.store.approval(&id).await.unwrap();
    assert_eq!(opened.reason, "key leaked in a ticket");
    assert_eq!(opened.suggested_reviewers, vec!["alice".to_owned()]);
    assert_eq!(opened.decision_id, decided.id.hyphenated().to_string());
    let records = core.records().await;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["approval.requested", "decision.authorize"]);
    assert_eq!(records[1].decision.as_ref().unwrap().approval_ids, vec![id]);
}

#[tokio::test]
async fn only_the_broker_may_leave_an_allow_to_its_outcomes_record() {
    let core = core(active_identity).await;
    let mut asked = ask(soar(), "issue");
    asked.with_outcome = true;
    let by_soar = core
        .decider
        .authorize(asked.clone(), &actor(SOAR))
        .await
        .unwrap();
    assert!(!by_soar.recorded_with_outcome);
    assert_eq!(core.records().await.len(), 1);
    let by_broker = core.decider.authorize(asked, &actor(BROKER)).await.unwrap();
    assert_eq!(by_broker.decision.effect, Effect::Allow);
    assert!(by_broker.recorded_with_outcome);
    assert_eq!(core.records().await.len(), 1, "the broker records it");
}

#[tokio::test]
async fn a_what_if_may_ask_about_anyone_and_records_nothing() {
    let core = core(active_identity).await;
    let other = actor("spiffe://test.local/automation/other");
    let considered = core
        .decider
        .what_if(ask(soar(), "issue"), &other, 0)
        .await
        .unwrap();
    assert_eq!(considered.decision.effect, Effect::Allow);
    assert_eq!(considered.version, 2);
    assert!(core.records().await.is_empty());
    // A version the store does not hold is the store's NOT_FOUND.
    let e = core
        .decider
        .what_if(ask(soar(), "issue"), &other, 99)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn a_window_that_ends_before_it_starts_is_refused_by_name() {
    let core = core(active_identity).await;
    let mut asked = ask(Named::Caller, "issue");
    asked.context.window_start = Some(2_000);
    asked.context.window_end = Some(1_000);
    let e = core
        .decider
        .authorize(asked, &actor(SOAR))
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("context.window_end"));
    assert_eq!(core.reads(), 0);
}
