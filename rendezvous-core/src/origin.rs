//! Where a registration came from: the network address its peer connected
//! from, for the quota of registrations per address
//! ([`Limits::max_registrations_per_origin`](crate::Limits::max_registrations_per_origin)).
//!
//! Peer ids are free, so the per-peer limit alone lets one machine fill the
//! registry with fresh identities; its address is what it cannot change as
//! easily. An IPv4 address is one origin; an IPv6 address counts by its /64
//! prefix, since one host is commonly given a whole /64.

use std::fmt;
use std::num::NonZeroU64;

/// An address registrations are counted under; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin(NonZeroU64);

/// IPv4 origins live in the top of the space, `ffff:ffff::/32`, which is
/// multicast and so never the /64 of a connecting IPv6 host.
const V4_TAG: u64 = 0xffff_ffff << 32;

impl Origin {
    /// The origin of a connection from the IPv4 address `octets`; `None`
    /// for the unspecified address, which no connection comes from.
    pub fn from_ipv4(octets: [u8; 4]) -> Option<Origin> {
        if octets == [0; 4] {
            return None;
        }
        NonZeroU64::new(V4_TAG | u64::from(u32::from_be_bytes(octets))).map(Origin)
    }

    /// The origin of a connection from the IPv6 address `octets`: its /64.
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) is its IPv4 address; the
    /// unspecified address gives `None`.
    pub fn from_ipv6(octets: [u8; 16]) -> Option<Origin> {
        let (prefix, low) = octets.split_at(12);
        if prefix == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            return Self::from_ipv4([low[0], low[1], low[2], low[3]]);
        }
        NonZeroU64::new((u128::from_be_bytes(octets) >> 64) as u64).map(Origin)
    }

    /// The stored form (see [`Origin::from_bits`]).
    pub fn to_bits(self) -> u64 {
        self.0.get()
    }

    /// An origin from its stored form; `None` for 0.
    pub fn from_bits(bits: u64) -> Option<Origin> {
        NonZeroU64::new(bits).map(Origin)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0.get();
        if bits & V4_TAG == V4_TAG {
            let [a, b, c, d] = (bits as u32).to_be_bytes();
            write!(f, "{a}.{b}.{c}.{d}")
        } else {
            let group = |i: u32| (bits >> (48 - 16 * i)) & 0xffff;
            write!(f, "{:x}:{:x}:{:x}:{:x}::/64", group(0), group(1), group(2), group(3))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(groups: [u16; 8]) -> Option<Origin> {
        let mut octets = [0u8; 16];
        for (i, g) in groups.iter().enumerate() {
            octets[2 * i..2 * i + 2].copy_from_slice(&g.to_be_bytes());
        }
        Origin::from_ipv6(octets)
    }

    #[test]
    fn ipv4_counts_by_address_and_ipv6_by_its_64_prefix() {
        assert_ne!(Origin::from_ipv4([10, 0, 0, 1]), Origin::from_ipv4([10, 0, 0, 2]));
        assert_eq!(
            v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 1]),
            v6([0x2001, 0xdb8, 1, 2, 0xffff, 0, 0, 9])
        );
        assert_ne!(v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 1]), v6([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]));
        assert_eq!(v6([0, 0, 0, 0, 0, 0xffff, 0x0a00, 1]), Origin::from_ipv4([10, 0, 0, 1]));
        assert_eq!((Origin::from_ipv4([0; 4]), Origin::from_ipv6([0; 16])), (None, None));
        let prefix = v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 1]).unwrap();
        assert_eq!(prefix.to_string(), "2001:db8:1:2::/64");
        assert_eq!(Origin::from_ipv4([127, 0, 0, 1]).unwrap().to_string(), "127.0.0.1");
        assert_eq!(Origin::from_bits(prefix.to_bits()), Some(prefix));
    }
}
