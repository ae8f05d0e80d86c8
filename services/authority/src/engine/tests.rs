use std::fmt::Write as _;

use proptest::prelude::*;

use super::*;

fn engine() -> Engine {
    Engine::new().unwrap()
}

fn workload(path: &str, groups: &[&str]) -> Principal {
    Principal::Workload {
        spiffe_id: format!("spiffe://steward.test{path}"),
        trust_domain: "steward.test".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn human(subject: &str, groups: &[&str]) -> Principal {
    Principal::Human {
        subject: subject.into(),
        issuer: "https://id.example.test".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

fn nhi(id: &str) -> NhiFacts {
    NhiFacts {
        id: id.into(),
        kind: "connector".into(),
        environment: "production".into(),
        state: "active".into(),
        risk_score: 10,
        business_owner: "team-billing".into(),
        technical_owner: "alice".into(),
        business_service: "billing".into(),
        source_system: "github".into(),
        spiffe_id: String::new(),
        labels: [("tier".to_owned(), "1".to_owned())].into_iter().collect(),
    }
}

/// One engine for building resources (a request does not depend on which).
static ENGINE: std::sync::LazyLock<Engine> = std::sync::LazyLock::new(engine);

fn request(principal: Principal, action: &str, resource: NhiFacts) -> DecisionRequest {
    DecisionRequest {
        principal,
        action: action.into(),
        resource: ENGINE.resource(resource).unwrap(),
        context: RequestContext {
            incident_ref: "INC-42".into(),
            now: 1_800_000_000,
            window_start: 1_800_000_000,
            window_end: 1_800_001_800,
            requester: "spiffe://steward.test/automation/soar".into(),
            acting_workload: "spiffe://steward.test/automation/soar".into(),
            ..Default::default()
        },
    }
}

const SITE: &str = r#"
@id("soar-rotates-with-owner-approval")
@reason("SOAR may rotate a connector's secret during an incident once its technical owner approves")
@approvals("1")
@approver("technical_owner")
@max_ttl("1800")
@obligations("revoke_old_secret, post_action_review")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"rotate", resource)
when { context.has_incident && resource.kind == "connector" };

@id("broker-issues-short-lived")
@max_ttl("3600")
permit (principal in Steward::Group::"brokers", action in [Steward::Action::"issue", Steward::Action::"renew"], resource)
when { resource.environment == "production" };

@id("tier-1-issue-cap")
@max_ttl("900")
permit (principal in Steward::Group::"brokers", action == Steward::Action::"issue", resource)
when { resource.hasTag("tier") && resource.getTag("tier") == "1" };

@id("owners-approve")
permit (principal, action == Steward::Action::"approve", resource)
when { principal is Steward::Human && principal.id == resource.technical_owner };
"#;

fn site(engine: &Engine) -> CompiledSet {
    CompiledSet::compile(engine, &format!("{DEFAULT_POLICIES}\n{SITE}")).unwrap()
}

#[test]
fn the_default_policies_validate_against_the_schema() {
    let engine = engine();
    let set = CompiledSet::compile(&engine, DEFAULT_POLICIES).unwrap();
    assert_eq!(
        set.policy_ids(),
        vec![
            "steward-no-self-approval",
            "steward-approver-is-not-executor",
            "steward-no-credentials-for-dead-identities",
            "steward-restricted-identities-need-a-grant",
            "steward-owners-may-approve",
            "steward-break-glass-acts",
            "steward-workloads-obtain-their-own-svids",
            "steward-owners-reinstate",
            "steward-people-close-incidents",
            "steward-operators-close-incidents",
            "steward-operators-manage-policy",
            "steward-policy-admins-manage-policy",
            "steward-operators-manage-lifecycle",
            "steward-owners-attest",
            "steward-operators-rotate-the-ca",
        ]
    );
}

#[test]
fn a_workloads_role_is_its_paths_first_segment() {
    assert_eq!(workload_role("spiffe://td/operator/admin"), "operator");
    assert_eq!(
        workload_role("spiffe://td/automation/operator/x"),
        "automation"
    );
    assert_eq!(workload_role("spiffe://td"), "");
    assert_eq!(workload_role("spiffe://td/"), "");
    // So a deeper "operator" is not an operator to the defaults.
    let engine = engine();
    let set = CompiledSet::compile(&engine, DEFAULT_POLICIES).unwrap();
    let document = engine.document("policies").unwrap();
    let ask = |principal: Principal| DecisionRequest {
        principal,
        action: "manage_policy".into(),
        resource: document.clone(),
        context: RequestContext::default(),
    };
    let effect = |p| set.decide(&engine, &ask(p)).unwrap().effect;
    assert_eq!(effect(workload("/operator/admin", &[])), Effect::Allow);
    assert_eq!(
        effect(workload("/automation/operator/x", &[])),
        Effect::Deny
    );
    assert_eq!(effect(human("alice", &[])), Effect::Deny);
    assert_eq!(effect(human("pat", &["policy-admins"])), Effect::Allow);
}

#[test]
fn syntax_errors_are_located() {
    let engine = engine();
    let text = "permit (principal, action, resource);\n\n  permit (principal, action resource);\n";
    let errors = CompiledSet::compile(&engine, text).unwrap_err();
    assert_eq!(
        (errors[0].line, errors[0].column > 0),
        (3, true),
        "{errors:?}"
    );
}

#[test]
fn schema_violations_are_located_and_named() {
    let engine = engine();
    let text = "@id(\"ok\")\npermit (principal, action == Steward::Action::\"issue\", resource);\n@id(\"bad\")\npermit (principal, action == Steward::Action::\"issue\", resource)\nwhen { resource.colour == \"blue\" };\n";
    let errors = CompiledSet::compile(&engine, text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].policy_id, "bad");
    assert_eq!(errors[0].line, 5);
    assert!(
        errors[0].message.contains("colour"),
        "{}",
        errors[0].message
    );
    let unknown_action =
        "permit (principal, action == Steward::Action::\"delete_everything\", resource);";
    assert!(CompiledSet::compile(&engine, unknown_action).is_err());
}

#[test]
fn steward_annotations_are_checked() {
    let engine = engine();
    for text in [
        "@id(\"a\") @approvals(\"zero\") permit (principal, action, resource);",
        "@id(\"a\") @approver(\"ceo\") @approvals(\"1\") permit (principal, action, resource);",
        "@id(\"a\") @approver(\"technical_owner\") permit (principal, action, resource);",
        "@id(\"a\") @max_ttl(\"-5\") permit (principal, action, resource);",
        "@id(\"a\") permit (principal, action, resource);\n@id(\"a\") permit (principal, action, resource);",
    ] {
        let errors = CompiledSet::compile(&engine, text).unwrap_err();
        assert_eq!(errors[0].policy_id, "a", "{text}: {errors:?}");
        assert_eq!(errors[0].line, 1, "{text}: {errors:?}");
    }
}

#[test]
fn rotation_needs_the_owners_approval_and_carries_obligations() {
    let engine = engine();
    let set = site(&engine);
    let soar = workload("/automation/soar", &[]);
    let mut ask = request(soar.clone(), "rotate", nhi("n1"));
    let first = set.decide(&engine, &ask).unwrap();
    assert_eq!(first.effect, Effect::ApprovalRequired);
    assert_eq!(
        first.approval,
        Some(ApprovalRequirement {
            approvals: 1,
            approver: "technical_owner".into()
        })
    );
    assert!(
        first.reason.starts_with("1 approval required, 0 held"),
        "{}",
        first.reason
    );

    ask.context.approvers.insert("alice".into());
    let approved = set.decide(&engine, &ask).unwrap();
    assert_eq!(approved.effect, Effect::Allow);
    assert_eq!(
        approved.policy_ids,
        vec!["soar-rotates-with-owner-approval"]
    );
    assert_eq!(approved.obligations.max_ttl, Some(1800));
    assert_eq!(
        approved
            .obligations
            .duties
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["post_action_review", "revoke_old_secret"]
    );

    // No incident: nothing permits.
    ask.context.incident_ref.clear();
    let denied = set.decide(&engine, &ask).unwrap();
    assert_eq!(
        (denied.effect, denied.reason.as_str()),
        (Effect::Deny, "no policy permits this request")
    );
}

#[test]
fn the_tightest_ttl_wins_and_forbids_override_permits() {
    let engine = engine();
    let set = site(&engine);
    let broker = workload("/service/credential-broker", &["brokers"]);
    let issued = set
        .decide(&engine, &request(broker.clone(), "issue", nhi("n2")))
        .unwrap();
    assert_eq!(issued.effect, Effect::Allow);
    assert_eq!(
        issued.policy_ids,
        vec!["broker-issues-short-lived", "tier-1-issue-cap"]
    );
    assert_eq!(issued.obligations.max_ttl, Some(900));

    let mut dead = nhi("n3");
    dead.state = "suspended".into();
    let refused = set
        .decide(&engine, &request(broker, "issue", dead))
        .unwrap();
    assert_eq!(refused.effect, Effect::Deny);
    assert_eq!(
        refused.policy_ids,
        vec!["steward-no-credentials-for-dead-identities"]
    );
    assert_eq!(refused.reason, "the identity is revoked or decommissioned");
}

#[test]
fn roles_stay_apart() {
    let engine = engine();
    let set = site(&engine);
    // Alice owns the NHI and may approve others' requests…
    let mut approve = request(human("alice", &[]), "approve", nhi("n4"));
    assert_eq!(set.decide(&engine, &approve).unwrap().effect, Effect::Allow);
    // …but not her own.
    approve.context.requester = "alice".into();
    let own = set.decide(&engine, &approve).unwrap();
    assert_eq!(
        (own.effect, own.policy_ids.clone()),
        (Effect::Deny, vec!["steward-no-self-approval".to_owned()])
    );

    // Having approved the rotation, she may not be the human it executes for.
    let mut rotate = request(workload("/automation/soar", &[]), "rotate", nhi("n4"));
    rotate.context.approvers.insert("alice".into());
    rotate.context.acting_human = "alice".into();
    let executed = set.decide(&engine, &rotate).unwrap();
    assert_eq!(executed.effect, Effect::Deny);
    assert_eq!(
        executed.policy_ids,
        vec!["steward-approver-is-not-executor"]
    );
}

#[test]
fn unknown_actions_are_refused_precisely() {
    let engine = engine();
    let set = site(&engine);
    let err = set
        .decide(&engine, &request(human("a", &[]), "explode", nhi("n")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "action: \"explode\" is not a Steward action"
    );
}

/// A generated policy set: scopes over a few principals, groups, actions
/// and resources, with conditions on facts and context.
fn corpus(seed: u64, policies: usize) -> String {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut text = String::new();
    for i in 0..policies {
        let effect = if next(5) == 0 { "forbid" } else { "permit" };
        let principal = match next(5) {
            0 => "principal".to_owned(),
            1 => format!(
                "principal == Steward::Workload::\"spiffe://steward.test/w/{}\"",
                next(20)
            ),
            2 => format!("principal in Steward::Group::\"g{}\"", next(6)),
            3 => format!("principal == Steward::Human::\"h{}\"", next(10)),
            _ => "principal is Steward::Human".to_owned(),
        };
        let action_kind = next(4);
        let action = match action_kind {
            0 => "action".to_owned(),
            1 => format!(
                "action == Steward::Action::\"{}\"",
                NHI_ACTIONS[next(NHI_ACTIONS.len() as u64) as usize]
            ),
            2 => "action in Steward::Action::\"high_impact\"".to_owned(),
            _ => format!(
                "action in [Steward::Action::\"{}\", Steward::Action::\"{}\"]",
                NHI_ACTIONS[next(NHI_ACTIONS.len() as u64) as usize],
                NHI_ACTIONS[next(NHI_ACTIONS.len() as u64) as usize]
            ),
        };
        let resource = match next(4) {
            0 if action_kind != 0 => format!("resource == Steward::Nhi::\"n{}\"", next(30)),
            _ => "resource".to_owned(),
        };
        // A policy for any action may be asked about any resource type
        // (incidents, documents, principals), so it reads only the context.
        let condition = match if action_kind == 0 {
            [0, 2, 4][next(3) as usize]
        } else {
            next(6)
        } {
            0 => String::new(),
            1 => format!(" when {{ resource.risk_score > {} }}", next(100)),
            2 => " when { context.has_incident }".to_owned(),
            3 => format!(
                " when {{ resource.environment == \"{}\" }}",
                ["production", "staging"][next(2) as usize]
            ),
            4 => " unless { context.break_glass }".to_owned(),
            _ => " when { resource.hasTag(\"tier\") && resource.getTag(\"tier\") == \"1\" }"
                .to_owned(),
        };
        let annotations = match next(4) {
            0 => "@approvals(\"1\") ".to_owned(),
            1 => format!("@max_ttl(\"{}\") ", 60 * (1 + next(60))),
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "@id(\"p{i}\") {annotations}{effect} ({principal}, {action}, {resource}){condition};"
        );
    }
    text
}

fn arbitrary_request() -> impl Strategy<Value = DecisionRequest> {
    (
        0..3u8,
        0..20u8,
        proptest::collection::vec(0..6u8, 0..3),
        0..NHI_ACTIONS.len(),
        0..30u8,
        0..100i64,
        any::<bool>(),
        any::<bool>(),
        0..2usize,
    )
        .prop_map(
            |(kind, n, groups, action, resource, risk, incident, glass, approvers)| {
                let groups: Vec<String> = groups.iter().map(|g| format!("g{g}")).collect();
                let principal = if kind == 0 {
                    Principal::Human {
                        subject: format!("h{}", n % 10),
                        issuer: "i".into(),
                        groups,
                    }
                } else {
                    Principal::Workload {
                        spiffe_id: format!("spiffe://steward.test/w/{n}"),
                        trust_domain: "steward.test".into(),
                        groups,
                    }
                };
                let mut facts = nhi(&format!("n{resource}"));
                facts.risk_score = risk;
                facts.environment = if risk % 2 == 0 {
                    "production".into()
                } else {
                    "staging".into()
                };
                if risk % 3 == 0 {
                    facts.labels.clear();
                }
                let mut r = request(principal, NHI_ACTIONS[action].as_str(), facts);
                if !incident {
                    r.context.incident_ref.clear();
                }
                r.context.break_glass = glass;
                for a in 0..approvers {
                    r.context.approvers.insert(format!("approver-{a}"));
                }
                r
            },
        )
}

/// The engine and eight generated 300-policy sets, compiled once.
fn corpora() -> &'static (Engine, Vec<CompiledSet>) {
    static CORPORA: std::sync::OnceLock<(Engine, Vec<CompiledSet>)> = std::sync::OnceLock::new();
    CORPORA.get_or_init(|| {
        let engine = engine();
        let sets = (0..8)
            .map(|seed| CompiledSet::compile(&engine, &corpus(seed, 300)).unwrap())
            .collect();
        (engine, sets)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The slice decides every request exactly as the whole set does.
    #[test]
    fn sliced_and_unsliced_decisions_agree(seed in 0usize..8, request in arbitrary_request()) {
        let (engine, sets) = corpora();
        let set = &sets[seed];
        let sliced = set.decide(engine, &request).unwrap();
        let whole = set.decide_unsliced(engine, &request).unwrap();
        prop_assert_eq!(sliced, whole);
        prop_assert!(set.slice_len(engine, &request).unwrap() < set.len());
    }
}
