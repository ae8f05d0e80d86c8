//! `steward-authority`: The authority service: policy as code deciding who may approve, who may execute and which identity acts.

fn main() -> std::process::ExitCode {
    steward_server::service_main(
        steward_authority::SPEC,
        steward_authority::default_config(),
        steward_authority::build_with,
    )
}
