//! Shared fixtures of the server tests; they live in `rllr_server::testutil` (feature `testutil`)
//! so `rllr-client`'s tests start the same tiny-model server.

#![allow(unused_imports)]

pub use rllr_server::testutil::*;
