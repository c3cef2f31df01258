//! Balancing policies: which worker gets the next connection.

use crate::config::Policy;
use crate::error::{fail, Code, Result};

/// A worker that could take a connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Worker id.
    pub id: u32,
    /// Connections it holds (acknowledged and in flight).
    pub load: u64,
}

/// Picks a worker among candidates (sorted by id, never empty).
pub trait Balance: Send {
    /// The chosen worker's id. `peer` is the client's sockaddr bytes.
    fn pick(&mut self, candidates: &[Candidate], peer: &[u8]) -> u32;
}

/// Each connection to the next worker in id order, wrapping around.
#[derive(Default)]
pub struct RoundRobin {
    last: u32,
}

impl Balance for RoundRobin {
    fn pick(&mut self, candidates: &[Candidate], _peer: &[u8]) -> u32 {
        let next = candidates.iter().find(|c| c.id > self.last).unwrap_or(&candidates[0]);
        self.last = next.id;
        next.id
    }
}

/// The policy object for a configured policy.
pub fn for_policy(policy: Policy) -> Result<Box<dyn Balance>> {
    match policy {
        Policy::RoundRobin => Ok(Box::<RoundRobin>::default()),
        other => fail(Code::Inval, format!("policy {other:?} is not implemented yet; use ROUND_ROBIN")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ids: &[u32]) -> Vec<Candidate> {
        ids.iter().map(|&id| Candidate { id, load: 0 }).collect()
    }

    #[test]
    fn round_robin_cycles_and_survives_membership_changes() {
        let mut rr = RoundRobin::default();
        let picks: Vec<u32> = (0..6).map(|_| rr.pick(&c(&[1, 2, 3]), &[])).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(rr.pick(&c(&[1, 3]), &[]), 1);
        assert_eq!(rr.pick(&c(&[1, 3]), &[]), 3);
        assert_eq!(rr.pick(&c(&[5]), &[]), 5);
        assert_eq!(rr.pick(&c(&[2, 5]), &[]), 2);
    }
}
