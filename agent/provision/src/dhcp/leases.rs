//! The lease table in memory: who holds which address until when, offers
//! held for a moment, declined addresses. The SQLite store ([`crate::store`])
//! keeps the bound leases across restarts; this table is loaded from it.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::Mac;

/// How long an offered address stays held for the client, in seconds.
pub const OFFER_HOLD_SECS: u64 = 30;
/// How long a declined address (in use by someone else) is kept out of the pool.
pub const DECLINE_HOLD_SECS: u64 = 600;

/// A bound lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The client.
    pub mac: Mac,
    /// Its address.
    pub ip: Ipv4Addr,
    /// When it ends, in seconds since the Unix epoch.
    pub expires: u64,
    /// The host name given to the client (from its reservation).
    pub hostname: Option<String>,
}

/// The addresses a network hands out, and the ones reserved on it.
#[derive(Debug, Clone)]
pub struct Pool {
    /// First address handed out.
    pub first: Ipv4Addr,
    /// Last address handed out.
    pub last: Ipv4Addr,
}

impl Pool {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<Mac, Lease>,
    by_ip: HashMap<Ipv4Addr, Mac>,
    offers: HashMap<Mac, (Ipv4Addr, u64)>,
    offered_ip: HashMap<Ipv4Addr, Mac>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Reserved addresses and their owners; nobody else gets them.
    reserved: HashMap<Ipv4Addr, Mac>,
    /// Where the next scan of each pool (keyed by its first address) starts.
    cursor: HashMap<Ipv4Addr, u32>,
}

impl LeaseTable {
    /// A table holding `leases` (from the store), with `reserved` addresses kept for their owners.
    pub fn new(leases: impl IntoIterator<Item = Lease>, reserved: impl IntoIterator<Item = (Ipv4Addr, Mac)>) -> Self {
        let mut t = LeaseTable {
            reserved: reserved.into_iter().collect(),
            ..LeaseTable::default()
        };
        for l in leases {
            t.by_ip.insert(l.ip, l.mac);
            t.by_mac.insert(l.mac, l);
        }
        t
    }

    /// The lease `mac` holds (possibly expired).
    pub fn lease(&self, mac: Mac) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// Every lease, sorted by address.
    pub fn leases(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.by_mac.values().cloned().collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }

    /// Leases not yet expired at `now`.
    pub fn active(&self, now: u64) -> usize {
        self.by_mac.values().filter(|l| l.expires > now).count()
    }

    /// Whether `ip` may go to `mac` at `now`: not reserved for another MAC,
    /// not declined, not leased or offered to another client.
    pub fn free_for(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        if self.reserved.get(&ip).is_some_and(|owner| *owner != mac) {
            return false;
        }
        if self.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        if let Some(owner) = self.by_ip.get(&ip).filter(|o| **o != mac)
            && self.by_mac.get(owner).is_some_and(|l| l.expires > now)
        {
            return false;
        }
        if let Some(owner) = self.offered_ip.get(&ip).filter(|o| **o != mac)
            && self.offers.get(owner).is_some_and(|(_, until)| *until > now)
        {
            return false;
        }
        true
    }

    /// The address to offer `mac`: its reservation, else its last address,
    /// else the one it asks for, else the next free one of `pool`. None when
    /// the pool is exhausted.
    pub fn pick(
        &mut self,
        mac: Mac,
        pool: &Pool,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = reserved {
            return self.free_for(ip, mac, now).then_some(ip);
        }
        if let Some((ip, until)) = self.offers.get(&mac)
            && *until > now
            && pool.contains(*ip)
        {
            return Some(*ip);
        }
        let previous = self.by_mac.get(&mac).map(|l| l.ip);
        for ip in [previous, requested].into_iter().flatten() {
            if pool.contains(ip) && self.free_for(ip, mac, now) {
                return Some(ip);
            }
        }
        self.scan(mac, pool, now)
    }

    /// The next free address of `pool` after its cursor: first one never
    /// leased, then one whose lease has expired.
    fn scan(&mut self, mac: Mac, pool: &Pool, now: u64) -> Option<Ipv4Addr> {
        let (first, last) = (u32::from(pool.first), u32::from(pool.last));
        let size = last - first + 1;
        let start = *self.cursor.get(&pool.first).unwrap_or(&0) % size;
        for reuse_expired in [false, true] {
            for i in 0..size {
                let off = (start + i) % size;
                let ip = Ipv4Addr::from(first + off);
                let unused = !self.by_ip.contains_key(&ip);
                if (unused || reuse_expired) && self.free_for(ip, mac, now) {
                    self.cursor.insert(pool.first, off + 1);
                    return Some(ip);
                }
            }
        }
        None
    }

    /// Holds `ip` for `mac` for [`OFFER_HOLD_SECS`].
    pub fn hold_offer(&mut self, mac: Mac, ip: Ipv4Addr, now: u64) {
        if let Some((old, _)) = self.offers.insert(mac, (ip, now + OFFER_HOLD_SECS))
            && old != ip
        {
            self.unhold(old, mac);
        }
        self.offered_ip.insert(ip, mac);
    }

    /// Forgets the offer made to `mac` (it chose another server).
    pub fn drop_offer(&mut self, mac: Mac) {
        if let Some((ip, _)) = self.offers.remove(&mac) {
            self.unhold(ip, mac);
        }
    }

    /// Forgets that `ip` is held for `mac`, unless another client holds it by now.
    fn unhold(&mut self, ip: Ipv4Addr, mac: Mac) {
        if self.offered_ip.get(&ip) == Some(&mac) {
            self.offered_ip.remove(&ip);
        }
    }

    /// Binds `ip` to `mac` until `expires`, taking it from an expired
    /// holder. Returns the new lease (to be stored).
    pub fn bind(&mut self, mac: Mac, ip: Ipv4Addr, expires: u64, hostname: Option<String>) -> Lease {
        self.drop_offer(mac);
        if let Some(old) = self.by_mac.get(&mac)
            && old.ip != ip
        {
            self.by_ip.remove(&old.ip);
        }
        if let Some(prev_owner) = self.by_ip.insert(ip, mac)
            && prev_owner != mac
        {
            self.by_mac.remove(&prev_owner);
        }
        let lease = Lease {
            mac,
            ip,
            expires,
            hostname,
        };
        self.by_mac.insert(mac, lease.clone());
        lease
    }

    /// Ends the lease of `mac` on `ip`; the removed lease, if it held that address.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) -> Option<Lease> {
        if self.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            self.by_ip.remove(&ip);
            return self.by_mac.remove(&mac);
        }
        None
    }

    /// Whether `ip` is leased or offered to `mac` (a DECLINE is believed only then).
    pub fn held_by(&self, ip: Ipv4Addr, mac: Mac) -> bool {
        self.by_mac.get(&mac).is_some_and(|l| l.ip == ip) || self.offers.get(&mac).is_some_and(|(o, _)| *o == ip)
    }

    /// The live lease on `ip` of a client other than `mac`, if any.
    pub fn held_by_other(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> Option<&Lease> {
        let owner = self.by_ip.get(&ip).filter(|o| **o != mac)?;
        self.by_mac.get(owner).filter(|l| l.expires > now)
    }

    /// Keeps `ip` out of the pool for [`DECLINE_HOLD_SECS`] (a client found it in use).
    pub fn decline(&mut self, ip: Ipv4Addr, now: u64) {
        self.declined.insert(ip, now + DECLINE_HOLD_SECS);
    }

    /// Drops offers and declines that have run out, so the maps stay small.
    pub fn expire(&mut self, now: u64) {
        let offered_ip = &mut self.offered_ip;
        self.offers.retain(|mac, (ip, until)| {
            let keep = *until > now;
            if !keep && offered_ip.get(ip) == Some(mac) {
                offered_ip.remove(ip);
            }
            keep
        });
        self.declined.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }
    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, n)
    }
    fn pool() -> Pool {
        Pool {
            first: ip(100),
            last: ip(102),
        }
    }

    #[test]
    fn hands_out_each_address_once_and_reports_exhaustion() {
        let mut t = LeaseTable::new([], []);
        let mut got = Vec::new();
        for n in 1..=3 {
            let a = t.pick(mac(n), &pool(), None, None, 0).unwrap();
            t.hold_offer(mac(n), a, 0);
            got.push(a);
        }
        got.sort();
        assert_eq!(got, vec![ip(100), ip(101), ip(102)]);
        assert_eq!(
            t.pick(mac(4), &pool(), None, None, 0),
            None,
            "pool of three is exhausted"
        );
        // Offers run out: the address is free again.
        assert!(t.pick(mac(4), &pool(), None, None, OFFER_HOLD_SECS + 1).is_some());
    }

    #[test]
    fn a_client_keeps_its_address_and_expired_ones_are_reused_last() {
        let mut t = LeaseTable::new([], []);
        t.bind(mac(1), ip(101), 100, None);
        assert_eq!(t.pick(mac(1), &pool(), None, None, 50), Some(ip(101)));
        assert_eq!(
            t.pick(mac(2), &pool(), None, Some(ip(101)), 50),
            Some(ip(100)),
            "101 is leased"
        );
        t.bind(mac(2), ip(100), 100, None);
        t.bind(mac(3), ip(102), 100, None);
        assert_eq!(t.pick(mac(4), &pool(), None, None, 50), None);
        // After expiry, mac 4 takes an expired address, and mac 1 loses it.
        let a = t.pick(mac(4), &pool(), None, None, 200).unwrap();
        let before = t.leases().len();
        t.bind(mac(4), a, 300, None);
        assert_eq!(t.leases().len(), before, "the expired holder's lease is replaced");
        assert_eq!(t.active(250), 1);
    }

    #[test]
    fn reservations_are_kept_for_their_owner_and_declines_respected() {
        let mut t = LeaseTable::new([], [(ip(100), mac(9))]);
        assert_eq!(t.pick(mac(1), &pool(), None, Some(ip(100)), 0), Some(ip(101)));
        assert!(!t.free_for(ip(100), mac(1), 0));
        assert!(t.free_for(ip(100), mac(9), 0));
        t.decline(ip(102), 0);
        assert!(!t.free_for(ip(102), mac(1), 0));
        assert!(t.free_for(ip(102), mac(1), DECLINE_HOLD_SECS + 1));
    }

    #[test]
    fn an_expired_offer_never_unholds_the_next_clients_offer() {
        let mut t = LeaseTable::new([], []);
        t.hold_offer(mac(1), ip(100), 0);
        // mac 1's offer runs out; mac 2 is offered the same address.
        assert_eq!(
            t.pick(mac(2), &pool(), None, Some(ip(100)), OFFER_HOLD_SECS + 1),
            Some(ip(100))
        );
        t.hold_offer(mac(2), ip(100), OFFER_HOLD_SECS + 1);
        t.expire(OFFER_HOLD_SECS + 2);
        t.drop_offer(mac(1));
        assert!(
            !t.free_for(ip(100), mac(3), OFFER_HOLD_SECS + 2),
            "mac 2 still holds it"
        );
        assert!(t.held_by(ip(100), mac(2)) && !t.held_by(ip(100), mac(1)));
    }

    #[test]
    fn a_reservation_waits_for_a_live_lease_on_its_address() {
        let mut t = LeaseTable::new([], [(ip(100), mac(9))]);
        // Leased dynamically before the reservation existed (loaded from the store).
        t.bind(mac(1), ip(100), 100, None);
        assert_eq!(t.pick(mac(9), &pool(), Some(ip(100)), None, 50), None);
        assert_eq!(t.held_by_other(ip(100), mac(9), 50).map(|l| l.mac), Some(mac(1)));
        assert_eq!(
            t.pick(mac(9), &pool(), Some(ip(100)), None, 101),
            Some(ip(100)),
            "after it expires"
        );
    }

    #[test]
    fn release_only_by_the_holder() {
        let mut t = LeaseTable::new([], []);
        t.bind(mac(1), ip(100), 100, None);
        assert_eq!(t.release(mac(2), ip(100)), None);
        assert_eq!(t.release(mac(1), ip(101)), None);
        assert!(t.release(mac(1), ip(100)).is_some());
        assert!(t.free_for(ip(100), mac(2), 0));
    }
}
