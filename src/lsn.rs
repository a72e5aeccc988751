//! The one log sequence number type used everywhere in the crate.
//!
//! PostgreSQL writes LSNs as `X/Y` (two hexadecimal halves of a 64-bit
//! WAL position). Journal rows, slot positions, CLI arguments and logs all
//! speak in this form, so parsing and printing live in exactly one place.

use std::fmt;
use std::str::FromStr;

/// A WAL position. The field is private: construct with [`Lsn::from_u64`] or
/// parse from `X/Y` text.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(u64);

impl Lsn {
    /// The zero position, which PostgreSQL prints as `0/0`.
    pub const ZERO: Lsn = Lsn(0);

    pub const fn from_u64(v: u64) -> Self {
        Lsn(v)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// The text was not an LSN of the form `X/Y`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid LSN {0:?}: expected the form X/Y with hexadecimal halves, e.g. 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let valid = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(l: pgwire_replication::Lsn) -> Self {
        Lsn(l.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(l: Lsn) -> Self {
        pgwire_replication::Lsn::from_u64(l.0)
    }
}

impl From<postgres_types::PgLsn> for Lsn {
    fn from(l: postgres_types::PgLsn) -> Self {
        Lsn(u64::from(l))
    }
}

impl From<Lsn> for postgres_types::PgLsn {
    fn from(l: Lsn) -> Self {
        postgres_types::PgLsn::from(l.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for v in [0u64, 1, 0x16B3748, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            let l = Lsn::from_u64(v);
            assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }
        assert_eq!(Lsn::from_u64(0x1_0000_00AB).to_string(), "1/AB");
    }

    #[test]
    fn malformed_lsn_text_is_rejected_with_the_expected_form() {
        for bad in ["", "0", "/", "0/", "x/1", "1/2/3", "123456789/0", "-1/0"] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert!(e.to_string().contains("X/Y"), "{e}");
        }
    }
}
