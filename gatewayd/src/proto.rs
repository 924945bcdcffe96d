//! Generated protobuf types.

/// The upstream protocol (`proto/gatewayd/upstream/v1/upstream.proto`, SPEC section 6).
pub mod upstream {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/gatewayd.upstream.v1.rs"));
}

/// The store's on-disk punch encoding (`proto/gatewayd/store/v1/store.proto`).
pub mod store {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/gatewayd.store.v1.rs"));
}
