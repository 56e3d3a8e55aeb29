//! 128-bit checksums for messages and log entries.
//!
//! XXH3-128 is a fast non-cryptographic hash with good avalanche behaviour:
//! it detects corruption (bit flips, truncation, torn writes), which is what
//! the protocol needs. It is not a MAC: Visor trusts the nodes of its cluster
//! (Erlang distribution already does), it only refuses to trust their bytes.

/// The checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// The checksum that stands for op 0, the empty log, in cluster `cluster`.
///
/// Every log's hash chain starts from this value, so the first entry of a
/// cluster's log cannot be mistaken for the first entry of another's.
pub fn root_checksum(cluster: u128) -> u128 {
    let mut seed = Vec::with_capacity(26);
    seed.extend_from_slice(b"visor-root");
    seed.extend_from_slice(&cluster.to_le_bytes());
    checksum(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_deterministic_and_sensitive() {
        assert_eq!(checksum(b"abc"), checksum(b"abc"));
        assert_ne!(checksum(b"abc"), checksum(b"abd"));
        assert_ne!(checksum(b""), checksum(b"\0"));
    }

    #[test]
    fn roots_differ_per_cluster() {
        assert_ne!(root_checksum(1), root_checksum(2));
    }
}
