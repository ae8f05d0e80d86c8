//! Compiling a policy set: parsed, named by `@id`, Steward's annotations
//! checked, validated strictly against the schema, every error located.

use super::*;

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
    pub(super) all: PolicySet,
    pub(super) policies: Vec<Policy>,
    pub(super) meta: HashMap<String, PolicyMeta>,
    pub(super) index: SliceIndex,
}

/// 1-based line and column of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (u32, u32) {
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

pub(super) fn located(
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

pub(super) fn meta_of(policy: &Policy) -> Result<PolicyMeta, String> {
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
}
