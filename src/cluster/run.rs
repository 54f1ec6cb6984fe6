//! One run of a cluster in the keeper: every key of the run lives under
//! `patronus/<cluster>/<generation>/`, and the run protocol's `finished` /
//! `should_exit` counters live there too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Keeper;
use crate::{Error, Result};

/// A node's handle on its run's keys.
pub struct Run {
    keeper: Arc<dyn Keeper>,
    prefix: String,
    machine_nr: u16,
    node_id: u16,
    finished: Mutex<HashSet<u64>>,
}

impl Run {
    /// Node `node_id`'s handle on the run whose keys live under `prefix`, of
    /// `machine_nr` nodes.
    pub fn new(keeper: Arc<dyn Keeper>, prefix: String, machine_nr: u16, node_id: u16) -> Run {
        Run {
            keeper,
            prefix,
            machine_nr,
            node_id,
            finished: Mutex::new(HashSet::new()),
        }
    }

    /// Nodes in the run.
    pub fn machine_nr(&self) -> u16 {
        self.machine_nr
    }

    /// This node's id.
    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// The keeper.
    pub fn keeper(&self) -> &Arc<dyn Keeper> {
        &self.keeper
    }

    /// The run's key for `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// The run's key for an application key, checked.
    pub fn user_key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.len() > 160 || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::Invalid(format!(
                "keeper key {key:?}: 1 to 160 bytes without spaces or control characters"
            )));
        }
        Ok(self.key(&format!("user/{key}")))
    }

    /// Stores `val` under the run's `key`.
    pub fn put(&self, key: &str, val: &[u8]) -> Result<()> {
        self.keeper.put(&self.key(key), val)
    }

    /// Waits for the run's `key`.
    pub fn get_wait(&self, key: &str, t: Duration) -> Result<Vec<u8>> {
        self.keeper.get_wait(&self.key(key), t)
    }

    /// Waits until every node reached the run's barrier `key`.
    pub fn barrier(&self, key: &str, t: Duration) -> Result<()> {
        self.keeper
            .barrier(&self.key(key), self.machine_nr as u64, t)
    }

    /// Marks this node finished for `key` (once per key): its own marker
    /// first (which node finished: see [`Run::has_finished`]), then the
    /// count.
    pub fn finished(&self, key: u64) -> Result<()> {
        if self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key)
        {
            self.put(&format!("finished/{key}/{}", self.node_id), b"1")?;
            self.keeper.incr(&self.key(&format!("finished/{key}")))?;
        }
        Ok(())
    }

    /// True once node `node` called `finished(key)`.
    pub fn has_finished(&self, node: u16, key: u64) -> Result<bool> {
        Ok(self
            .keeper
            .try_get(&self.key(&format!("finished/{key}/{node}")))?
            .is_some())
    }

    /// True once every node called `finished(key)`.
    pub fn should_exit(&self, key: u64) -> bool {
        self.keeper
            .try_get(&self.key(&format!("finished/{key}")))
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n >= self.machine_nr as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::InProcessKeeper;

    #[test]
    fn should_exit_once_every_node_finished() {
        let k: Arc<dyn Keeper> = InProcessKeeper::for_cluster("run-test");
        let a = Run::new(k.clone(), "p/run-test/0".into(), 2, 0);
        let b = Run::new(k, "p/run-test/0".into(), 2, 1);
        assert!(!a.should_exit(7));
        a.finished(7).unwrap();
        a.finished(7).unwrap();
        assert!(!b.should_exit(7), "a repeated finished counts once");
        b.finished(7).unwrap();
        assert!(a.should_exit(7) && b.should_exit(7));
        assert!(a.has_finished(1, 7).unwrap() && !a.has_finished(1, 8).unwrap());
        assert!(!a.should_exit(8));
        assert!(a.user_key("bad key").is_err());
        assert_eq!(a.user_key("x").unwrap(), "p/run-test/0/user/x");
    }
}
