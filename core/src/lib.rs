//! # iris-rpc
//!
//! The iris-rpc protocol: JSON messages over TLS, authenticated with a shared secret, signed,
//! and optionally encrypted a second time. Byte-compatible with the legacy JavaScript package
//! `iris-rpc` 0.2.20, so services can move over one process at a time.
//!
//! ```no_run
//! use iris_rpc::{Certificates, Client, Options, Server};
//! use serde_json::json;
//!
//! # async fn demo() -> iris_rpc::Result<()> {
//! let server = Server::bind(
//!     Options::new("secret")
//!         .port("127.0.0.1:0")
//!         .certificates(Certificates::self_signed()?),
//! )
//! .await?;
//! server.handle("add", |req| async move {
//!     let v = req.msg.value();
//!     Ok(json!({ "sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0) }))
//! });
//!
//! let client = Client::connect(Options::new("secret").address(server.local_addr().to_string()))?;
//! client.wait_connected(std::time::Duration::from_secs(5)).await?;
//! let sum = client.request(json!({ "op": "add", "a": 2, "b": 3 })).await?;
//! assert_eq!(sum, json!({ "sum": 5 }));
//! client.close().await;
//! server.close().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod client;
#[cfg(feature = "cluster")]
mod cluster;
mod connection;
mod delivery;
mod dispatch;
mod endpoint;
mod engine;
mod error;
mod event;
mod handlers;
mod link;
mod message;
pub mod metrics;
mod multiplexer;
mod options;
mod outbox;
mod peer;
pub mod protocol;
mod requests;
mod responder;
mod route_table;
mod router;
mod routes;
pub mod runtime;
pub mod secret;
mod server;
mod shutdown;
mod stream;
mod streams;
pub mod tls;
#[cfg(feature = "otel")]
mod trace;

pub use client::Client;
#[cfg(feature = "cluster")]
pub use cluster::ClusterOptions;
pub use endpoint::Endpoint;
pub use engine::Stats;
pub use error::{error_object, Error, ErrorKind, Result};
pub use event::{Event, Events, IncomingRequest};
pub use handlers::{Filter, Handler, HandlerFuture, HandlerId, Listener, Request};
pub use link::Link;
pub use message::{IntoMessage, Message, Response};
pub use multiplexer::Multiplexer;
pub use options::{Limits, Listen, Options, PortSpec};
pub use peer::Peer;
pub use protocol::{Mode, Security};
pub use requests::{RawReply, Reply};
pub use responder::Responder;
pub use router::{Backend, Router, RouterEvent, RouterEvents, Side};
pub use server::Server;
pub use tls::{Certificates, Pem};
