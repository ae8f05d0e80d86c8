//! `steward-credential-broker`: The credential broker: short-lived X.509-SVIDs, JWT-SVIDs and API tokens on leases bound to a task window.

fn main() -> std::process::ExitCode {
    steward_server::service_main(
        steward_credential_broker::SPEC,
        steward_credential_broker::default_config(),
        steward_credential_broker::build_with,
    )
}
