//! Seeded randomness with one independent stream per subsystem.
//!
//! Every stream is derived from the run's seed and a constant naming the subsystem, so a new
//! random draw in one subsystem (say, a new kind of fault) leaves the draws of every other
//! subsystem, and with them most of each seed's history, as they were.

/// Which subsystem a stream feeds. Each has its own constant; per-node streams add the node's
/// index, so that adding a node leaves the other nodes' streams alone.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stream {
    /// The quorum policies the cluster starts with and changes to.
    Policy,
    /// Which client writes are proposed, when, and their payloads.
    Workload,
    /// Which fault is injected when, and for how long.
    Faults,
    /// Message latencies, dial times and how late a broken channel is noticed.
    Network,
    /// Which sent messages are lost (and their channel cut) while faults are on.
    MessageLoss,
    /// One node's disk: how long durability and reads take.
    Disk(usize),
    /// One node's engine configuration, including the engine's own jitter seed.
    Config(usize),
    /// The racing operators' choices after two promotions at once.
    Race,
    /// Automatic failover: the coordinator's faults, the agents' timing, the clients' pick.
    Coordinator,
    /// Snapshots and compaction: which node takes one when, and how far it compacts.
    Retention,
}

impl Stream {
    fn constant(self) -> u64 {
        match self {
            Stream::Policy => 0x706f_6c69_6379_0001,
            Stream::Workload => 0x776f_726b_6c6f_6164,
            Stream::Faults => 0x6661_756c_7473_0002,
            Stream::Network => 0x6e65_7477_6f72_6b00,
            Stream::MessageLoss => 0x6c6f_7373_0000_0003,
            Stream::Disk(node) => 0x6469_736b_0000_0000 ^ ((node as u64) << 8),
            Stream::Config(node) => 0x636f_6e66_6967_0000 ^ ((node as u64) << 8),
            Stream::Race => 0x7261_6365_0000_0004,
            Stream::Coordinator => 0x636f_6f72_6469_0005,
            Stream::Retention => 0x7265_7461_696e_0006,
        }
    }
}

/// SplitMix64's output function: a bijection that spreads every input bit over the output, so
/// that seeds differing by one give unrelated streams.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: small, fast and fully determined by its state.
#[derive(Clone, Debug)]
pub(super) struct Rng(u64);

impl Rng {
    /// The stream of `stream` for the run with `seed`.
    pub(super) fn stream(seed: u64, stream: Stream) -> Rng {
        Rng(mix(seed ^ mix(stream.constant())))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `low..=high`.
    pub(super) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_one_seed_differ_and_replay() {
        let draws = |stream| {
            let mut rng = Rng::stream(7, stream);
            [rng.next(), rng.next()]
        };
        let all = [
            draws(Stream::Policy),
            draws(Stream::Workload),
            draws(Stream::Faults),
            draws(Stream::Network),
            draws(Stream::MessageLoss),
            draws(Stream::Disk(0)),
            draws(Stream::Disk(1)),
            draws(Stream::Config(0)),
            draws(Stream::Config(1)),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(draws(Stream::Faults), draws(Stream::Faults));
    }
}
