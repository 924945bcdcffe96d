//! Generated protobuf types. The modules mirror the protobuf packages so cross-package references resolve.

#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod gatewayd {
    pub mod upstream {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gatewayd.upstream.v1.rs"));
        }
    }
    pub mod store {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gatewayd.store.v1.rs"));
        }
    }
}

/// The upstream protocol (`proto/gatewayd/upstream/v1/upstream.proto`, SPEC section 6).
pub use self::gatewayd::upstream::v1 as upstream;

/// The on-disk encodings (`proto/gatewayd/store/v1/store.proto`).
pub use self::gatewayd::store::v1 as store;
