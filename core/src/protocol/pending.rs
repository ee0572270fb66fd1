//! The requests one stream is waiting on, sans-IO: who is pending, until when, and what to do
//! when an answer, a deadline or the end of the stream comes.
//!
//! Every request settles exactly once, and that is a property of this table, not of the order
//! tasks happen to run in: an entry leaves the table exactly once (answer, timeout, cancel or
//! close), and once the table is closed nothing can be inserted, so a request made while its
//! stream is going away is refused at once instead of waiting forever. The runtime around it
//! holds the table under one lock and only moves time in: [`Pending::poll_timeout`] says when
//! the next deadline is, [`Pending::handle_timeout`] gives back what expired by `now` (the model
//! is quinn-proto's `poll_timeout`/`handle_timeout`).
//!
//! The table is generic over `T`, what settles a request (a channel's sending half in the
//! runtime, anything in tests), so it has no runtime and no clock of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the table is closed: what a request made after that is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The stream ended (the peer went away or the stream was ended).
    Disconnected,
    /// The local instance was closed.
    Closed,
}

/// Why a request was not inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is closed.
    Closed(Closed),
    /// As many requests as allowed are pending already.
    Full {
        /// The limit.
        max: usize,
    },
    /// A request with this id is pending already (ids must be unique).
    Duplicate,
}

/// One pending request.
#[derive(Debug)]
pub struct Entry<T> {
    /// The request body as sent (for the errors legacy reports with `req`).
    pub req: Arc<str>,
    /// The timeout that applies, in milliseconds.
    pub timeout_ms: u64,
    /// What settles it.
    pub settle: T,
    deadline: (Instant, u64),
}

/// What an insert changed for the timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The new request has the earliest deadline: a timer sleeping until a later one must be
    /// woken to sleep until this one instead.
    pub earliest: bool,
}

/// The pending requests of one stream.
#[derive(Debug)]
pub struct Pending<T> {
    entries: HashMap<Box<str>, Entry<T>>,
    /// Deadlines in order; the sequence number keeps equal instants apart.
    deadlines: BTreeMap<(Instant, u64), Box<str>>,
    seq: u64,
    max: usize,
    closed: Option<Closed>,
}

impl<T> Pending<T> {
    /// An empty, open table that holds at most `max` requests.
    pub fn new(max: usize) -> Self {
        Pending {
            entries: HashMap::new(),
            deadlines: BTreeMap::new(),
            seq: 0,
            max,
            closed: None,
        }
    }

    /// Adds a request that times out `timeout_ms` after `now`. Refused once the table is
    /// closed, when it is full, or for an id already pending.
    pub fn insert(
        &mut self,
        id: &str,
        req: Arc<str>,
        timeout_ms: u64,
        now: Instant,
        settle: T,
    ) -> Result<Inserted, (Refused, T)> {
        if let Some(c) = self.closed {
            return Err((Refused::Closed(c), settle));
        }
        if self.entries.len() >= self.max {
            return Err((Refused::Full { max: self.max }, settle));
        }
        if self.entries.contains_key(id) {
            return Err((Refused::Duplicate, settle));
        }
        self.seq += 1;
        // A deadline past what the clock can say is no deadline: the request waits for its
        // answer or the end of the stream.
        let at = now
            .checked_add(Duration::from_millis(timeout_ms))
            .unwrap_or_else(|| far_future(now));
        let deadline = (at, self.seq);
        let earliest = self.deadlines.keys().next().is_none_or(|d| deadline < *d);
        let id: Box<str> = id.into();
        self.deadlines.insert(deadline, id.clone());
        self.entries.insert(
            id,
            Entry {
                req,
                timeout_ms,
                settle,
                deadline,
            },
        );
        Ok(Inserted { earliest })
    }

    /// An answer came for `id`: its entry, if it is still pending.
    pub fn answer(&mut self, id: &str) -> Option<Entry<T>> {
        self.remove(id)
    }

    /// The request's caller gave up on it (its future was dropped): its entry, if still there.
    pub fn cancel(&mut self, id: &str) -> Option<Entry<T>> {
        self.remove(id)
    }

    fn remove(&mut self, id: &str) -> Option<Entry<T>> {
        let e = self.entries.remove(id)?;
        self.deadlines.remove(&e.deadline);
        Some(e)
    }

    /// When the next request times out, if any is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// Every request whose deadline is at or before `now`, earliest first, removed.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Entry<T>> {
        let mut out = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(e) = self.entries.remove(&id) {
                out.push(e);
            }
        }
        out
    }

    /// Closes the table: every pending request is removed and returned, and every later insert
    /// is refused with `why`. Closing again returns nothing and keeps the first reason.
    pub fn close(&mut self, why: Closed) -> Vec<Entry<T>> {
        if self.closed.is_none() {
            self.closed = Some(why);
        }
        self.deadlines.clear();
        self.entries.drain().map(|(_, e)| e).collect()
    }

    /// Why the table is closed, once it is.
    pub fn closed(&self) -> Option<Closed> {
        self.closed
    }

    /// How many requests are pending.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// About thirty years from `now`, or as far as this platform's clock goes.
fn far_future(now: Instant) -> Instant {
    let mut step = Duration::from_secs(30 * 365 * 86_400);
    loop {
        if let Some(t) = now.checked_add(step) {
            return t;
        }
        step /= 2;
    }
}

/// The line of a request: `{"_req":"ID","req":BODY}` (legacy's order of keys).
pub fn encode_request(id: &str, body: &str) -> String {
    let mut text = String::with_capacity(body.len() + id.len() + 20);
    text.push_str("{\"_req\":\"");
    text.push_str(id);
    text.push_str("\",\"req\":");
    text.push_str(body);
    text.push('}');
    text
}

/// The line of a request between v2 peers that carries the sender's trace context:
/// `{"_req":"ID","req":BODY,"traceparent":"TP"}` (docs/PROTOCOL-V2.md section 8.3). `TP` is a
/// `traceparent` value, which holds nothing JSON escapes.
#[cfg(feature = "otel")]
pub fn encode_traced_request(id: &str, body: &str, traceparent: &str) -> String {
    let mut text = String::with_capacity(body.len() + id.len() + traceparent.len() + 38);
    text.push_str("{\"_req\":\"");
    text.push_str(id);
    text.push_str("\",\"req\":");
    text.push_str(body);
    text.push_str(",\"traceparent\":\"");
    text.push_str(traceparent);
    text.push_str("\"}");
    text
}

/// The line of an answer: `{"_resp":ID,"err":ERR,"resp":RESP}`, `ID` as the request gave it
/// (JSON text), `ERR` and `RESP` as JSON texts, each left out when `None` (as legacy's
/// `JSON.stringify` leaves out `undefined`).
pub fn encode_response(id: &str, err: Option<&str>, resp: Option<&str>) -> String {
    let mut text =
        String::with_capacity(32 + id.len() + err.map_or(4, str::len) + resp.map_or(0, str::len));
    text.push_str("{\"_resp\":");
    text.push_str(id);
    if let Some(e) = err {
        text.push_str(",\"err\":");
        text.push_str(e);
    }
    if let Some(r) = resp {
        text.push_str(",\"resp\":");
        text.push_str(r);
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> Pending<u32> {
        Pending::new(max)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_answer_settles_once_and_removes_its_deadline() {
        let t0 = Instant::now();
        let mut p = table(10);
        p.insert("a", Arc::from("{}"), 100, t0, 1).unwrap();
        assert_eq!(p.poll_timeout(), Some(t0 + ms(100)));
        assert_eq!(p.answer("a").map(|e| e.settle), Some(1));
        assert!(p.answer("a").is_none(), "a second answer finds nothing");
        assert_eq!(p.poll_timeout(), None);
        assert!(p.handle_timeout(t0 + ms(1000)).is_empty());
    }

    #[test]
    fn deadlines_expire_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut p = table(10);
        assert!(
            p.insert("late", Arc::from("{}"), 300, t0, 3)
                .unwrap()
                .earliest
        );
        assert!(
            p.insert("early", Arc::from("{}"), 100, t0, 1)
                .unwrap()
                .earliest
        );
        assert!(
            !p.insert("mid", Arc::from("{}"), 200, t0, 2)
                .unwrap()
                .earliest
        );
        // Two at the same instant both expire.
        assert!(
            !p.insert("mid2", Arc::from("{}"), 200, t0, 4)
                .unwrap()
                .earliest
        );
        assert!(p.handle_timeout(t0 + ms(99)).is_empty());
        let got: Vec<u32> = p
            .handle_timeout(t0 + ms(200))
            .into_iter()
            .map(|e| e.settle)
            .collect();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(300)));
        assert!(
            p.answer("mid").is_none(),
            "an expired request cannot be answered"
        );
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn close_settles_everything_and_refuses_later_inserts() {
        let t0 = Instant::now();
        let mut p = table(10);
        p.insert("a", Arc::from("{}"), 100, t0, 1).unwrap();
        p.insert("b", Arc::from("{}"), 100, t0, 2).unwrap();
        let mut got: Vec<u32> = p
            .close(Closed::Disconnected)
            .into_iter()
            .map(|e| e.settle)
            .collect();
        got.sort();
        assert_eq!(got, [1, 2]);
        assert_eq!(p.poll_timeout(), None);
        // The race the table closes: a request made after the stream went away is refused at
        // once, with its settlement handed back, instead of being orphaned.
        let refused = p.insert("c", Arc::from("{}"), 100, t0, 3).unwrap_err();
        assert_eq!(refused, (Refused::Closed(Closed::Disconnected), 3));
        assert!(p.close(Closed::Closed).is_empty());
        assert_eq!(
            p.closed(),
            Some(Closed::Disconnected),
            "the first reason stays"
        );
    }

    #[test]
    fn the_limit_and_duplicate_ids_are_refused() {
        let t0 = Instant::now();
        let mut p = table(2);
        p.insert("a", Arc::from("{}"), 100, t0, 1).unwrap();
        assert_eq!(
            p.insert("a", Arc::from("{}"), 100, t0, 9).unwrap_err().0,
            Refused::Duplicate
        );
        p.insert("b", Arc::from("{}"), 100, t0, 2).unwrap();
        assert_eq!(
            p.insert("c", Arc::from("{}"), 100, t0, 3).unwrap_err().0,
            Refused::Full { max: 2 }
        );
        p.cancel("a");
        p.insert("c", Arc::from("{}"), 100, t0, 3).unwrap();
    }

    #[test]
    fn a_huge_timeout_is_no_deadline_rather_than_an_overflow() {
        let t0 = Instant::now();
        let mut p = table(2);
        p.insert("a", Arc::from("{}"), u64::MAX, t0, 1).unwrap();
        assert!(p.poll_timeout().is_some_and(|t| t > t0 + ms(86_400_000)));
        assert!(p.handle_timeout(t0 + ms(86_400_000)).is_empty());
    }

    #[test]
    fn encoders_write_legacy_lines() {
        assert_eq!(
            encode_request("id-1", r#"{"op":"x"}"#),
            r#"{"_req":"id-1","req":{"op":"x"}}"#
        );
        assert_eq!(
            encode_response(r#""id-1""#, Some("null"), Some("5")),
            r#"{"_resp":"id-1","err":null,"resp":5}"#
        );
        assert_eq!(
            encode_response(r#""id-1""#, None, None),
            r#"{"_resp":"id-1"}"#
        );
        assert_eq!(
            encode_response(r#""id-1""#, Some(r#"{"error":"x"}"#), None),
            r#"{"_resp":"id-1","err":{"error":"x"}}"#
        );
    }
}
