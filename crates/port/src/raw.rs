//! A port whose fd reads and writes whole Ethernet frames: a TAP device or
//! an AF_PACKET socket. [`crate::tap`] and [`crate::af_packet`] open one;
//! everything after the open is the same and lives here.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::{sys, Port, PortCounters, PortKind, Rx, ETH_HLEN};

/// A frame fd (nonblocking) with its name and counters.
pub struct RawPort {
    name: String,
    ifname: String,
    kind: PortKind,
    fd: OwnedFd,
    counters: Arc<PortCounters>,
}

impl RawPort {
    pub(crate) fn new(name: &str, ifname: String, kind: PortKind, fd: OwnedFd, counters: Arc<PortCounters>) -> RawPort {
        RawPort { name: name.to_string(), ifname, kind, fd, counters }
    }
}

impl Port for RawPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        self.kind
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }

    /// Reads a frame, counting (and skipping) runts.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Rx>> {
        let c = &self.counters;
        loop {
            let Some(n) = sys::read(self.fd(), buf)? else { return Ok(None) };
            if n < ETH_HLEN {
                c.rx_dropped_runt.inc();
                continue;
            }
            c.rx_packets.inc();
            c.rx_bytes.add(n as u64);
            return Ok(Some(Rx { offset: 0, len: n, ring: None, from_side: None }));
        }
    }

    /// Writes a frame, counting the outcome.
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let c = &self.counters;
        if frame.len() < ETH_HLEN {
            c.tx_dropped_runt.inc();
            return Ok(());
        }
        match sys::write(self.fd(), frame) {
            Ok(_) => {
                c.tx_packets.inc();
                c.tx_bytes.add(frame.len() as u64);
            }
            // A full queue or a device that is down: the frame is lost, as on a wire.
            Err(_) => c.tx_dropped_error.inc(),
        }
        Ok(())
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({ "ifname": self.ifname })
    }
}
