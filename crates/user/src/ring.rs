//! Driver side of a virtio 1.x split virtqueue living in [`GuestMemory`].
//!
//! Layout (virtio 1.x §2.7): descriptor table (16 B entries), avail ring
//! `{flags, idx, ring[num], used_event}`, used ring `{flags, idx, ring[num]{id, len},
//! avail_event}`. Indices are free-running `u16`s; a slot is `idx % num`, so `num` must
//! be a power of two.
//!
//! Memory ordering: descriptors and avail entries are written before a Release store of
//! `avail.idx`; `used.idx` is loaded with Acquire before the used elements are read; a
//! SeqCst fence separates publishing `avail.idx` from reading the device's notification
//! suppression (`used.flags` / `avail_event`), and re-enabling interrupts from
//! re-checking `used.idx`.

use std::sync::atomic::{fence, Ordering};

use crate::memory::GuestMemory;
use crate::{Error, Result};

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;
/// Avail flag: the driver does not want interrupts (ignored with EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used flag: the device does not want kicks (ignored with EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// Largest split queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One split-ring descriptor, as it sits in the descriptor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index when `DESC_F_NEXT` is set.
    pub next: u16,
}

impl Descriptor {
    /// Size of a descriptor table entry.
    pub const SIZE: u64 = 16;

    /// Encodes to the 16-byte little-endian table entry.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A descriptor written verbatim at a chosen table slot (hostile-test hook).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Table slot to write (must be `< num`).
    pub index: u16,
    /// Buffer guest physical address (any value, in range or not).
    pub addr: u64,
    /// Buffer length (any value).
    pub len: u32,
    /// Flags (any value).
    pub flags: u16,
    /// Next index (any value, loops allowed).
    pub next: u16,
}

/// A used-ring element returned by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the completed chain.
    pub id: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// `vring_need_event`: should the side that moved an index from `old` to `new` notify,
/// given the peer asked to be notified once the index passes `event`? (virtio 1.x §2.7.10)
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Where the three parts of a split ring sit (guest physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size (entries).
    pub num: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl RingLayout {
    /// Bytes of the descriptor table for `num` entries.
    pub fn desc_size(num: u16) -> u64 {
        Descriptor::SIZE * u64::from(num)
    }

    /// Bytes of the avail ring, `used_event` included.
    pub fn avail_size(num: u16) -> u64 {
        6 + 2 * u64::from(num)
    }

    /// Bytes of the used ring, `avail_event` included.
    pub fn used_size(num: u16) -> u64 {
        6 + 8 * u64::from(num)
    }

    /// Address of descriptor `i`.
    pub fn desc_addr(&self, i: u16) -> u64 {
        self.desc + Descriptor::SIZE * u64::from(i)
    }

    /// Address of `avail.flags`.
    pub fn avail_flags(&self) -> u64 {
        self.avail
    }

    /// Address of `avail.idx`.
    pub fn avail_idx(&self) -> u64 {
        self.avail + 2
    }

    /// Address of `avail.ring[i % num]`.
    pub fn avail_ring(&self, i: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(i % self.num)
    }

    /// Address of `used_event` (end of the avail ring).
    pub fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.num)
    }

    /// Address of `used.flags`.
    pub fn used_flags(&self) -> u64 {
        self.used
    }

    /// Address of `used.idx`.
    pub fn used_idx(&self) -> u64 {
        self.used + 2
    }

    /// Address of `used.ring[i % num]`.
    pub fn used_ring(&self, i: u16) -> u64 {
        self.used + 4 + 8 * u64::from(i % self.num)
    }

    /// Address of `avail_event` (end of the used ring).
    pub fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.num)
    }
}

/// Driver-side state of one split virtqueue.
#[derive(Debug)]
pub struct Vring {
    layout: RingLayout,
    event_idx: bool,
    /// Shadow of `avail.idx` including entries not yet published.
    next_avail: u16,
    /// `avail.idx` at the last kick decision.
    kicked_avail: u16,
    /// Next used element to consume.
    last_used: u16,
    free: Vec<u16>,
    /// Slots of each in-flight chain, by head.
    in_flight: Vec<Option<Vec<u16>>>,
    /// Slots reserved by raw posts whose head cannot be tracked (out of range or busy).
    leaked: Vec<u16>,
}

impl Vring {
    /// Creates the driver state for a ring at `layout`; all slots free.
    ///
    /// # Errors
    /// `InvalidOptions` unless `num` is a power of two no larger than 32768.
    pub fn new(layout: RingLayout, event_idx: bool) -> Result<Self> {
        if !layout.num.is_power_of_two() || layout.num > MAX_QUEUE_SIZE {
            return Err(Error::InvalidOptions("queue size must be a power of two <= 32768"));
        }
        Ok(Vring {
            layout,
            event_idx,
            next_avail: 0,
            kicked_avail: 0,
            last_used: 0,
            free: (0..layout.num).rev().collect(),
            in_flight: vec![None; usize::from(layout.num)],
            leaked: Vec::new(),
        })
    }

    /// Zeroes the ring memory (device starts at index 0).
    pub fn init(&self, mem: &GuestMemory) -> Result<()> {
        let n = self.layout.num;
        mem.fill(self.layout.desc, RingLayout::desc_size(n) as usize, 0)?;
        mem.fill(self.layout.avail, RingLayout::avail_size(n) as usize, 0)?;
        mem.fill(self.layout.used, RingLayout::used_size(n) as usize, 0)
    }

    /// The ring's layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// Queue size.
    pub fn num(&self) -> u16 {
        self.layout.num
    }

    /// Number of free descriptor slots.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Shadow avail index (entries pushed, published or not).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Index of the next used element to consume.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Whether the chain with head `id` is in flight.
    pub fn is_in_flight(&self, id: u16) -> bool {
        self.in_flight.get(usize::from(id)).is_some_and(|c| c.is_some())
    }

    /// Writes one descriptor at slot `i`.
    pub fn write_desc(&self, mem: &GuestMemory, i: u16, d: &Descriptor) -> Result<()> {
        mem.write(self.layout.desc_addr(i % self.layout.num), &d.encode())
    }

    /// Adds a chain of buffers (NEXT links filled in) and returns its head slot.
    /// Not visible to the device until [`Self::push_avail`] and [`Self::publish`].
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[Descriptor]) -> Result<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(Error::RingFull);
        }
        let slots: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().expect("free count checked above")).collect();
        for (k, (d, &slot)) in bufs.iter().zip(&slots).enumerate() {
            let mut d = *d;
            if let Some(&next) = slots.get(k + 1) {
                d.flags |= DESC_F_NEXT;
                d.next = next;
            } else {
                d.flags &= !DESC_F_NEXT;
                d.next = 0;
            }
            self.write_desc(mem, slot, &d)?;
        }
        let head = slots[0];
        self.in_flight[usize::from(head)] = Some(slots);
        Ok(head)
    }

    /// Writes `descs` verbatim at their slots, reserving those slots until the device
    /// returns `head` (if `head` is a valid, idle slot; otherwise they stay reserved).
    ///
    /// # Errors
    /// `SlotBusy` if a named slot is out of range or in flight.
    pub fn add_raw(&mut self, mem: &GuestMemory, descs: &[RawDesc], head: u16) -> Result<()> {
        let mut slots: Vec<u16> = descs.iter().map(|d| d.index).collect();
        slots.sort_unstable();
        slots.dedup();
        for &s in &slots {
            if !self.free.contains(&s) {
                return Err(Error::SlotBusy(s));
            }
        }
        self.free.retain(|s| !slots.contains(s));
        for d in descs {
            let desc = Descriptor { addr: d.addr, len: d.len, flags: d.flags, next: d.next };
            self.write_desc(mem, d.index, &desc)?;
        }
        let h = usize::from(head);
        if h < self.in_flight.len() && self.in_flight[h].is_none() && !slots.is_empty() {
            self.in_flight[h] = Some(slots);
        } else {
            self.leaked.extend(slots);
        }
        Ok(())
    }

    /// Puts `head` in the next avail slot (not yet published).
    pub fn push_avail(&mut self, mem: &GuestMemory, head: u16) -> Result<()> {
        mem.write_u16(self.layout.avail_ring(self.next_avail), head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes every pushed entry visible: Release store of `avail.idx`.
    pub fn publish(&self, mem: &GuestMemory) -> Result<()> {
        mem.store_u16(self.layout.avail_idx(), self.next_avail, Ordering::Release)
    }

    /// Sets the shadow avail index to `idx` and publishes it (hostile-test hook: lets a
    /// test jump `avail.idx` far ahead of the ring).
    pub fn set_avail_idx_raw(&mut self, mem: &GuestMemory, idx: u16) -> Result<()> {
        self.next_avail = idx;
        self.publish(mem)
    }

    /// Decides whether the device must be kicked for entries published since the last
    /// decision: EVENT_IDX `avail_event`, or `used.flags` NO_NOTIFY without it.
    pub fn needs_kick(&mut self, mem: &GuestMemory) -> Result<bool> {
        fence(Ordering::SeqCst);
        let old = self.kicked_avail;
        let new = self.next_avail;
        self.kicked_avail = new;
        if old == new {
            return Ok(false);
        }
        if self.event_idx {
            let event = mem.load_u16(self.layout.avail_event(), Ordering::Acquire)?;
            Ok(need_event(event, new, old))
        } else {
            let flags = mem.load_u16(self.layout.used_flags(), Ordering::Acquire)?;
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    /// Reads the device's `used.idx` (Acquire).
    pub fn used_idx(&self, mem: &GuestMemory) -> Result<u16> {
        mem.load_u16(self.layout.used_idx(), Ordering::Acquire)
    }

    /// Used elements published but not consumed.
    ///
    /// # Errors
    /// `BadUsed` if the device moved `used.idx` more than `num` past what was consumed.
    pub fn used_pending(&self, mem: &GuestMemory) -> Result<u16> {
        let n = self.used_idx(mem)?.wrapping_sub(self.last_used);
        if n > self.layout.num {
            return Err(Error::BadUsed(format!("used.idx is {n} entries ahead of a ring of {}", self.layout.num)));
        }
        Ok(n)
    }

    /// Consumes the next used element, returns its chain's slots to the free list, and
    /// (with EVENT_IDX) moves `used_event` past it.
    ///
    /// # Errors
    /// `BadUsed` if `used.idx` ran ahead of the ring or the id is not an in-flight head;
    /// the element is consumed either way.
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<UsedElem>> {
        if self.used_pending(mem)? == 0 {
            return Ok(None);
        }
        let at = self.layout.used_ring(self.last_used);
        let elem = UsedElem { id: mem.read_u32(at)?, len: mem.read_u32(at + 4)? };
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            mem.store_u16(self.layout.used_event(), self.last_used, Ordering::Release)?;
        }
        let chain = usize::try_from(elem.id).ok().and_then(|i| self.in_flight.get_mut(i)).and_then(Option::take);
        match chain {
            Some(slots) => {
                self.free.extend(slots);
                Ok(Some(elem))
            }
            None => Err(Error::BadUsed(format!("used id {} is not an in-flight head", elem.id))),
        }
    }

    /// Asks for interrupts again (`used_event = last_used`, or clears NO_INTERRUPT) and
    /// returns whether used elements arrived meanwhile (then the caller must poll instead
    /// of sleeping, or it may miss them).
    pub fn enable_interrupts(&self, mem: &GuestMemory) -> Result<bool> {
        if self.event_idx {
            mem.store_u16(self.layout.used_event(), self.last_used, Ordering::Release)?;
        } else {
            mem.store_u16(self.layout.avail_flags(), 0, Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_pending(mem)? != 0)
    }

    /// Asks the device not to interrupt (NO_INTERRUPT; a hint, ignored with EVENT_IDX,
    /// where `used_event` is simply left behind).
    pub fn disable_interrupts(&self, mem: &GuestMemory) -> Result<()> {
        if !self.event_idx {
            mem.store_u16(self.layout.avail_flags(), AVAIL_F_NO_INTERRUPT, Ordering::Release)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_spec_examples() {
        // Device asked to be told once idx passes 5; we moved 3 -> 6: notify.
        assert!(need_event(5, 6, 3));
        // Moved 3 -> 5: event 5 not yet passed.
        assert!(!need_event(5, 5, 3));
        // Exactly crossing: old 5 -> new 6 with event 5.
        assert!(need_event(5, 6, 5));
        // Wraparound: old 65534 -> new 2, event 65535.
        assert!(need_event(65535, 2, 65534));
        assert!(need_event(0, 2, 65534));
        assert!(!need_event(2, 2, 65534));
        // No movement never notifies.
        assert!(!need_event(7, 7, 7));
    }

    fn ring(num: u16, event_idx: bool) -> (GuestMemory, Vring) {
        let mem = GuestMemory::new(1 << 20, 0x4000_0000).unwrap();
        let base = mem.gpa_base();
        let layout = RingLayout { num, desc: base, avail: base + 0x1_0000, used: base + 0x2_0000 };
        let r = Vring::new(layout, event_idx).unwrap();
        r.init(&mem).unwrap();
        (mem, r)
    }

    /// Plays the device: consume all avail entries and complete each with `len`.
    fn device_complete(mem: &GuestMemory, l: &RingLayout, dev_avail: &mut u16, len: u32) {
        let avail = mem.load_u16(l.avail_idx(), Ordering::Acquire).unwrap();
        let mut used = mem.read_u16(l.used_idx()).unwrap();
        while *dev_avail != avail {
            let head = mem.read_u16(l.avail_ring(*dev_avail)).unwrap();
            mem.write_u32(l.used_ring(used), u32::from(head)).unwrap();
            mem.write_u32(l.used_ring(used) + 4, len).unwrap();
            used = used.wrapping_add(1);
            *dev_avail = dev_avail.wrapping_add(1);
        }
        mem.store_u16(l.used_idx(), used, Ordering::Release).unwrap();
    }

    #[test]
    fn rejects_bad_sizes() {
        let l = RingLayout { num: 3, desc: 0, avail: 0, used: 0 };
        assert!(Vring::new(l, false).is_err());
        assert!(Vring::new(RingLayout { num: 0, ..l }, false).is_err());
    }

    #[test]
    fn indices_wrap_around_u16() {
        let (mem, mut r) = ring(8, true);
        let l = *r.layout();
        // Start both sides just below the u16 wrap, as after a long run.
        let start = 65530u16;
        r.next_avail = start;
        r.kicked_avail = start;
        r.last_used = start;
        mem.store_u16(l.avail_idx(), start, Ordering::Release).unwrap();
        mem.store_u16(l.used_idx(), start, Ordering::Release).unwrap();
        let mut dev_avail = start;
        for round in 0..40u32 {
            let d = Descriptor { addr: mem.gpa_base() + 0x8000, len: 64, flags: 0, next: 0 };
            let h = r.add_chain(&mem, &[d, d]).unwrap();
            r.push_avail(&mem, h).unwrap();
            r.publish(&mem).unwrap();
            device_complete(&mem, &l, &mut dev_avail, round);
            let e = r.pop_used(&mem).unwrap().unwrap();
            assert_eq!(e.id, u32::from(h));
            assert_eq!(e.len, round);
            assert!(r.pop_used(&mem).unwrap().is_none());
            assert_eq!(r.free_slots(), 8);
            // EVENT_IDX: used_event follows the consumer.
            assert_eq!(mem.read_u16(l.used_event()).unwrap(), r.last_used());
        }
        assert_eq!(r.next_avail(), start.wrapping_add(40));
        assert!(r.next_avail() < start, "wrapped");
    }

    #[test]
    fn chain_links_and_ring_full() {
        let (mem, mut r) = ring(4, false);
        let d = Descriptor { addr: 1, len: 2, flags: DESC_F_WRITE, next: 99 };
        let h = r.add_chain(&mem, &[d, d, d]).unwrap();
        let l = *r.layout();
        let first = mem.read_vec(l.desc_addr(h), 16).unwrap();
        let flags = u16::from_le_bytes([first[12], first[13]]);
        assert_eq!(flags, DESC_F_WRITE | DESC_F_NEXT);
        assert!(matches!(r.add_chain(&mem, &[d, d]), Err(Error::RingFull)));
        assert_eq!(r.free_slots(), 1);
    }

    #[test]
    fn kick_rules() {
        let (mem, mut r) = ring(8, false);
        let l = *r.layout();
        let d = Descriptor::default();
        let h = r.add_chain(&mem, &[d]).unwrap();
        r.push_avail(&mem, h).unwrap();
        r.publish(&mem).unwrap();
        assert!(r.needs_kick(&mem).unwrap());
        assert!(!r.needs_kick(&mem).unwrap(), "nothing new");
        mem.write_u16(l.used_flags(), USED_F_NO_NOTIFY).unwrap();
        let h = r.add_chain(&mem, &[d]).unwrap();
        r.push_avail(&mem, h).unwrap();
        r.publish(&mem).unwrap();
        assert!(!r.needs_kick(&mem).unwrap(), "device said NO_NOTIFY");

        let (mem, mut r) = ring(8, true);
        let l = *r.layout();
        // Device wants a kick once avail passes 1 (avail_event = 1).
        mem.write_u16(l.avail_event(), 1).unwrap();
        for (i, expect) in [(0, false), (1, true), (2, false)] {
            let h = r.add_chain(&mem, &[d]).unwrap();
            r.push_avail(&mem, h).unwrap();
            r.publish(&mem).unwrap();
            assert_eq!(r.needs_kick(&mem).unwrap(), expect, "entry {i}");
        }
    }

    #[test]
    fn bad_used_elements_are_errors() {
        let (mem, mut r) = ring(4, false);
        let l = *r.layout();
        mem.write_u32(l.used_ring(0), 3).unwrap();
        mem.store_u16(l.used_idx(), 1, Ordering::Release).unwrap();
        assert!(matches!(r.pop_used(&mem), Err(Error::BadUsed(_))));
        mem.store_u16(l.used_idx(), 100, Ordering::Release).unwrap();
        assert!(matches!(r.pop_used(&mem), Err(Error::BadUsed(_))));
    }

    #[test]
    fn raw_posts_reserve_slots() {
        let (mem, mut r) = ring(4, false);
        let raw = [
            RawDesc { index: 1, addr: 0xdead_0000, len: 1, flags: DESC_F_NEXT, next: 2 },
            RawDesc { index: 2, addr: 0, len: 0, flags: DESC_F_NEXT, next: 1 },
        ];
        r.add_raw(&mem, &raw, 1).unwrap();
        assert_eq!(r.free_slots(), 2);
        assert!(r.is_in_flight(1));
        assert!(matches!(r.add_raw(&mem, &raw, 1), Err(Error::SlotBusy(1))));
        // Head out of range: slots stay reserved.
        let raw0 = [RawDesc { index: 0, ..Default::default() }];
        r.add_raw(&mem, &raw0, 999).unwrap();
        assert_eq!(r.free_slots(), 1);
    }
}
