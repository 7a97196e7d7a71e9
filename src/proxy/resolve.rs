//! Upstream address resolution, cached.
//!
//! Pingora's `HttpPeer::new` resolves a host name with the blocking `ToSocketAddrs` on the
//! request's worker thread and panics when resolution fails. The gateway resolves instead,
//! asynchronously, and keeps each answer for [`TTL`], so a request to a named provider costs
//! a map lookup and a DNS failure is an error answer, not a crash.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Resolver {
    /// Host name → its address and when it was resolved. Keyed by the name alone (the port is
    /// the caller's), so a lookup borrows the `&str` and allocates nothing.
    cache: RwLock<HashMap<String, (IpAddr, Instant)>>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some((ip, at)) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(host) {
            if at.elapsed() < TTL {
                return Ok(SocketAddr::new(*ip, port));
            }
        }
        let addr = tokio::net::lookup_host((host, port)).await?.next().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address"))
        })?;
        self.cache.write().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), (addr.ip(), Instant::now()));
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_localhost_resolve_and_garbage_fails() {
        let r = Resolver::default();
        assert_eq!(r.resolve("127.0.0.1", 80).await.unwrap(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(r.resolve("::1", 81).await.unwrap().port(), 81);
        assert!(r.resolve("localhost", 82).await.unwrap().ip().is_loopback());
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
