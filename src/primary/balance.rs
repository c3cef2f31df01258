//! Balancing policies: which worker gets the next connection the primary accepted.
//!
//! SHARED and REUSEPORT have no policy object: there the workers accept by themselves and the
//! kernel balances.

use crate::config::Policy;

/// A worker that takes connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Worker id.
    pub id: u32,
    /// Its slot (0..): a respawned worker takes the slot of the one it replaces.
    pub slot: u32,
    /// Connections it holds now (handed and not reported done).
    pub load: u64,
    /// Free places in its ACK window; 0 means it cannot take one right now.
    pub free: u32,
    /// Connections the policy has handed it (ROUND_ROBIN's count).
    pub handed: u64,
}

/// Picks a worker for one connection.
pub trait Balance: Send {
    /// The chosen worker's id, or None when the connection should wait (its worker is busy).
    /// `candidates` is sorted by id and never empty; `peer` is the client's sockaddr bytes;
    /// `slots` is the number of worker slots.
    fn pick(&mut self, candidates: &[Candidate], peer: &[u8], slots: u32) -> Option<u32>;

    /// Whether the connections of one turn may go to the picked worker in groups (see
    /// `accept::group_size`): not when the client decides the worker (STICKY).
    fn groups(&self) -> bool {
        true
    }
}

/// Even counts, in id order: the next connection (or group of them, see
/// `accept::group_size`) goes to the worker with room that has been handed the fewest
/// (`Candidate::handed`), ties to the next id after the last one picked. With single
/// connections that is plain round-robin (1, 2, 3, 1, 2, 3...); with groups of varying sizes,
/// counting keeps every worker's total within one group of the others' over a run, where
/// rotating over groups would not. (The counts are the primary's: see `accept::pump` for how
/// a worker that joins, or had no room, starts from the others' count instead of catching up.)
#[derive(Default)]
pub struct RoundRobin {
    last: u32,
}

impl Balance for RoundRobin {
    fn pick(&mut self, candidates: &[Candidate], _peer: &[u8], _slots: u32) -> Option<u32> {
        let floor = candidates.iter().filter(|c| c.free > 0).map(|c| c.handed).min()?;
        let tied = || candidates.iter().filter(|c| c.free > 0 && c.handed == floor);
        let next = tied().find(|c| c.id > self.last).or_else(|| tied().next())?.id;
        self.last = next;
        Some(next)
    }
}

/// The worker holding the fewest connections (ties: round-robin among them, so equal loads
/// still spread).
#[derive(Default)]
pub struct LeastConnections {
    last: u32,
}

impl Balance for LeastConnections {
    fn pick(&mut self, candidates: &[Candidate], _peer: &[u8], _slots: u32) -> Option<u32> {
        let min = candidates.iter().filter(|c| c.free > 0).map(|c| c.load).min()?;
        let tied = || candidates.iter().filter(|c| c.free > 0 && c.load == min);
        let next = tied().find(|c| c.id > self.last).or_else(|| tied().next())?;
        self.last = next.id;
        Some(next.id)
    }
}

/// The same client address to the same worker slot for as long as that slot lives (a
/// respawned worker inherits it). A busy slot makes the connection wait rather than move;
/// a slot with no worker sends its clients, consistently, to the others.
#[derive(Default)]
pub struct Sticky;

impl Balance for Sticky {
    fn groups(&self) -> bool {
        false
    }

    fn pick(&mut self, candidates: &[Candidate], peer: &[u8], slots: u32) -> Option<u32> {
        let h = hash_ip(peer);
        let slot = (h % u64::from(slots.max(1))) as u32;
        if let Some(c) = candidates.iter().find(|c| c.slot == slot) {
            return (c.free > 0).then_some(c.id);
        }
        let c = candidates[(h as usize / slots.max(1) as usize) % candidates.len()];
        (c.free > 0).then_some(c.id)
    }
}

/// FNV-1a over the IP address of a sockaddr (not the port: one client, many connections).
pub fn hash_ip(peer: &[u8]) -> u64 {
    let family = if peer.len() >= 2 { u16::from_ne_bytes([peer[0], peer[1]]) as i32 } else { -1 };
    let ip = match family {
        libc::AF_INET if peer.len() >= 8 => &peer[4..8],
        libc::AF_INET6 if peer.len() >= 24 => &peer[8..24],
        _ => &[][..],
    };
    ip.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The policy object for a policy the primary balances itself (None: workers accept).
pub fn for_policy(policy: Policy) -> Option<Box<dyn Balance>> {
    match policy {
        Policy::RoundRobin => Some(Box::<RoundRobin>::default()),
        Policy::LeastConnections => Some(Box::<LeastConnections>::default()),
        Policy::Sticky => Some(Box::new(Sticky)),
        Policy::Shared | Policy::ReusePort => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ids: &[u32]) -> Vec<Candidate> {
        ids.iter().map(|&id| Candidate { id, slot: id - 1, load: 0, free: 8, handed: 0 }).collect()
    }

    fn v4(a: u8, port: u16) -> Vec<u8> {
        let mut sa = vec![0u8; 16];
        sa[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        sa[2..4].copy_from_slice(&port.to_be_bytes());
        sa[4..8].copy_from_slice(&[127, 0, 0, a]);
        sa
    }

    /// Picks as the pump does: the picked one is handed one more.
    fn rr_pick(rr: &mut RoundRobin, cands: &mut [Candidate]) -> Option<u32> {
        let id = rr.pick(cands, &[], cands.len() as u32)?;
        cands.iter_mut().find(|c| c.id == id).unwrap().handed += 1;
        Some(id)
    }

    #[test]
    fn round_robin_cycles_skips_full_windows_and_survives_membership_changes() {
        let mut rr = RoundRobin::default();
        let mut three = c(&[1, 2, 3]);
        let picks: Vec<u32> = (0..6).map(|_| rr_pick(&mut rr, &mut three).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        three[1].free = 0;
        assert_eq!(rr_pick(&mut rr, &mut three), Some(1));
        assert_eq!(rr_pick(&mut rr, &mut three), Some(3));
        assert_eq!(rr_pick(&mut rr, &mut c(&[5])), Some(5));
        three.iter_mut().for_each(|c| c.free = 0);
        assert_eq!(rr.pick(&three, &[], 3), None);
    }

    #[test]
    fn round_robin_keeps_counts_even_when_groups_differ_in_size() {
        let mut rr = RoundRobin::default();
        let mut cands = c(&[1, 2, 3, 4]);
        // Groups of 1 to 5 connections: each pick takes a group.
        for i in 0..1000u64 {
            let id = rr.pick(&cands, &[], 4).unwrap();
            cands.iter_mut().find(|c| c.id == id).unwrap().handed += 1 + i * 7 % 5;
        }
        let (min, max) = (cands.iter().map(|c| c.handed).min().unwrap(), cands.iter().map(|c| c.handed).max().unwrap());
        assert!(max - min <= 5, "counts {cands:?}");
    }

    #[test]
    fn least_connections_prefers_the_idle_worker() {
        let mut lc = LeastConnections::default();
        let mut cands = c(&[1, 2, 3]);
        cands[0].load = 10;
        cands[1].load = 10;
        cands[2].load = 2;
        assert_eq!(lc.pick(&cands, &[], 3), Some(3));
        cands[2].load = 10;
        let spread: Vec<u32> = (0..3).map(|_| lc.pick(&cands, &[], 3).unwrap()).collect();
        assert_eq!(spread, [1, 2, 3], "ties rotate");
    }

    #[test]
    fn sticky_keeps_an_address_on_its_slot_whatever_the_port() {
        let mut s = Sticky;
        let cands = c(&[1, 2, 3, 4]);
        for a in 1..50 {
            let first = s.pick(&cands, &v4(a, 1000), 4).unwrap();
            for port in 1001..1010 {
                assert_eq!(s.pick(&cands, &v4(a, port), 4), Some(first));
            }
        }
        // A busy slot waits instead of moving its client.
        let w = s.pick(&cands, &v4(7, 1), 4).unwrap();
        let mut busy = cands.clone();
        busy.iter_mut().find(|c| c.id == w).unwrap().free = 0;
        assert_eq!(s.pick(&busy, &v4(7, 2), 4), None);
        // A missing slot moves its clients consistently.
        let gone: Vec<Candidate> = cands.iter().copied().filter(|c| c.id != w).collect();
        let moved = s.pick(&gone, &v4(7, 3), 4).unwrap();
        assert_ne!(moved, w);
        assert_eq!(s.pick(&gone, &v4(7, 4), 4), Some(moved));
    }
}
