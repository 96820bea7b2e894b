//! Where a registration came from: the network address its peer connected
//! from, for the quota of registrations per address
//! ([`Limits::max_registrations_per_origin`](crate::Limits::max_registrations_per_origin)).
//!
//! Peer ids are free, so the per-peer limit alone lets one machine fill the
//! registry with fresh identities; its address is what it cannot change as
//! easily. An IPv4 address is one origin; an IPv6 address counts by its /64
//! prefix, since one host is commonly given a whole /64.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;

/// An address registrations are counted under; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin(NonZeroU64);

/// IPv4 origins live in the top of the space, `ffff:ffff::/32`, which is
/// multicast and so never the /64 of a connecting IPv6 host.
const V4_TAG: u64 = 0xffff_ffff << 32;

impl Origin {
    /// The origin of a connection from `ip`; `None` for the unspecified
    /// address, which no connection comes from. An IPv4-mapped IPv6
    /// address is its IPv4 address.
    pub fn from_ip(ip: IpAddr) -> Option<Origin> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if ip.is_unspecified() {
            return None;
        }
        let bits = match ip {
            IpAddr::V4(v4) => V4_TAG | u64::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        };
        NonZeroU64::new(bits).map(Origin)
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
            write!(f, "{}", Ipv4Addr::from(bits as u32))
        } else {
            write!(f, "{}/64", Ipv6Addr::from(u128::from(bits) << 64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(ip: &str) -> Option<Origin> {
        Origin::from_ip(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_counts_by_address_and_ipv6_by_its_64_prefix() {
        assert_ne!(origin("10.0.0.1"), origin("10.0.0.2"));
        assert_eq!(origin("2001:db8:1:2::1"), origin("2001:db8:1:2:ffff::9"));
        assert_ne!(origin("2001:db8:1:2::1"), origin("2001:db8:1:3::1"));
        assert_eq!(origin("::ffff:10.0.0.1"), origin("10.0.0.1"));
        assert_eq!((origin("0.0.0.0"), origin("::")), (None, None));
        let v6 = origin("2001:db8:1:2::1").unwrap();
        assert_eq!(v6.to_string(), "2001:db8:1:2::/64");
        assert_eq!(origin("127.0.0.1").unwrap().to_string(), "127.0.0.1");
        assert_eq!(Origin::from_bits(v6.to_bits()), Some(v6));
    }
}
