//! rllr-proto: the generated `rllr.v1` gRPC types, clients and server traits.
//!
//! A crate of its own so that clients depend on the API without pulling in candle; the server and
//! the client both build against these stubs, generated from `proto/rllr/v1/rllr.proto`.

#![allow(clippy::all, missing_docs)]

/// Package `rllr.v1`.
pub mod v1 {
    tonic::include_proto!("rllr.v1");
}

/// The encoded `FileDescriptorSet` of `rllr.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rllr_descriptor");
