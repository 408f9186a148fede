//! Test binaries live under cluster/.
