//! `steward-audit`: the tamper-evident evidence log.

fn main() -> std::process::ExitCode {
    steward_server::service_main(
        steward_audit::SPEC,
        steward_audit::default_config(),
        steward_audit::build,
    )
}
