//! Generated protobuf messages and gRPC stubs for every Steward API.
//!
//! This is the only crate that runs protobuf code generation. Services convert
//! these wire types into their own domain types at their gRPC adapter; nothing
//! here should leak past it.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The encoded `FileDescriptorSet` of every Steward proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/steward_descriptor.bin"));

pub mod steward {
    pub mod audit {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.audit.v1.rs"));
        }
    }
    pub mod authority {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.authority.v1.rs"));
        }
    }
    pub mod broker {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.broker.v1.rs"));
        }
    }
    pub mod common {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.common.v1.rs"));
        }
    }
    pub mod inventory {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.inventory.v1.rs"));
        }
    }
    /// Test-only APIs; no production binary serves them.
    pub mod testing {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/steward.testing.v1.rs"));
        }
    }
}

/// The SPIFFE Workload API (`/SpiffeWorkloadAPI/…`), as SPIFFE publishes
/// it: its proto has no package.
pub mod spiffe_workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}
