//! Fuzzes the vhost-user framing and message parser with arbitrary bytes:
//! a stream of messages, each a 12-byte header and a body of the size the
//! header claims (as the session reads them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfnic_bus::message::{parse, Header, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= HEADER_SIZE {
        let hdr: [u8; HEADER_SIZE] = rest[..HEADER_SIZE].try_into().unwrap();
        rest = &rest[HEADER_SIZE..];
        let Ok(h) = Header::parse(&hdr) else { return };
        let n = (h.size as usize).min(rest.len());
        let (body, tail) = rest.split_at(n);
        rest = tail;
        if let Ok(req) = parse(&h, body) {
            // Derived properties must not panic either.
            let _ = req.fds_expected();
            let _ = req.has_reply();
        }
    }
});
