//! A ring of hosts: where a frame goes next, and whether a link is alive.
//!
//! Pure and clock-injected: the VXLAN port owns the sockets and the time.
//!
//! Hosts `1..=N` form a ring; each has a VXLAN link to its successor
//! (`ring_next`) and optionally its predecessor (`ring_prev`). A frame that
//! leaves its origin carries a hop count ([`RingHeader::hops`], the number of
//! further forwards allowed, `N - 2` so that it reaches the `N - 1` other
//! hosts). A host that receives it delivers it locally and, unless it was for
//! a local VF, forwards it on in the direction it was travelling with one hop
//! less; a frame with hop count 0 is not forwarded. A host whose onward link
//! is down sends the frame back the other way once (the `bounced` mark, with
//! a fresh hop count); a bounced frame never bounces again, so every frame
//! dies after at most `2 (N - 1)` forwards.

/// A ring neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The successor.
    Next,
    /// The predecessor.
    Prev,
}

impl Side {
    /// The other neighbour.
    pub fn other(self) -> Side {
        match self {
            Side::Next => Side::Prev,
            Side::Prev => Side::Next,
        }
    }
}

/// Ring state carried in a vfnic-to-vfnic VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingHeader {
    /// Forwards still allowed after this host.
    pub hops: u8,
    /// The frame already turned back once at a failed link.
    pub bounced: bool,
}

/// State of the two ring links, as seen when deciding: `None` when that
/// neighbour is not configured, else whether its link is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    /// The successor's link.
    pub next: Option<bool>,
    /// The predecessor's link.
    pub prev: Option<bool>,
}

impl Links {
    /// Whether the link to `side` is configured and up.
    pub fn up(&self, side: Side) -> bool {
        match side {
            Side::Next => self.next == Some(true),
            Side::Prev => self.prev == Some(true),
        }
    }
}

/// Where a frame starts its way round the ring from its origin host:
/// `preferred` (a learned neighbour) when up, else the successor, else the
/// predecessor. `None` when no ring link is up.
pub fn origin_side(preferred: Option<Side>, links: Links) -> Option<Side> {
    let first = preferred.unwrap_or(Side::Next);
    [first, first.other()].into_iter().find(|s| links.up(*s))
}

/// What a host does with a ring frame that arrived from `from` (`None`: a
/// sender that is not a configured neighbour; taken as the predecessor) and
/// was not for one of its VFs: the side to send it on and the header to
/// send it with, or `None` to stop it here. `fresh_hops` is the hop count
/// a frame leaving its origin gets (used again when bouncing).
pub fn forward(from: Option<Side>, h: RingHeader, links: Links, fresh_hops: u8) -> Option<(Side, RingHeader)> {
    if h.hops == 0 {
        return None;
    }
    let from = from.unwrap_or(Side::Prev);
    let onward = from.other();
    if links.up(onward) {
        return Some((onward, RingHeader { hops: h.hops - 1, bounced: h.bounced }));
    }
    if !h.bounced && links.up(from) {
        return Some((from, RingHeader { hops: fresh_hops, bounced: true }));
    }
    None
}

/// Link failure detection for one neighbour: a probe every `interval_ms`;
/// the link is down once nothing was heard from the neighbour for
/// `misses` intervals (or a send to it failed), up again as soon as
/// something is heard.
#[derive(Debug, Clone)]
pub struct LinkMonitor {
    interval_ms: u64,
    misses: u32,
    last_heard_ms: u64,
    next_probe_ms: u64,
    up: bool,
    changes: u64,
}

/// A change of a link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link came (back) up.
    Up,
    /// The link went down.
    Down,
}

impl LinkMonitor {
    /// A monitor started at `now_ms`, link assumed up until proved down.
    pub fn new(now_ms: u64, interval_ms: u64, misses: u32) -> Self {
        LinkMonitor {
            interval_ms: interval_ms.max(1),
            misses: misses.max(1),
            last_heard_ms: now_ms,
            next_probe_ms: now_ms,
            up: true,
            changes: 0,
        }
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// State changes so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn set(&mut self, up: bool) -> Option<LinkEvent> {
        if self.up == up {
            return None;
        }
        self.up = up;
        self.changes += 1;
        Some(if up { LinkEvent::Up } else { LinkEvent::Down })
    }

    /// Something (a probe or a frame) arrived from the neighbour.
    pub fn heard(&mut self, now_ms: u64) -> Option<LinkEvent> {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
        self.set(true)
    }

    /// A send to the neighbour failed (e.g. the network is unreachable).
    pub fn send_failed(&mut self) -> Option<LinkEvent> {
        self.set(false)
    }

    /// Advances to `now_ms`: returns whether a probe is due now (the caller
    /// sends it) and a state change, if any.
    pub fn poll(&mut self, now_ms: u64) -> (bool, Option<LinkEvent>) {
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        let event = if silent >= self.interval_ms * u64::from(self.misses) { self.set(false) } else { None };
        let due = now_ms >= self.next_probe_ms;
        if due {
            self.next_probe_ms = now_ms + self.interval_ms;
        }
        (due, event)
    }

    /// When [`LinkMonitor::poll`] next has work.
    pub fn next_deadline(&self) -> u64 {
        let down_at = self.last_heard_ms + self.interval_ms * u64::from(self.misses);
        if self.up {
            self.next_probe_ms.min(down_at)
        } else {
            self.next_probe_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Links = Links { next: Some(true), prev: Some(true) };

    #[test]
    fn hop_count_walks_the_ring_once() {
        // 4 hosts: origin sends with hops 2; hosts 2, 3, 4 receive it.
        let mut h = RingHeader { hops: 2, bounced: false };
        let mut reached = 1;
        while let Some((side, next)) = forward(Some(Side::Prev), h, BOTH, 2) {
            assert_eq!(side, Side::Next);
            h = next;
            reached += 1;
        }
        assert_eq!(reached, 3, "hosts 2, 3 and 4 (the last one does not forward)");
        assert_eq!(forward(Some(Side::Prev), RingHeader { hops: 0, bounced: false }, BOTH, 2), None);
    }

    #[test]
    fn travelling_backwards_stays_backwards() {
        let r = forward(Some(Side::Next), RingHeader { hops: 3, bounced: false }, BOTH, 2);
        assert_eq!(r, Some((Side::Prev, RingHeader { hops: 2, bounced: false })));
    }

    #[test]
    fn bounce_once_at_a_failed_link() {
        let cut = Links { next: Some(false), prev: Some(true) };
        let r = forward(Some(Side::Prev), RingHeader { hops: 1, bounced: false }, cut, 2);
        assert_eq!(r, Some((Side::Prev, RingHeader { hops: 2, bounced: true })));
        // A bounced frame meeting another failed link dies.
        assert_eq!(forward(Some(Side::Prev), RingHeader { hops: 2, bounced: true }, cut, 2), None);
        // Only a successor configured and down: nowhere to go.
        let lone = Links { next: Some(false), prev: None };
        assert_eq!(forward(None, RingHeader { hops: 5, bounced: false }, lone, 2), None);
    }

    #[test]
    fn no_frame_circulates_forever() {
        // Any start, any link state: a frame is forwarded a bounded number of times.
        for hops in 0..=10u8 {
            for links in [
                BOTH,
                Links { next: Some(false), prev: Some(true) },
                Links { next: Some(true), prev: Some(false) },
                Links { next: Some(true), prev: None },
            ] {
                let mut h = RingHeader { hops, bounced: false };
                let mut from = Some(Side::Prev);
                let mut n = 0;
                while let Some((side, next)) = forward(from, h, links, 10) {
                    // The next host receives it from the opposite side.
                    from = Some(side.other());
                    h = next;
                    n += 1;
                    assert!(n <= 2 * 11, "looping");
                }
            }
        }
    }

    #[test]
    fn origin_prefers_learned_then_next() {
        assert_eq!(origin_side(None, BOTH), Some(Side::Next));
        assert_eq!(origin_side(Some(Side::Prev), BOTH), Some(Side::Prev));
        let cut = Links { next: Some(false), prev: Some(true) };
        assert_eq!(origin_side(None, cut), Some(Side::Prev));
        assert_eq!(origin_side(None, Links { next: Some(false), prev: None }), None);
    }

    #[test]
    fn monitor_marks_down_after_misses_and_up_when_heard() {
        let mut m = LinkMonitor::new(1_000, 100, 3);
        assert_eq!(m.poll(1_000), (true, None), "first probe at once");
        assert_eq!(m.poll(1_050), (false, None));
        assert_eq!(m.poll(1_100), (true, None));
        assert_eq!(m.heard(1_150), None);
        assert_eq!(m.poll(1_400), (true, None), "250 ms silent < 300");
        assert_eq!(m.poll(1_450), (false, Some(LinkEvent::Down)), "300 ms silent");
        assert!(!m.is_up());
        assert_eq!(m.poll(1_460), (false, None), "no repeated event");
        assert_eq!(m.heard(1_500), Some(LinkEvent::Up));
        assert_eq!(m.send_failed(), Some(LinkEvent::Down));
        assert_eq!(m.changes(), 3);
        assert_eq!(m.heard(1_510), Some(LinkEvent::Up));
        assert!(m.next_deadline() <= 1_810);
    }
}
