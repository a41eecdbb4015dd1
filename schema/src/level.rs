//! The four administrative levels, ordered from the root down.

use std::fmt;
use std::str::FromStr;

use crate::ids::IdError;

/// An administrative level. The level of a unit is the depth of its id (city = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Municipal committee: the top of one deployment, holder of the root CA.
    City,
    /// County, county-level city or district committee.
    County,
    /// Township or town-street committee.
    Township,
    /// Village (or urban community) branch and villagers' committee.
    Village,
}

impl Level {
    /// Every level, root first.
    pub const ALL: [Level; 4] = [Level::City, Level::County, Level::Township, Level::Village];

    /// Depth in the tree: city 1 .. village 4.
    pub fn depth(self) -> usize {
        match self {
            Level::City => 1,
            Level::County => 2,
            Level::Township => 3,
            Level::Village => 4,
        }
    }

    /// The level at a depth, if any.
    pub fn from_depth(depth: usize) -> Option<Level> {
        Level::ALL.get(depth.checked_sub(1)?).copied()
    }

    /// Lower-case name, as used in configs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::City => "city",
            Level::County => "county",
            Level::Township => "township",
            Level::Village => "village",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| IdError::UnknownLevel(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_round_trips() {
        for l in Level::ALL {
            assert_eq!(Level::from_depth(l.depth()), Some(l));
            assert_eq!(l.as_str().parse::<Level>().unwrap(), l);
        }
        assert_eq!(Level::from_depth(0), None);
        assert_eq!(Level::from_depth(5), None);
    }
}
