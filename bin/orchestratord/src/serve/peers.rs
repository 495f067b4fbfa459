//! Who holds the connections: counts per peer address and in all, with connections
//! not yet authenticated counted apart, so clients without a key (one address cycling
//! `/livez` on keep-alive connections, or many) cannot hold every slot a keyed client
//! needs.
//!
//! A peer is an IPv4 address, or an IPv6 /64 (one host commonly holds a whole /64;
//! an IPv4-mapped IPv6 address is its IPv4 address). A new connection is:
//! * refused (bare 503) when its peer already holds `max_unauthenticated_per_peer`
//!   connections that have not authenticated (provisional ones included), or
//!   `max_per_peer` connections in all;
//! * **provisional** when `max_unauthenticated` unauthenticated connections are open:
//!   it serves one request and is closed unless that request authenticates, so a keyed
//!   client still gets in while unauthenticated ones fill their share;
//! * otherwise counted as unauthenticated until a request on it passes a key check
//!   ([`orch_api::conn::ConnAuth`]), then as authenticated.
//!
//! Owns: the counters (one short lock per connection open, promotion and close).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The limits this module applies (see the `[server]` settings of similar names).
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    pub max_unauthenticated: usize,
    /// 0 = no limit.
    pub max_unauthenticated_per_peer: usize,
    /// 0 = no limit.
    pub max_per_peer: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    all: usize,
    unauthenticated: usize,
}

#[derive(Debug, Default)]
struct Counts {
    peers: HashMap<IpAddr, Count>,
    unauthenticated: usize,
}

/// The accept loop's view of open connections.
#[derive(Debug, Clone)]
pub struct Peers {
    limits: PeerLimits,
    counts: Arc<Mutex<Counts>>,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PeerUnauthenticated,
    PeerTotal,
}

/// One open connection's place in the counts; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    peer: IpAddr,
    counts: Arc<Mutex<Counts>>,
    /// Counted as unauthenticated: in its peer's count always, in the total unless
    /// provisional (false once promoted).
    unauthenticated: AtomicBool,
    pub provisional: bool,
}

/// The peer a connection is counted under: an IPv4 address, or an IPv6 /64.
pub fn peer_of(ip: IpAddr) -> IpAddr {
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

impl Peers {
    pub fn new(limits: PeerLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `peer`, or why not.
    pub fn open(&self, ip: IpAddr) -> Result<Arc<Ticket>, Refused> {
        let peer = peer_of(ip);
        let l = self.limits;
        let mut c = self.lock();
        let total_unauth = c.unauthenticated;
        let p = c.peers.entry(peer).or_default();
        if l.max_per_peer > 0 && p.all >= l.max_per_peer {
            return Err(Refused::PeerTotal);
        }
        if l.max_unauthenticated_per_peer > 0 && p.unauthenticated >= l.max_unauthenticated_per_peer
        {
            return Err(Refused::PeerUnauthenticated);
        }
        let provisional = total_unauth >= l.max_unauthenticated;
        p.all += 1;
        p.unauthenticated += 1;
        if !provisional {
            c.unauthenticated += 1;
        }
        Ok(Arc::new(Ticket {
            peer,
            counts: self.counts.clone(),
            unauthenticated: AtomicBool::new(true),
            provisional,
        }))
    }

    /// Unauthenticated connections open now (all peers).
    #[cfg(test)]
    fn unauthenticated(&self) -> usize {
        self.lock().unauthenticated
    }
}

impl Ticket {
    /// A request on this connection authenticated: it no longer counts as
    /// unauthenticated.
    pub fn promote(&self) {
        if self.unauthenticated.swap(false, Ordering::AcqRel) {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if !self.provisional {
                c.unauthenticated = c.unauthenticated.saturating_sub(1);
            }
            if let Some(p) = c.peers.get_mut(&self.peer) {
                p.unauthenticated = p.unauthenticated.saturating_sub(1);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let was_unauth = self.unauthenticated.load(Ordering::Acquire);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if was_unauth && !self.provisional {
            c.unauthenticated = c.unauthenticated.saturating_sub(1);
        }
        if let Some(p) = c.peers.get_mut(&self.peer) {
            p.all = p.all.saturating_sub(1);
            if was_unauth {
                p.unauthenticated = p.unauthenticated.saturating_sub(1);
            }
            if p.all == 0 {
                c.peers.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_cannot_take_more_than_its_unauthenticated_share() {
        let peers = Peers::new(PeerLimits {
            max_unauthenticated: 100,
            max_unauthenticated_per_peer: 2,
            max_per_peer: 0,
        });
        let a = peers.open(ip(2)).unwrap();
        let _b = peers.open(ip(2)).unwrap();
        assert_eq!(peers.open(ip(2)).unwrap_err(), Refused::PeerUnauthenticated);
        // another address is not affected
        let _c = peers.open(ip(1)).unwrap();
        // an authenticated connection leaves the unauthenticated count
        a.promote();
        a.promote();
        let _d = peers.open(ip(2)).unwrap();
        assert_eq!(peers.unauthenticated(), 3);
        drop(a);
        assert_eq!(peers.unauthenticated(), 3);
    }

    #[test]
    fn past_the_total_unauthenticated_share_connections_are_provisional() {
        let peers = Peers::new(PeerLimits {
            max_unauthenticated: 1,
            max_unauthenticated_per_peer: 0,
            max_per_peer: 3,
        });
        let a = peers.open(ip(1)).unwrap();
        assert!(!a.provisional);
        let b = peers.open(ip(2)).unwrap();
        assert!(b.provisional);
        b.promote();
        assert_eq!(peers.unauthenticated(), 1);
        drop(a);
        assert_eq!(peers.unauthenticated(), 0);
        assert!(!peers.open(ip(3)).unwrap().provisional);
        // the total per address
        let _x = peers.open(ip(2)).unwrap();
        let _y = peers.open(ip(2)).unwrap();
        assert_eq!(peers.open(ip(2)).unwrap_err(), Refused::PeerTotal);
    }

    /// Provisional connections count in their peer's unauthenticated share, so one
    /// address cannot take the rest of the slots once the total share is full; and a
    /// whole IPv6 /64 is one peer.
    #[test]
    fn provisional_connections_count_per_peer_and_a_v6_64_is_one_peer() {
        let peers = Peers::new(PeerLimits {
            max_unauthenticated: 1,
            max_unauthenticated_per_peer: 2,
            max_per_peer: 0,
        });
        let _first = peers.open(ip(1)).unwrap();
        let a = peers.open(ip(2)).unwrap();
        let b = peers.open(ip(2)).unwrap();
        assert!(a.provisional && b.provisional);
        assert_eq!(peers.open(ip(2)).unwrap_err(), Refused::PeerUnauthenticated);
        b.promote();
        assert!(peers.open(ip(2)).is_ok());
        let v6 =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        let _p = peers.open(v6(1)).unwrap();
        let _q = peers.open(v6(2)).unwrap();
        assert_eq!(peers.open(v6(3)).unwrap_err(), Refused::PeerUnauthenticated);
        assert_eq!(peer_of(v6(9)), peer_of(v6(1)));
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
        assert_eq!(peer_of(mapped), ip(2));
    }
}
