//! `steward-inventory`: The inventory service: the one governed view of every non-human identity.

fn main() -> std::process::ExitCode {
    steward_server::service_main(
        steward_inventory::SPEC,
        steward_inventory::default_config(),
        steward_inventory::build,
    )
}
