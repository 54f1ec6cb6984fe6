//! Cluster bootstrap: the keeper (rendezvous for node ids, endpoints and
//! barriers). The in-process keeper serves several nodes of one process;
//! the memcached keeper ([`MemcachedKeeper`]) serves several processes and
//! hosts through a real memcached server.

pub mod liveness;
mod memcached;
pub mod run;

pub use memcached::MemcachedKeeper;
pub use run::Run;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use once_cell::sync::Lazy;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Key/value rendezvous shared by the nodes of one cluster. Keys are
/// namespaced by the cluster name by the implementation.
pub trait Keeper: Send + Sync {
    /// Stores a value.
    fn put(&self, key: &str, val: &[u8]) -> Result<()>;
    /// Reads a value if present.
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Atomically adds 1 (a missing key counts as 0); returns the new value.
    fn incr(&self, key: &str) -> Result<u64>;
    /// Waits until `key` exists.
    fn get_wait(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let t0 = Instant::now();
        let mut sleep = Duration::from_micros(50);
        loop {
            if let Some(v) = self.try_get(key)? {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "keeper key {key:?} did not appear within {timeout:?}"
                )));
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(Duration::from_millis(5));
        }
    }
    /// Waits until `participants` callers reached barrier `name`. Reusable:
    /// every use of a name is a new generation.
    fn barrier(&self, name: &str, participants: u64, timeout: Duration) -> Result<()> {
        // Generation g of the barrier: counter key counts arrivals overall;
        // arrival k belongs to generation (k-1)/participants.
        let k = self.incr(&format!("__barrier:{name}"))?;
        let gen_end = k.div_ceil(participants) * participants;
        let t0 = Instant::now();
        loop {
            let cur = self
                .try_get(&format!("__barrier:{name}"))?
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if cur >= gen_end {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(Error::Timeout(format!(
                    "barrier {name:?}: {cur} of {gen_end} arrivals after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A keeper inside this process, shared by every node opened with the same
/// cluster name.
#[derive(Default)]
pub struct InProcessKeeper {
    map: Mutex<HashMap<String, Vec<u8>>>,
    cv: Condvar,
}

impl InProcessKeeper {
    /// The process-wide keeper of cluster `name`.
    pub fn for_cluster(name: &str) -> Arc<InProcessKeeper> {
        static REG: Lazy<Mutex<HashMap<String, Arc<InProcessKeeper>>>> =
            Lazy::new(Default::default);
        let mut r = REG.lock().unwrap_or_else(|e| e.into_inner());
        r.entry(name.to_string()).or_default().clone()
    }
}

impl Keeper for InProcessKeeper {
    fn put(&self, key: &str, val: &[u8]) -> Result<()> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), val.to_vec());
        self.cv.notify_all();
        Ok(())
    }
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned())
    }
    fn incr(&self, key: &str) -> Result<u64> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let cur = m
            .get(key)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        m.insert(key.to_string(), (cur + 1).to_string().into_bytes());
        drop(m);
        self.cv.notify_all();
        Ok(cur + 1)
    }
    fn get_wait(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let t0 = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = m.get(key) {
                return Ok(v.clone());
            }
            let left = timeout.checked_sub(t0.elapsed()).ok_or_else(|| {
                Error::Timeout(format!(
                    "keeper key {key:?} did not appear within {timeout:?}"
                ))
            })?;
            m = self
                .cv
                .wait_timeout(m, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Opens the keeper a configuration names: `None` is the in-process keeper
/// of `cluster`; `memcached://HOST:PORT` (or `memcache://`) a memcached
/// server, with `timeout` for connecting, reading and writing.
pub fn open(url: Option<&str>, cluster: &str, timeout: Duration) -> Result<Arc<dyn Keeper>> {
    match url {
        None => Ok(InProcessKeeper::for_cluster(cluster)),
        Some(u) => Ok(Arc::new(MemcachedKeeper::connect(u, timeout)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_is_reusable_and_waits_for_everyone() {
        let k = InProcessKeeper::for_cluster("barrier-test");
        for round in 0..3 {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let k = k.clone();
                    std::thread::spawn(move || k.barrier("b", 3, Duration::from_secs(5)))
                })
                .collect();
            for h in hs {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        // A barrier nobody else joins times out instead of hanging.
        assert!(k.barrier("lonely", 2, Duration::from_millis(50)).is_err());
    }

    #[test]
    fn incr_and_get_wait() {
        let k = InProcessKeeper::for_cluster("incr-test");
        assert_eq!(k.incr("n").unwrap(), 1);
        assert_eq!(k.incr("n").unwrap(), 2);
        let k2 = k.clone();
        let h = std::thread::spawn(move || k2.get_wait("late", Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        k.put("late", b"v").unwrap();
        assert_eq!(h.join().unwrap().unwrap(), b"v");
        assert!(k.get_wait("never", Duration::from_millis(20)).is_err());
    }
}
