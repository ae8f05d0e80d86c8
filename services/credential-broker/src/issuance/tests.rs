//! The core on a real SQLite database, with authority replaced by a
//! scripted [`Decide`]: what it asks, and what it does with each answer.

use std::sync::{Arc, Mutex};

use prost::Message as _;
use steward_db::{Database, DatabaseConfig};
use steward_errors::ServiceError as _;
use steward_proto::steward::audit::v1 as audit_pb;
use tonic::Code;

use super::*;
use crate::keys::LocalKek;
use crate::store::rotations::Rotation;

const TD: &str = "test.local";
const IDENTITY: &str = "0192b1c4-5e8a-7cc0-9b1e-2f3a4b5c6d7e";
const OTHER: &str = "0192b1c4-5e8a-7cc0-9b1e-2f3a4b5c6d7f";
const BOT: &str = "spiffe://test.local/automation/soar";

/// How the scripted authority answers one ask.
type Answer = Box<dyn Fn(&Ask) -> Result<Decision, Error> + Send + Sync>;

/// Authority as a script: every ask is kept, every answer is `answer`'s.
struct Scripted {
    asks: Mutex<Vec<Ask>>,
    answer: Answer,
}

#[tonic::async_trait]
impl Decide for Scripted {
    async fn decide(&self, ask: Ask) -> Result<Decision, Error> {
        let answer = (self.answer)(&ask);
        self.asks.lock().unwrap().push(ask);
        answer
    }
}

#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

#[tonic::async_trait]
impl Signals for Heard {
    async fn rotation_failed(&self, rotation: &Rotation, _detail: &str) {
        self.0.lock().unwrap().push(rotation.rotation_id.clone());
    }
}

fn decision(effect: Effect, state: &str) -> Decision {
    Decision {
        decision_id: Uuid::now_v7().to_string(),
        effect,
        reason: "scripted".into(),
        policy_set_version: 3,
        policy_ids: vec!["p-1".into()],
        grant_id: String::new(),
        approval_request_id: String::new(),
        recorded_with_outcome: true,
        max_ttl_seconds: None,
        duties: Vec::new(),
        facts: Facts {
            kind: "service_account".into(),
            spiffe_id: "spiffe://test.local/workload/api".into(),
            state: steward_vocab::LifecycleState::parse(state),
        },
    }
}

use uuid::Uuid;

struct Core {
    issuer: Issuer,
    decide: Arc<Scripted>,
    database: Database,
    _dir: tempfile::TempDir,
}

async fn core(answer: impl Fn(&Ask) -> Result<Decision, Error> + Send + Sync + 'static) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::connect(&DatabaseConfig::sqlite(&dir.path().join("broker.db")))
        .await
        .unwrap();
    database.migrate(&crate::SPEC.migrations).await.unwrap();
    let store = Store::new(database.clone());
    let (writer, task) = Writer::start(store.clone(), None, std::future::pending())
        .await
        .unwrap();
    tokio::spawn(task);
    let kek: Arc<dyn KeyEncryption> = Arc::new(LocalKek::generate().unwrap().0);
    let own = "spiffe://test.local/service/credential-broker";
    let ca = CaConfig::default();
    let authorities =
        Authorities::load_or_generate(&store, kek.as_ref(), TD, &ca, own, time::Duration::DAY)
            .await
            .unwrap();
    let decide = Arc::new(Scripted {
        asks: Mutex::new(Vec::new()),
        answer: Box::new(answer),
    });
    let issuer = Issuer {
        own: SpiffeId::parse(own).unwrap(),
        store,
        writer,
        authorities: RwLock::new(Arc::new(authorities)),
        ca_config: ca,
        rotated: tokio::sync::watch::channel(0).0,
        decide: decide.clone(),
        signals: Arc::new(Heard::default()),
        backend: None,
        kek,
        ttl: TtlConfig::default(),
        random: SystemRandom::new(),
    };
    Core {
        issuer,
        decide,
        database,
        _dir: dir,
    }
}

impl Core {
    /// Every evidence record written, oldest first, as (action, outcome
    /// status).
    async fn evidence(&self) -> Vec<(String, i32)> {
        let Database::Sqlite(db) = &self.database else {
            unreachable!()
        };
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT record FROM evidence_outbox ORDER BY seq")
                .fetch_all(db.pool())
                .await
                .unwrap();
        rows.into_iter()
            .map(|(blob,)| {
                let r = audit_pb::EvidenceRecord::decode(blob.as_slice()).unwrap();
                (r.action, r.outcome.map_or(0, |o| o.status))
            })
            .filter(|(action, _)| action.starts_with("credential."))
            .collect()
    }

    async fn leases(&self) -> Vec<Lease> {
        self.issuer
            .store
            .list(&crate::store::LeaseFilter::default(), "", 100)
            .await
            .unwrap()
    }

    fn asks(&self) -> Vec<Ask> {
        self.decide.asks.lock().unwrap().clone()
    }

    async fn token(&self, ttl_seconds: u32) -> Result<(Lease, Made), Error> {
        self.token_for(IDENTITY, ttl_seconds).await
    }

    async fn token_for(&self, identity_id: &str, ttl_seconds: u32) -> Result<(Lease, Made), Error> {
        let scopes = ["tickets:read".to_owned()];
        self.issuer
            .issue(
                BOT,
                identity_id,
                Make::Token { scopes: &scopes },
                ttl_seconds,
                &task(),
                now_ns(),
            )
            .await
    }

    /// Rotates IDENTITY's API tokens, the old ones kept for `overlap_seconds`.
    async fn rotate_tokens(&self, overlap_seconds: u32) -> Result<(Rotation, Lease, Made), Error> {
        let scopes = ["tickets:read".to_owned()];
        self.issuer
            .rotate(&rotation::Order {
                caller: BOT,
                identity_id: IDENTITY,
                kind: crate::store::Kind::ApiToken,
                what: Make::Token { scopes: &scopes },
                ttl_seconds: 0,
                overlap_seconds,
                task: &task(),
                now: now_ns(),
            })
            .await
    }
}

fn task() -> Task {
    Task {
        incident_ref: "INC-7".into(),
        window_start_ns: now_ns(),
        window_end_ns: i64::MAX,
        reason: "contain the leak".into(),
        correlation_id: "c-1".into(),
    }
}

fn failed() -> i32 {
    audit_pb::OutcomeStatus::Failed as i32
}

fn succeeded() -> i32 {
    audit_pb::OutcomeStatus::Succeeded as i32
}

#[tokio::test]
async fn an_allowed_issuance_asks_for_the_caller_and_commits_lease_and_evidence() {
    let core = core(|_| Ok(decision(Effect::Allow, "active"))).await;
    let (lease, made) = core.token(0).await.unwrap();
    let token = made.secret();
    assert!(token.starts_with(TOKEN_PREFIX));
    assert_eq!(lease.holder, BOT);
    let asks = core.asks();
    assert_eq!(asks.len(), 1);
    assert_eq!(asks[0].principal, Principal::Workload(BOT.into()));
    assert_eq!(asks[0].action, Action::Issue);
    assert_eq!(asks[0].resource, Resource::Nhi(IDENTITY.into()));
    assert!(asks[0].with_outcome);
    assert_eq!(core.leases().await, vec![lease.clone()]);
    assert_eq!(
        core.evidence().await,
        vec![("credential.issue".into(), succeeded())]
    );
    // The token is kept only as its hash: introspection finds it.
    let found = core.issuer.introspect(&token).await.unwrap().unwrap();
    assert_eq!(found.lease_id, lease.lease_id);
    assert!(
        core.issuer
            .introspect("stw_unknown")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_denial_or_an_approval_requirement_issues_and_records_nothing() {
    let core = core(|_| Ok(decision(Effect::Deny, "active"))).await;
    let refused = core.token(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.to_string().contains("authority denied issue"),
        "{refused}"
    );
    assert!(core.leases().await.is_empty());
    assert!(core.evidence().await.is_empty());

    let core = self::core(|_| {
        let mut d = decision(Effect::ApprovalRequired, "active");
        d.approval_request_id = "ar-9".into();
        Ok(d)
    })
    .await;
    let refused = core.token(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(matches!(&refused, Error::ApprovalRequired { request_id, .. } if request_id == "ar-9"));
    assert!(core.leases().await.is_empty());
}

#[tokio::test]
async fn an_unanswered_ask_fails_closed_with_the_peers_status() {
    let core = core(|_| {
        Err(Error::Peer {
            code: Code::Unavailable,
            message: "authority cannot be reached".into(),
        })
    })
    .await;
    let refused = core.token(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(core.leases().await.is_empty());
    assert!(core.evidence().await.is_empty());
}

#[tokio::test]
async fn a_suspended_identity_gets_nothing_and_the_refusal_is_the_decisions_record() {
    let core = core(|_| Ok(decision(Effect::Allow, "suspended"))).await;
    let refused = core.token(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.field(), Some("identity_id"));
    assert!(core.leases().await.is_empty());
    assert_eq!(
        core.evidence().await,
        vec![("credential.issue".into(), failed())]
    );
}

#[tokio::test]
async fn an_identity_in_a_state_this_version_does_not_know_gets_nothing() {
    for state in ["", "frozen", "Active"] {
        let core = core(move |_| Ok(decision(Effect::Allow, state))).await;
        let refused = core.token(0).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{state:?}");
        assert!(
            refused
                .to_string()
                .contains("a state this version does not know"),
            "{refused}"
        );
        assert!(core.leases().await.is_empty());
    }
    // Watchlisted and restricted identities still act.
    for state in ["watchlisted", "restricted"] {
        let core = core(move |_| Ok(decision(Effect::Allow, state))).await;
        core.token(0).await.unwrap();
        assert_eq!(core.leases().await.len(), 1, "{state}");
    }
}

#[tokio::test]
async fn a_ttl_above_the_policys_cap_is_refused_and_recorded() {
    let core = core(|_| {
        let mut d = decision(Effect::Allow, "active");
        d.max_ttl_seconds = Some(60);
        Ok(d)
    })
    .await;
    let refused = core.token(61).await.unwrap_err();
    assert_eq!(refused.field(), Some("ttl_seconds"));
    assert!(core.leases().await.is_empty());
    assert_eq!(
        core.evidence().await,
        vec![("credential.issue".into(), failed())]
    );
    // The cap shortens the default.
    let (lease, _) = core.token(0).await.unwrap();
    assert_eq!(lease.ttl_seconds, 60);
}

#[tokio::test]
async fn an_svid_needs_the_identitys_spiffe_id_in_the_brokers_trust_domain() {
    let core = core(|_| {
        let mut d = decision(Effect::Allow, "active");
        d.facts.spiffe_id = "spiffe://elsewhere.example/workload/api".into();
        Ok(d)
    })
    .await;
    let audience = ["api".to_owned()];
    let refused = core
        .issuer
        .issue(
            BOT,
            IDENTITY,
            Make::Jwt {
                audience: &audience,
            },
            0,
            &task(),
            now_ns(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.to_string().contains("trust domain"), "{refused}");
    assert!(core.leases().await.is_empty());
}

#[tokio::test]
async fn revoking_asks_once_per_identity_unless_authority_decided_already() {
    let core = core(|_| Ok(decision(Effect::Allow, "active"))).await;
    let (a, _) = core.token(0).await.unwrap();
    let (b, _) = core.token(0).await.unwrap();
    let asked = core.asks().len();
    let ended = core
        .issuer
        .revoke(BOT, &[a.clone(), b.clone()], "leaked", "c-2", false)
        .await
        .unwrap();
    assert_eq!(ended.len(), 2);
    let revokes: Vec<Ask> = core.asks().split_off(asked);
    assert_eq!(revokes.len(), 1, "one identity, one decision");
    assert_eq!(revokes[0].action, Action::Revoke);
    // Authority closing an incident has decided: nothing more is asked.
    let (c, _) = core.token(0).await.unwrap();
    let asked = core.asks().len();
    core.issuer
        .revoke(BOT, &[c], "closed", "", true)
        .await
        .unwrap();
    assert_eq!(core.asks().len(), asked);
    // An ended lease is returned as it is, with nothing recorded.
    let records = core.evidence().await.len();
    let again = core
        .issuer
        .revoke_one(BOT, &a.lease_id, "again")
        .await
        .unwrap();
    assert_eq!(again.state, LeaseState::Revoked);
    assert_eq!(core.evidence().await.len(), records);
}

#[tokio::test]
async fn a_denied_revocation_ends_nothing() {
    let core = core(|ask| {
        Ok(decision(
            if ask.action == Action::Revoke {
                Effect::Deny
            } else {
                Effect::Allow
            },
            "active",
        ))
    })
    .await;
    let (lease, _) = core.token(0).await.unwrap();
    let refused = core
        .issuer
        .revoke_one(
            "spiffe://test.local/workload/other",
            &lease.lease_id,
            "mine now",
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let after = core.issuer.store.lease(&lease.lease_id).await.unwrap();
    assert_eq!(after.state, LeaseState::Active);
}

#[tokio::test]
async fn a_rotation_without_overlap_revokes_the_old_and_confirms_it_rejected() {
    let core = core(|_| Ok(decision(Effect::Allow, "active"))).await;
    let (old, made) = core.token(0).await.unwrap();
    let old_token = made.secret();
    let (other, other_token) = core.token_for(OTHER, 0).await.unwrap();
    let (rotation, new, _) = core.rotate_tokens(0).await.unwrap();
    assert_eq!(rotation.old_lease_ids, vec![old.lease_id.clone()]);
    assert_eq!(rotation.new_lease_id, new.lease_id);
    assert_eq!(
        rotation.state,
        crate::store::rotations::RotationState::Confirmed
    );
    assert!(core.issuer.introspect(&old_token).await.unwrap().is_none());
    let actions: Vec<String> = core.evidence().await.into_iter().map(|e| e.0).collect();
    assert!(
        actions.contains(&"credential.rotate".to_owned()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"credential.rotation_confirmed".to_owned()),
        "{actions:?}"
    );
    // Another identity's credentials are not the rotation's.
    assert!(!rotation.old_lease_ids.contains(&other.lease_id));
    let still = core.issuer.introspect(&other_token.secret()).await.unwrap();
    assert_eq!(still.map(|l| l.lease_id), Some(other.lease_id));
}

#[tokio::test]
async fn an_overlap_beyond_the_maximum_is_refused_before_authority_is_asked() {
    let core = core(|_| Ok(decision(Effect::Allow, "active"))).await;
    let refused = core
        .rotate_tokens(rotation::MAX_OVERLAP_SECONDS + 1)
        .await
        .unwrap_err();
    assert_eq!(refused.field(), Some("overlap_seconds"));
    assert!(core.asks().is_empty());
}

#[tokio::test]
async fn a_ca_rotation_is_decided_for_the_forwarded_person_on_the_trust_domain() {
    let core = core(|ask| {
        Ok(decision(
            if matches!(ask.principal, Principal::Bearer(_)) {
                Effect::Allow
            } else {
                Effect::Deny
            },
            "",
        ))
    })
    .await;
    let before = core.issuer.authorities().intermediates.clone();
    let refused = core
        .issuer
        .rotate_ca(
            Principal::Workload(BOT.into()),
            BOT,
            CaRotation::Intermediate,
            "routine",
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(core.issuer.authorities().intermediates, before);
    let changes = core.issuer.ca_changes();
    core.issuer
        .rotate_ca(
            Principal::Bearer("token".into()),
            BOT,
            CaRotation::Intermediate,
            "routine",
        )
        .await
        .unwrap();
    assert_ne!(core.issuer.authorities().intermediates, before);
    assert!(changes.has_changed().unwrap());
    let asks = core.asks();
    assert_eq!(asks[1].resource, Resource::TrustDomain(TD.into()));
    assert_eq!(asks[1].action, Action::RotateCa);
}
