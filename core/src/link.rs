//! [`Link`]: a client or a server, where either will do.

use std::sync::Arc;

use serde_json::Value;

use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::server::Server;

/// A client or a server: one named member of a [`crate::Multiplexer`], or one side of a
/// [`crate::Router`].
#[derive(Debug)]
pub enum Link {
    /// Built from a config with `address`.
    Client(Client),
    /// Built from a config with `port`.
    Server(Server),
}

impl Link {
    /// What the two have in common.
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            Link::Client(c) => c,
            Link::Server(s) => s,
        }
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        self.endpoint().engine()
    }

    /// Closes it.
    pub async fn close(&self) {
        self.endpoint().close().await
    }

    /// Builds a link from legacy options: `port` makes a Server, `address` a Client.
    pub async fn from_json(options: &Value) -> Result<Link> {
        let has = |k: &str| options.get(k).is_some_and(|v| !v.is_null());
        match (has("port"), has("address")) {
            (true, true) => Err(Error::Config(
                "both port and address present in rpc config".into(),
            )),
            (false, false) => Err(Error::Config(
                "port or address required in rpc config".into(),
            )),
            (true, false) => Ok(Link::Server(
                Server::bind(Options::from_json(options)?).await?,
            )),
            (false, true) => Ok(Link::Client(Client::connect(Options::from_json(options)?)?)),
        }
    }
}
