//! [`Multiplexer`]: several named clients and servers built from one configuration (legacy
//! `createFromConfig`), used as one: listeners, handlers and dispatch fan out, and a uuid is
//! found on whichever link holds it.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handlers::{HandlerId, Request};
use crate::link::Link;
use crate::message::{IntoMessage, Message};
use crate::peer::Peer;
use crate::requests::{RawReply, Reply};

/// Named links used as one (legacy `Multiplexer`).
#[derive(Debug)]
pub struct Multiplexer {
    links: Vec<(String, Link)>,
}

fn merged(common: &Value, entry: &Value) -> Value {
    let mut out: Map<String, Value> = common.as_object().cloned().unwrap_or_default();
    if let Some(e) = entry.as_object() {
        for (k, v) in e {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

impl Multiplexer {
    /// Legacy `createFromConfig(options, config, title)`: when `config` itself has `port` or
    /// `address` it is one link named `title`; otherwise each of its entries is a link, named
    /// by its key. `common` options are merged under each entry's.
    pub async fn from_config(common: &Value, config: &Value, title: Option<&str>) -> Result<Self> {
        let single = config.get("port").is_some() || config.get("address").is_some();
        let mut entries: Vec<(String, Value)> = Vec::new();
        if single {
            let name = title
                .map(str::to_owned)
                .or_else(|| {
                    common
                        .get("designation")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "rpc".to_owned());
            entries.push((name, merged(common, config)));
        } else {
            let map = config
                .as_object()
                .ok_or_else(|| Error::Config("multiplexer config must be an object".into()))?;
            for (name, entry) in map {
                entries.push((name.clone(), merged(common, entry)));
            }
        }
        let mut links = Vec::with_capacity(entries.len());
        for (name, opts) in entries {
            match Link::from_json(&opts).await {
                Ok(l) => links.push((name, l)),
                Err(e) => {
                    for (_, l) in &links {
                        l.engine().close().await;
                    }
                    return Err(Error::Config(format!("link {name:?}: {e}")));
                }
            }
        }
        Ok(Multiplexer { links })
    }

    /// From already built links.
    pub fn from_links(links: Vec<(String, Link)>) -> Self {
        Multiplexer { links }
    }

    /// The links with their names.
    pub fn links(&self) -> impl Iterator<Item = (&str, &Link)> {
        self.links.iter().map(|(n, l)| (n.as_str(), l))
    }

    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|(n, _)| n == name).map(|(_, l)| l)
    }

    /// [`crate::Client::on`] on every link.
    pub fn on<F>(&self, op: &str, f: F) -> Vec<HandlerId>
    where
        F: Fn(&Message, &str, &Peer) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.links
            .iter()
            .map(|(_, l)| {
                let f = f.clone();
                l.engine()
                    .handlers
                    .on(op, Arc::new(move |m, u, p| f(m, u, p)))
            })
            .collect()
    }

    /// [`crate::Client::digest`] on every link.
    pub fn digest<F>(&self, f: F) -> Vec<HandlerId>
    where
        F: Fn(&Message, &str, &Peer) + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.links
            .iter()
            .map(|(_, l)| {
                let f = f.clone();
                l.engine()
                    .handlers
                    .digest(Arc::new(move |m, u, p| f(m, u, p)))
            })
            .collect()
    }

    /// [`crate::Client::handle`] on every link.
    pub fn handle<F, Fut>(&self, op: &str, f: F) -> Vec<HandlerId>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, Value>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.links
            .iter()
            .map(|(_, l)| {
                let f = f.clone();
                l.engine()
                    .handlers
                    .handle(op, Arc::new(move |r| Box::pin(f(r))))
            })
            .collect()
    }

    /// Sends to every stream of every link; [`Error::NotConnected`] when none is connected.
    pub fn dispatch<M: IntoMessage>(&self, msg: M) -> Result<usize> {
        let msg = msg.into_message()?;
        let sent: usize = self
            .links
            .iter()
            .filter_map(|(_, l)| l.engine().dispatch(&msg).ok())
            .sum();
        if sent == 0 {
            return Err(Error::NotConnected {
                req: Some(msg.text().clone()),
            });
        }
        Ok(sent)
    }

    fn holder(&self, uuid: &str) -> Result<&Arc<Engine>> {
        self.links
            .iter()
            .map(|(_, l)| l.engine())
            .find(|e| e.holds(uuid))
            .ok_or_else(|| Error::NoSuchStream(uuid.to_owned()))
    }

    /// Sends to peer `uuid` on the link that holds it.
    pub fn dispatch_to<M: IntoMessage>(&self, uuid: &str, msg: M) -> Result<()> {
        self.holder(uuid)?.dispatch_to(uuid, &msg.into_message()?)
    }

    /// A request to peer `uuid` on the link that holds it, sent now (see
    /// [`crate::Endpoint::request`]).
    pub fn request_to<M: IntoMessage>(&self, uuid: &str, msg: M) -> Reply {
        let started = msg
            .into_message()
            .and_then(|m| Ok(self.holder(uuid)?.start_request(Some(uuid), &m, None)));
        Reply(started.unwrap_or_else(|e| RawReply::ready(Err(e))))
    }

    /// Connected peers across links: `(uuid, link name)` (legacy `active`).
    pub fn active(&self) -> Vec<(String, String)> {
        self.links
            .iter()
            .flat_map(|(n, l)| {
                l.engine()
                    .peers()
                    .into_iter()
                    .map(move |p| (p.uuid().to_owned(), n.clone()))
            })
            .collect()
    }

    /// Every link's events, tagged with the link name. Requests no handler takes arrive here.
    pub fn events(&self) -> mpsc::Receiver<(String, Event)> {
        let (tx, rx) = mpsc::channel(4096);
        for (name, l) in &self.links {
            let mut events = l.engine().events();
            let (tx, name) = (tx.clone(), name.clone());
            tokio::spawn(async move {
                while let Some(ev) = events.next().await {
                    if tx.send((name.clone(), ev)).await.is_err() {
                        break;
                    }
                }
            });
        }
        rx
    }

    /// Closes every link.
    pub async fn close(&self) {
        for (_, l) in &self.links {
            l.engine().close().await;
        }
    }
}
