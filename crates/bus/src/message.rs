//! vhost-user message framing and parsing. Pure: bytes in, typed request
//! out; every length and value is checked here or in the session.

use thiserror::Error;
use vfnic_dma::RegionSpec;

pub use vfnic_types::vhost_user::{flags, protocol_features, request, HEADER_SIZE, MAX_PAYLOAD, VRING_NOFD_MASK};

/// Most fds one message may carry.
pub const MAX_FDS: usize = 8;

/// The protocol features every VF offers.
pub const OFFERED_PROTOCOL_FEATURES: u64 = {
    use protocol_features::*;
    MQ | REPLY_ACK | NET_MTU | BACKEND_REQ | CONFIG | RESET_DEVICE | STATUS
};

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Request code.
    pub request: u32,
    /// Flags (version, reply, need-reply).
    pub flags: u32,
    /// Body size.
    pub size: u32,
}

impl Header {
    /// Parses and checks a header: version 1, no reply flag, body size
    /// within [`MAX_PAYLOAD`]. A bad header means the stream cannot be trusted.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Header, ParseError> {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header { request: word(0), flags: word(4), size: word(8) };
        if h.flags & flags::VERSION_MASK != flags::VERSION || h.flags & flags::REPLY != 0 {
            return Err(ParseError::Flags(h.flags));
        }
        if h.size as usize > MAX_PAYLOAD {
            return Err(ParseError::TooLarge(h.size));
        }
        Ok(h)
    }

    /// The front end asked for an ack.
    pub fn need_reply(&self) -> bool {
        self.flags & flags::NEED_REPLY != 0
    }

    /// Encodes a reply header for `request` with `size` bytes of body.
    pub fn reply(request: u32, size: usize) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..4].copy_from_slice(&request.to_le_bytes());
        out[4..8].copy_from_slice(&(flags::VERSION | flags::REPLY).to_le_bytes());
        out[8..].copy_from_slice(&(size as u32).to_le_bytes());
        out
    }
}

/// Config space access (`GET_CONFIG`/`SET_CONFIG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAccess {
    /// Offset into the device config space.
    pub offset: u32,
    /// Bytes accessed.
    pub size: u32,
    /// Flags (writable/migration).
    pub flags: u32,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    ResetOwner,
    SetMemTable(Vec<RegionSpec>),
    SetLogBase,
    SetLogFd,
    SetVringNum { index: u32, num: u32 },
    SetVringAddr { index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64 },
    SetVringBase { index: u32, num: u32 },
    GetVringBase { index: u32 },
    SetVringKick { index: u32, has_fd: bool },
    SetVringCall { index: u32, has_fd: bool },
    SetVringErr { index: u32, has_fd: bool },
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    SetVringEnable { index: u32, enable: bool },
    SendRarp([u8; 6]),
    NetSetMtu(u64),
    SetBackendReqFd,
    IotlbMsg,
    SetVringEndian,
    GetConfig(ConfigAccess),
    SetConfig(ConfigAccess, Vec<u8>),
    ResetDevice,
    GetMaxMemSlots,
    SetStatus(u64),
    GetStatus,
}

impl Request {
    /// Number of fds this request must carry.
    pub fn fds_expected(&self) -> usize {
        match self {
            Request::SetMemTable(r) => r.len(),
            Request::SetVringKick { has_fd, .. }
            | Request::SetVringCall { has_fd, .. }
            | Request::SetVringErr { has_fd, .. } => usize::from(*has_fd),
            Request::SetLogFd | Request::SetBackendReqFd => 1,
            _ => 0,
        }
    }

    /// True for requests that always get a reply with a body (GET_*).
    pub fn has_reply(&self) -> bool {
        matches!(
            self,
            Request::GetFeatures
                | Request::GetProtocolFeatures
                | Request::GetQueueNum
                | Request::GetVringBase { .. }
                | Request::GetConfig(..)
                | Request::GetMaxMemSlots
                | Request::GetStatus
        )
    }
}

/// A message that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Wrong version or a reply flag on a request.
    #[error("Bad header flags {0:#x}")]
    Flags(u32),
    /// Body larger than [`MAX_PAYLOAD`].
    #[error("Body of {0} bytes is too large")]
    TooLarge(u32),
    /// An unknown request code.
    #[error("Unknown request {0}")]
    Unknown(u32),
    /// The body size does not fit the request.
    #[error("Request {request} with a {got}-byte body")]
    Size {
        /// Request code.
        request: u32,
        /// Body size received.
        got: usize,
    },
    /// A field out of range (region count, config size).
    #[error("Request {0} has an out-of-range field")]
    Value(u32),
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8-byte slice"))
}

/// Parses the body of a request whose header passed [`Header::parse`].
pub fn parse(h: &Header, body: &[u8]) -> Result<Request, ParseError> {
    use request::*;
    let size_is =
        |n: usize| if body.len() == n { Ok(()) } else { Err(ParseError::Size { request: h.request, got: body.len() }) };
    let size_min =
        |n: usize| if body.len() >= n { Ok(()) } else { Err(ParseError::Size { request: h.request, got: body.len() }) };
    // Some front ends send an 8-byte zero body with no-payload requests.
    let empty = || {
        if body.is_empty() || body.len() == 8 {
            Ok(())
        } else {
            Err(ParseError::Size { request: h.request, got: body.len() })
        }
    };
    let r = match h.request {
        GET_FEATURES => empty().map(|_| Request::GetFeatures)?,
        SET_FEATURES => size_is(8).map(|_| Request::SetFeatures(u64_at(body, 0)))?,
        SET_OWNER => empty().map(|_| Request::SetOwner)?,
        RESET_OWNER => empty().map(|_| Request::ResetOwner)?,
        SET_MEM_TABLE => {
            size_min(8)?;
            let n = u32_at(body, 0) as usize;
            if n == 0 || n > MAX_FDS {
                return Err(ParseError::Value(h.request));
            }
            size_is(8 + 32 * n)?;
            let regions = (0..n)
                .map(|i| {
                    let o = 8 + 32 * i;
                    RegionSpec {
                        guest_phys_addr: u64_at(body, o),
                        memory_size: u64_at(body, o + 8),
                        userspace_addr: u64_at(body, o + 16),
                        mmap_offset: u64_at(body, o + 24),
                    }
                })
                .collect();
            Request::SetMemTable(regions)
        }
        SET_LOG_BASE => Request::SetLogBase,
        SET_LOG_FD => empty().map(|_| Request::SetLogFd)?,
        SET_VRING_NUM | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
            size_is(8)?;
            let (index, num) = (u32_at(body, 0), u32_at(body, 4));
            match h.request {
                SET_VRING_NUM => Request::SetVringNum { index, num },
                SET_VRING_BASE => Request::SetVringBase { index, num },
                GET_VRING_BASE => Request::GetVringBase { index },
                _ => Request::SetVringEnable { index, enable: num != 0 },
            }
        }
        SET_VRING_ADDR => {
            size_is(40)?;
            Request::SetVringAddr {
                index: u32_at(body, 0),
                flags: u32_at(body, 4),
                desc: u64_at(body, 8),
                used: u64_at(body, 16),
                avail: u64_at(body, 24),
                log: u64_at(body, 32),
            }
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            size_is(8)?;
            let v = u64_at(body, 0);
            if v & !(0xff | VRING_NOFD_MASK) != 0 {
                return Err(ParseError::Value(h.request));
            }
            let (index, has_fd) = ((v & 0xff) as u32, v & VRING_NOFD_MASK == 0);
            match h.request {
                SET_VRING_KICK => Request::SetVringKick { index, has_fd },
                SET_VRING_CALL => Request::SetVringCall { index, has_fd },
                _ => Request::SetVringErr { index, has_fd },
            }
        }
        GET_PROTOCOL_FEATURES => empty().map(|_| Request::GetProtocolFeatures)?,
        SET_PROTOCOL_FEATURES => size_is(8).map(|_| Request::SetProtocolFeatures(u64_at(body, 0)))?,
        GET_QUEUE_NUM => empty().map(|_| Request::GetQueueNum)?,
        SEND_RARP => {
            size_is(8)?;
            Request::SendRarp(body[..6].try_into().expect("6-byte slice"))
        }
        NET_SET_MTU => size_is(8).map(|_| Request::NetSetMtu(u64_at(body, 0)))?,
        SET_BACKEND_REQ_FD => empty().map(|_| Request::SetBackendReqFd)?,
        IOTLB_MSG => Request::IotlbMsg,
        SET_VRING_ENDIAN => Request::SetVringEndian,
        GET_CONFIG | SET_CONFIG => {
            size_min(12)?;
            let a = ConfigAccess { offset: u32_at(body, 0), size: u32_at(body, 4), flags: u32_at(body, 8) };
            if a.size > 256 || a.offset > 256 || body.len() != 12 + a.size as usize {
                return Err(ParseError::Value(h.request));
            }
            if h.request == GET_CONFIG {
                Request::GetConfig(a)
            } else {
                let data = body[12..].to_vec();
                Request::SetConfig(a, data)
            }
        }
        RESET_DEVICE => empty().map(|_| Request::ResetDevice)?,
        GET_MAX_MEM_SLOTS => empty().map(|_| Request::GetMaxMemSlots)?,
        SET_STATUS => size_is(8).map(|_| Request::SetStatus(u64_at(body, 0)))?,
        GET_STATUS => empty().map(|_| Request::GetStatus)?,
        other => return Err(ParseError::Unknown(other)),
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(request: u32, size: usize) -> Header {
        Header { request, flags: flags::VERSION, size: size as u32 }
    }

    #[test]
    fn header_checks() {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = 1;
        b[4] = 1;
        assert!(Header::parse(&b).is_ok());
        b[4] = 2;
        assert_eq!(Header::parse(&b), Err(ParseError::Flags(2)));
        b[4] = 1 | flags::REPLY as u8;
        assert!(Header::parse(&b).is_err());
        b[4] = 1;
        b[8..].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(ParseError::TooLarge(_))));
    }

    #[test]
    fn parses_mem_table() {
        let mut body = vec![0u8; 8 + 32];
        body[0] = 1;
        body[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        body[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
        let r = parse(&hdr(request::SET_MEM_TABLE, body.len()), &body).unwrap();
        let Request::SetMemTable(regions) = &r else { panic!() };
        assert_eq!(regions[0].guest_phys_addr, 0x1000);
        assert_eq!(regions[0].memory_size, 0x2000);
        assert_eq!(r.fds_expected(), 1);
        // Region count lies about the body.
        body[0] = 2;
        assert!(parse(&hdr(request::SET_MEM_TABLE, body.len()), &body).is_err());
        body[0] = 9;
        assert_eq!(parse(&hdr(request::SET_MEM_TABLE, body.len()), &body), Err(ParseError::Value(5)));
    }

    #[test]
    fn kick_nofd_and_garbage_bits() {
        let b = (3u64 | VRING_NOFD_MASK).to_le_bytes();
        assert_eq!(parse(&hdr(request::SET_VRING_KICK, 8), &b), Ok(Request::SetVringKick { index: 3, has_fd: false }));
        let b = (1u64 << 40).to_le_bytes();
        assert!(parse(&hdr(request::SET_VRING_CALL, 8), &b).is_err());
    }

    #[test]
    fn unknown_and_short_bodies() {
        assert_eq!(parse(&hdr(999, 0), &[]), Err(ParseError::Unknown(999)));
        assert!(parse(&hdr(request::SET_FEATURES, 4), &[0; 4]).is_err());
        assert!(parse(&hdr(request::SET_VRING_ADDR, 39), &[0; 39]).is_err());
        assert!(parse(&hdr(request::GET_CONFIG, 12), &[0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(request in 0u32..50, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse(&hdr(request, body.len()), &body);
        }
    }
}
