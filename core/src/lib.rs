//! # iris-rpc
//!
//! The iris-rpc protocol: JSON messages over TLS, authenticated with a shared secret, signed,
//! and optionally encrypted a second time. Byte-compatible with the legacy JavaScript package
//! `iris-rpc` 0.2.20, so services can move over one process at a time.

#![warn(missing_docs)]

pub mod protocol;
