//! Fuzzes packed-ring chain walking: the input becomes a packed ring (its
//! descriptor ring, event suppression areas and indirect tables) inside a
//! small tenant memory, resumed at an input-chosen position and wrap
//! counter. Every available chain is taken in both directions (taken,
//! given back with `unpop`, taken again), copied between, and returned in
//! the used ring, as the engines do. Nothing may panic, hang or touch
//! memory outside the table, and the ring's positions must stay coherent.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfnic_dma::chain::Access;
use vfnic_dma::copy::{copy, Cursor};
use vfnic_dma::mem::testing::memfd;
use vfnic_dma::packed::WRAP_BIT;
use vfnic_dma::{Chain, GuestMemory, PackedRing, RegionSpec, RingAddrs};

const MEM: u64 = 64 * 1024;
const GPA: u64 = 0x1_0000;
const UADDR: u64 = 0x7000_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Ring size 1..=256, any value; resume position and wrap counter.
    let size = 1 + data[0] as u32;
    let idx = data[1] as u32 % size;
    let wrap = data[2] & 1 != 0;
    let event_idx = data[2] & 2 != 0;
    let indirect = data[2] & 4 != 0;
    let base = idx as u16 | if wrap { WRAP_BIT } else { 0 };
    let spec = RegionSpec { guest_phys_addr: GPA, memory_size: MEM, userspace_addr: UADDR, mmap_offset: 0 };
    let mem = Arc::new(GuestMemory::map(&[spec], vec![memfd(MEM)]).unwrap());
    // The rest of the input is the region's first bytes: descriptor ring at
    // 0, driver event suppression at 4096, device event suppression at
    // 4100, buffers and indirect tables anywhere.
    let body = &data[3..];
    let n = body.len().min(MEM as usize);
    let p = mem.translate(GPA, n as u64).unwrap();
    // SAFETY: `p` was translated for n bytes inside the mapping, which
    // `mem` keeps alive; `body` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), p, n) };
    let addrs = RingAddrs { desc: UADDR, avail: UADDR + 4096, used: UADDR + 4100 };
    let mut ring = PackedRing::new(mem.clone(), size, addrs, base, event_idx).unwrap();
    assert_eq!(ring.next_avail_state(), base);
    let (mut a, mut b) = (Chain::default(), Chain::default());
    // Every chain takes at least one descriptor, and what was taken is not
    // available again: at most `size` chains.
    for round in 0..size {
        let avail = ring.pending().unwrap();
        let Ok(ta) = ring.pop_chain(&mut a, Access::DeviceReads, indirect) else { break };
        assert_eq!(ta.is_some(), avail == 1);
        let Some(ta) = ta else { break };
        // Each chain was returned before the next: all of the ring is room.
        assert!(ta.ndesc >= 1 && ta.ndesc as u32 <= size, "{ta:?}");
        assert_eq!(a.token(), ta);
        ring.unpop(1);
        let tb = ring.pop_chain(&mut b, Access::DeviceWrites, indirect);
        match tb {
            Ok(Some(tb)) => {
                // Same descriptors, the other direction: only possible when
                // the chain has no buffers (or only empty ones).
                assert_eq!(tb, ta);
                ring.unpop(1);
            }
            Ok(None) => panic!("the chain vanished"),
            Err(_) => {}
        }
        let ta = ring.pop_chain(&mut a, Access::DeviceReads, indirect).unwrap().unwrap();
        let (mut s, mut d) = (Cursor::new(&a), Cursor::new(&b));
        let mut eth = [0u8; 14];
        s.gather(&mut eth);
        let copied = if tb.is_ok() { copy(&mut s, &mut d, u64::MAX) } else { 0 };
        ring.push_used(ta, copied as u32);
        if round % 3 == 0 {
            ring.publish_used();
            let _ = ring.needs_interrupt();
            ring.set_notification(round % 2 == 0);
        }
    }
    ring.publish_used();
    let _ = ring.needs_interrupt();
    assert_eq!(ring.next_used_state(), ring.next_avail_state());
    assert!((ring.next_avail_state() & !WRAP_BIT) < size as u16);
});
