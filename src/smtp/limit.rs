//! `server.max_connections_per_client`: how many sessions each client address holds, so that
//! one address cannot take every slot of `server.max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open sessions per client address, with a limit.
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    /// At most `max` sessions per address; 0 means no limit.
    pub fn new(max: usize) -> Arc<PerClient> {
        Arc::new(PerClient { max, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more session from `ip`, or `None` when it already holds `max`. The
    /// slot is given back when the returned value is dropped. IPv4-mapped IPv6 addresses count
    /// as their IPv4 address.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        if self.max > 0 {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(ip).or_insert(0);
            if *count >= self.max {
                return None;
            }
            *count += 1;
        }
        Some(ClientSlot { owner: self.clone(), ip })
    }

    /// Sessions open from `ip` (counted only when there is a limit).
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One session's place in its address's count.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if self.owner.max == 0 {
            return;
        }
        let mut open = self.owner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_count() {
        let limit = PerClient::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        assert!(limit.try_acquire(b).is_some(), "another address is not affected");
        drop(first);
        assert_eq!(limit.open(a), 1);
        assert!(limit.try_acquire(a).is_some(), "a slot is given back when a session ends");
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4_and_zero_is_unlimited() {
        let limit = PerClient::new(1);
        let _v4 = limit.try_acquire("192.0.2.1".parse().unwrap()).unwrap();
        assert!(limit.try_acquire("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let unlimited = PerClient::new(0);
        let slots: Vec<_> = (0..1000).map(|_| unlimited.try_acquire("192.0.2.1".parse().unwrap())).collect();
        assert!(slots.iter().all(Option::is_some));
        drop(slots);
        assert_eq!(limit.open("::ffff:192.0.2.1".parse().unwrap()), 1);
    }

    #[test]
    fn the_map_forgets_addresses_with_no_session() {
        let limit = PerClient::new(3);
        for i in 0..100u8 {
            drop(limit.try_acquire(IpAddr::from([10, 0, 0, i])));
        }
        assert!(limit.open.lock().unwrap().is_empty());
    }
}
