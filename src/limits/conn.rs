//! Per-client-address counts of what is open right now: connections, and requests in flight
//! (HTTP/2 streams included). A slot is taken when a connection or request starts and given
//! back when its guard drops, whatever path it ends on.
//!
//! The client address is the TCP peer. IPv6 clients are counted per /64: one host usually
//! owns a whole /64, so counting single addresses would let it open 2^64 times the cap.
//!
//! The counts live in 64 shards, each a small `HashMap` behind its own `Mutex`; a slot costs
//! one lock, one hash-map probe and an add (another on release), and two clients rarely share
//! a shard. Addresses are attacker-chosen, so the maps keep std's SipHash (HashDoS-resistant);
//! an entry is removed when its count reaches zero, so the maps hold only addresses with
//! something open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};

const SHARDS: usize = 64;

/// Connections open per client address (taken by `proxy::front`).
pub static CONNECTIONS: LazyLock<PerIp> = LazyLock::new(PerIp::new);
/// Requests in flight per client address (taken by `proxy::guard`).
pub static REQUESTS: LazyLock<PerIp> = LazyLock::new(PerIp::new);

pub struct PerIp {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

/// One open connection or request of `ip`; gives its slot back when dropped.
pub struct IpSlot {
    map: &'static PerIp,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.map.release(self.ip);
    }
}

/// The key an address is counted under: itself for IPv4, its /64 for IPv6 (an IPv4-mapped
/// IPv6 address counts as the IPv4 address).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl PerIp {
    pub fn new() -> PerIp {
        PerIp { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let folded = match ip {
            IpAddr::V4(a) => u32::from(*a) as u64,
            IpAddr::V6(a) => {
                let n = u128::from(*a);
                (n >> 64) as u64 ^ n as u64
            }
        };
        &self.shards[super::shard_of(folded, SHARDS)]
    }

    /// Take a slot for `ip` unless it already holds `cap` (0 = no cap: always granted, and
    /// nothing is counted). `None`: over the cap.
    pub fn acquire(&'static self, ip: IpAddr, cap: u32) -> Option<Option<IpSlot>> {
        if cap == 0 {
            return Some(None);
        }
        let ip = client_key(ip);
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            // Never a fresh entry: cap >= 1, so n >= 1 here.
            return None;
        }
        *n += 1;
        Some(Some(IpSlot { map: self, ip }))
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// What `ip` holds now (tests and diagnostics).
    pub fn count(&self, ip: IpAddr) -> u32 {
        let ip = client_key(ip);
        let map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static T: LazyLock<PerIp> = LazyLock::new(PerIp::new);

    #[test]
    fn cap_holds_and_slots_come_back() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = T.acquire(ip, 2).unwrap();
        let b = T.acquire(ip, 2).unwrap();
        assert!(T.acquire(ip, 2).is_none(), "third over a cap of 2");
        assert_eq!(T.count(ip), 2);
        drop(a);
        let c = T.acquire(ip, 2).unwrap();
        drop((b, c));
        assert_eq!(T.count(ip), 0);
        assert!(T.acquire(ip, 0).unwrap().is_none(), "0 = off, nothing counted");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _s = T.acquire(a, 1).unwrap();
        assert!(T.acquire(b, 1).is_none(), "same /64");
        assert!(T.acquire("2001:db8:1:3::1".parse().unwrap(), 1).unwrap().is_some());
        assert_eq!(client_key("::ffff:10.9.9.9".parse().unwrap()), "10.9.9.9".parse::<IpAddr>().unwrap());
    }
}
