//! The memcached keeper: a real memcached 1.6 server (binary protocol, the
//! `memcache` crate) as the rendezvous of a multi-process cluster.
//!
//! Every socket operation has an explicit timeout, so a dead memcached turns
//! into an error rather than a hang. Keys are namespaced by the caller (the
//! node prefixes everything with `patronus/<cluster>/<generation>/`), which
//! is what lets successive runs share one memcached without restarting it.

use std::time::Duration;

use super::Keeper;
use crate::{Error, Result};

/// Longest memcached key.
const MAX_KEY: usize = 250;

/// A keeper backed by a memcached server.
pub struct MemcachedKeeper {
    client: memcache::Client,
    url: String,
}

impl std::fmt::Debug for MemcachedKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedKeeper")
            .field("url", &self.url)
            .finish()
    }
}

/// Parses `memcached://HOST:PORT` or `memcache://HOST:PORT` into the
/// `memcache://HOST:PORT` URL the crate wants.
pub(crate) fn parse_url(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("memcached://")
        .or_else(|| url.strip_prefix("memcache://"))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "keeper {url:?}: expected memcached://HOST:PORT (or memcache://HOST:PORT)"
            ))
        })?;
    let hostport = rest.split(['?', '/']).next().unwrap_or("");
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(format!("keeper {url:?}: missing :PORT after the host")))?;
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(Error::Invalid(format!(
            "keeper {url:?}: host {host:?} / port {port:?} is not a valid address"
        )));
    }
    Ok(format!("memcache://{host}:{port}"))
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::Invalid(format!(
            "keeper key {key:?}: memcached keys are 1..={MAX_KEY} bytes without spaces or control characters"
        )));
    }
    Ok(())
}

impl MemcachedKeeper {
    /// Connects to `url` with `timeout` for connect, read and write.
    pub fn connect(url: &str, timeout: Duration) -> Result<MemcachedKeeper> {
        let target = parse_url(url)?;
        let timeout = timeout.max(Duration::from_millis(100));
        let client = memcache::Client::builder()
            .add_server(target.as_str())
            .and_then(|b| {
                b.with_max_pool_size(4)
                    .with_connection_timeout(timeout)
                    .with_read_timeout(timeout)
                    .with_write_timeout(timeout)
                    .build()
            })
            .map_err(|e| Error::Keeper(format!("connect to memcached at {url}: {e}")))?;
        // A round trip now, so a wrong address fails here and not at the
        // first rendezvous.
        client
            .version()
            .map_err(|e| Error::Keeper(format!("memcached at {url} does not answer: {e}")))?;
        Ok(MemcachedKeeper {
            client,
            url: url.to_string(),
        })
    }

    fn err(&self, what: &str, key: &str, e: memcache::MemcacheError) -> Error {
        Error::Keeper(format!("memcached {} {what} {key:?}: {e}", self.url))
    }

    /// Deletes a key (tests and tools).
    pub fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.client
            .delete(key)
            .map_err(|e| self.err("delete", key, e))
    }
}

impl Keeper for MemcachedKeeper {
    fn put(&self, key: &str, val: &[u8]) -> Result<()> {
        check_key(key)?;
        self.client
            .set(key, val, 0)
            .map_err(|e| self.err("set", key, e))
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.client
            .get::<Vec<u8>>(key)
            .map_err(|e| self.err("get", key, e))
    }

    fn incr(&self, key: &str) -> Result<u64> {
        check_key(key)?;
        // memcached's incr fails on a missing key: create it as 0 first
        // (`add` is atomic, and loses harmlessly to a concurrent creator).
        match self.client.add(key, "0", 0) {
            Ok(()) => {}
            Err(memcache::MemcacheError::CommandError(_)) => {}
            Err(memcache::MemcacheError::ServerError(_)) => {}
            Err(e) => return Err(self.err("add", key, e)),
        }
        self.client
            .increment(key, 1)
            .map_err(|e| self.err("incr", key, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("memcached://127.0.0.1:11211").unwrap(),
            "memcache://127.0.0.1:11211"
        );
        assert_eq!(
            parse_url("memcache://localhost:5").unwrap(),
            "memcache://localhost:5"
        );
        for bad in [
            "http://x:1",
            "memcached://",
            "memcached://host",
            "memcached://:11211",
            "memcached://h:0",
            "memcached://h:99999",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(check_key("patronus/c/0/ep/1/2").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key(&"x".repeat(251)).is_err());
    }

    #[test]
    fn unreachable_server_is_an_error_not_a_hang() {
        // Port 1 on loopback: nothing listens there.
        let t0 = std::time::Instant::now();
        let e = MemcachedKeeper::connect("memcached://127.0.0.1:1", Duration::from_millis(300))
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }
}
