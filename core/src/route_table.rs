//! The routing table: which stream reaches each routed uuid, and how many routes each stream
//! holds, so a peer's share can be bounded without counting the table on every announcement.

use std::collections::HashMap;

/// Routed uuid → uuid of the stream it is reachable through, with a count per stream.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    via: HashMap<String, String>,
    per_stream: HashMap<String, usize>,
}

impl RouteTable {
    /// The stream that reaches `uuid`.
    pub(crate) fn get(&self, uuid: &str) -> Option<&String> {
        self.via.get(uuid)
    }

    /// Routed uuids in the table.
    pub(crate) fn len(&self) -> usize {
        self.via.len()
    }

    /// Routes held through the stream `via`.
    pub(crate) fn count(&self, via: &str) -> usize {
        self.per_stream.get(via).copied().unwrap_or(0)
    }

    /// Records `uuid` as reached through `via`; returns the stream it was reached through.
    pub(crate) fn insert(&mut self, uuid: String, via: String) -> Option<String> {
        *self.per_stream.entry(via.clone()).or_default() += 1;
        let old = self.via.insert(uuid, via);
        if let Some(o) = &old {
            self.forget_one(o);
        }
        old
    }

    /// Forgets `uuid`; returns the stream it was reached through.
    pub(crate) fn remove(&mut self, uuid: &str) -> Option<String> {
        let old = self.via.remove(uuid);
        if let Some(o) = &old {
            self.forget_one(o);
        }
        old
    }

    /// Keeps the routes for which `f(uuid, via)` holds.
    pub(crate) fn retain(&mut self, f: impl FnMut(&String, &mut String) -> bool) {
        self.via.retain(f);
        self.per_stream.clear();
        for v in self.via.values() {
            *self.per_stream.entry(v.clone()).or_default() += 1;
        }
    }

    /// Every `(uuid, via)`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.via.iter()
    }

    fn forget_one(&mut self, via: &str) {
        if let Some(n) = self.per_stream.get_mut(via) {
            *n -= 1;
            if *n == 0 {
                self.per_stream.remove(via);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_every_change() {
        let mut t = RouteTable::default();
        t.insert("a".into(), "p".into());
        t.insert("b".into(), "p".into());
        t.insert("c".into(), "q".into());
        assert_eq!((t.count("p"), t.count("q")), (2, 1));
        t.insert("a".into(), "q".into());
        assert_eq!((t.count("p"), t.count("q")), (1, 2));
        t.insert("a".into(), "q".into());
        assert_eq!(t.count("q"), 2);
        t.remove("b");
        assert_eq!(t.count("p"), 0);
        t.retain(|_, v| v != "q");
        assert_eq!((t.count("q"), t.iter().count()), (0, 0));
    }
}
