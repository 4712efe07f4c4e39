//! The engine's reusable chains, one set per tenant memory it serves
//! lately.
//!
//! A [`Chain`] keeps the memory table its buffers lie in alive (an `Arc`),
//! and taking a chain from another table swaps that `Arc`: two atomic
//! read-modify-writes, each a full memory barrier on x86. With one set of
//! chains for every queue, an engine serving two VFs swapped it for every
//! chain of every burst (a TX set that alternates between senders, an RX
//! set that alternates between receivers): four per frame. With a set per
//! memory table, a chain mostly finds its table already there. (Measured,
//! 64 B: 680 -> 664 instructions per frame, engine cycles 0.91-0.95x; at one
//! frame per burst the sets are switched every burst, 1954 -> 2029.)

use std::sync::Arc;

use vfnic_dma::{Chain, GuestMemory};

/// Most sets kept besides the one in use: an engine serving more tenants
/// than this reuses the sets in turn (and their chains swap tables).
const SPARES: usize = 3;

/// Chains for one burst at a time, picked by the memory table the burst's
/// ring uses ([`ChainSets::select`]).
pub struct ChainSets {
    /// The set in use.
    pub active: Vec<Chain>,
    /// The memory table the active set was last picked for (its address;
    /// 0 for none).
    key: usize,
    /// The others, with the table each was last picked for (0 and no
    /// chains: not made yet).
    spares: [(usize, Vec<Chain>); SPARES],
    /// The spare reused next when a table has none.
    victim: usize,
    /// Chains per set.
    len: usize,
}

impl ChainSets {
    /// One set of `len` chains; more are made as other tables come.
    pub fn new(len: usize) -> ChainSets {
        ChainSets { active: fresh(len), key: 0, spares: Default::default(), victim: 0, len }
    }

    /// Makes the set last picked for `mem` the active one (a new set, or a
    /// spare in turn, if none was).
    #[inline]
    pub fn select(&mut self, mem: &Arc<GuestMemory>) {
        let key = Arc::as_ptr(mem) as usize;
        if key != self.key {
            self.switch(key);
        }
    }

    #[inline]
    fn switch(&mut self, key: usize) {
        let i = match self.spares.iter().position(|s| s.0 == key) {
            Some(i) => i,
            None => {
                let i = self.victim;
                self.victim = (i + 1) % SPARES;
                let spare = &mut self.spares[i];
                spare.0 = key;
                if spare.1.is_empty() {
                    spare.1 = fresh(self.len);
                }
                i
            }
        };
        let spare = &mut self.spares[i];
        std::mem::swap(&mut self.active, &mut spare.1);
        std::mem::swap(&mut self.key, &mut spare.0);
    }

    /// Lets go of every memory table the chains refer to.
    pub fn release(&mut self) {
        self.active.iter_mut().for_each(Chain::release);
        for (key, set) in &mut self.spares {
            set.iter_mut().for_each(Chain::release);
            *key = 0;
        }
        self.key = 0;
    }
}

fn fresh(len: usize) -> Vec<Chain> {
    (0..len).map(|_| Chain::default()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfnic_dma::mem::testing::memfd;

    /// Keys of the sets, active first.
    fn keys(c: &ChainSets) -> Vec<usize> {
        std::iter::once(c.key).chain(c.spares.iter().map(|s| s.0).filter(|&k| k != 0)).collect()
    }

    #[test]
    fn a_set_per_table_and_spares_reused_in_turn() {
        let mut c = ChainSets::new(4);
        let spec = vfnic_dma::RegionSpec { guest_phys_addr: 0, memory_size: 4096, userspace_addr: 0, mmap_offset: 0 };
        let table = || Arc::new(GuestMemory::map(&[spec], vec![memfd(4096)]).expect("a one-page table"));
        let mems: Vec<Arc<GuestMemory>> = (0..6).map(|_| table()).collect();
        let key = |i: usize| Arc::as_ptr(&mems[i]) as usize;
        c.select(&mems[0]);
        assert_eq!(keys(&c), [key(0)]);
        // The sets of two tables served in turn are swapped, not made again.
        let set0 = c.active.as_ptr();
        c.select(&mems[1]);
        c.select(&mems[0]);
        assert_eq!(c.active.as_ptr(), set0, "table 0's set came back");
        assert_eq!(keys(&c), [key(0), key(1)]);
        for m in &mems[2..4] {
            c.select(m);
        }
        assert_eq!(keys(&c).len(), 4, "at most SPARES spares");
        // A fifth table reuses the spares in turn.
        c.select(&mems[4]);
        c.select(&mems[5]);
        let k = keys(&c);
        assert_eq!(k.len(), 4);
        assert_eq!(k[0], key(5));
        assert!(k.contains(&key(4)) && k.contains(&key(3)));
        assert!(c.active.len() == 4 && c.spares.iter().all(|s| s.1.len() == 4));
        c.release();
        assert_eq!(keys(&c), [0]);
    }
}
