//! Fuzzes descriptor-chain walking: the input becomes a split ring (its
//! descriptor table, avail ring and indirect tables) inside a small tenant
//! memory; every chain the avail ring names is walked in both directions and
//! copied between, as the engines do. Nothing may panic, hang or touch
//! memory outside the table.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vfnic_dma::chain::Access;
use vfnic_dma::copy::{copy, Cursor};
use vfnic_dma::mem::testing::memfd;
use vfnic_dma::{Chain, GuestMemory, RegionSpec, RingAddrs, SplitRing};

const MEM: u64 = 64 * 1024;
const GPA: u64 = 0x1_0000;
const UADDR: u64 = 0x7000_0000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Ring size from the first byte: 1..=256, power of two.
    let size = 1u32 << (data[0] % 9);
    let spec = RegionSpec { guest_phys_addr: GPA, memory_size: MEM, userspace_addr: UADDR, mmap_offset: 0 };
    let mem = Arc::new(GuestMemory::map(&[spec], vec![memfd(MEM)]).unwrap());
    // The rest of the input is the region's first bytes: descriptor table at
    // 0, avail ring at 4096, used ring at 8192, buffers and indirect tables
    // anywhere.
    let body = &data[1..];
    let p = mem.translate(GPA, body.len().min(MEM as usize) as u64).unwrap();
    // Writing fuzz bytes into the mapping through the test translation.
    let n = body.len().min(MEM as usize);
    // SAFETY: `p` was translated for `body.len().min(MEM)` = n bytes inside
    // the mapping, which `mem` keeps alive; `body` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), p, n) };
    let addrs = RingAddrs { desc: UADDR, avail: UADDR + 4096, used: UADDR + 8192 };
    let Ok(mut ring) = SplitRing::new(mem.clone(), size, addrs, 0, data[0] & 0x80 != 0) else { return };
    let (mut a, mut b) = (Chain::default(), Chain::default());
    let Ok(pending) = ring.pending() else { return };
    for _ in 0..pending.min(64) {
        let Ok(head) = ring.pop_head() else { return };
        let indirect = head & 1 == 0;
        let ra = a.walk(&ring, head, Access::DeviceReads, indirect);
        let rb = b.walk(&ring, head, Access::DeviceWrites, indirect);
        if ra.is_ok() && rb.is_ok() {
            let (mut s, mut d) = (Cursor::new(&a), Cursor::new(&b));
            let mut eth = [0u8; 14];
            s.gather(&mut eth);
            let _ = copy(&mut s, &mut d, u64::MAX);
        }
        ring.push_used(head, 0);
    }
    ring.publish_used();
    let _ = ring.needs_interrupt();
});
