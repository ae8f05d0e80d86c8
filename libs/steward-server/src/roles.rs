//! Who may call an RPC: SPIFFE ID patterns of the service's own trust
//! domain (`{td}`, filled in at start), one per kind of caller; each
//! service's RBAC table combines them.

/// People's tools: the CLI, with an operator's SVID.
pub const OPERATORS: &str = "spiffe://{td}/operator/*";
/// SOAR and ITSM bots, runbook runners.
pub const AUTOMATION: &str = "spiffe://{td}/automation/*";
/// Read-only reviewers of evidence and inventory.
pub const AUDITORS: &str = "spiffe://{td}/auditor/*";
/// Steward's own services.
pub const SERVICES: &str = "spiffe://{td}/service/*";
/// Workloads that hold broker-issued credentials.
pub const WORKLOADS: &str = "spiffe://{td}/workload/*";
/// Any workload of the trust domain.
pub const EVERYONE: &str = "spiffe://{td}/*";

/// Steward's service `name`, as a caller pattern.
#[macro_export]
macro_rules! service_caller {
    ($name:literal) => {
        concat!("spiffe://{td}/service/", $name)
    };
}
