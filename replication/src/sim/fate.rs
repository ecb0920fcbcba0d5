//! The model's random choices: each one a splitmix64 hash of (seed, server name,
//! purpose), so that a server's fate depends on nothing else: not on the order of the
//! calls, not on the other servers, not on the machine.

use super::config::Resolved;
use super::state::{NANOS_PER_SECOND, Pause};

/// A stall lasts 10 to 60 minutes; a disconnect 5 to 30 minutes.
const STALL_SECONDS: (u64, u64) = (600, 3600);
const DISCONNECT_SECONDS: (u64, u64) = (300, 1800);

/// A pause happens between 5 % and 95 % of the initial sync (in thousandths).
const PAUSE_POINT_PERMILLE: (u64, u64) = (50, 950);

/// The failures chosen for one server when it registers.
pub(crate) struct Fates {
    pub stall: Option<Pause>,
    pub disconnect: Option<Pause>,
    pub boot_failure: bool,
}

pub(crate) fn fates(config: &Resolved, name: &str, total_bytes: u64) -> Fates {
    let total_bits = u128::from(total_bytes) * 8;
    let pause = |purpose: &str, chance_ppm: u32, seconds: (u64, u64)| -> Option<Pause> {
        if total_bits == 0 || !chance(config.seed, name, purpose, chance_ppm) {
            return None;
        }
        let permille = between(
            config.seed,
            name,
            &format!("{purpose} point"),
            PAUSE_POINT_PERMILLE,
        );
        let lasts = between(config.seed, name, &format!("{purpose} duration"), seconds);
        Some(Pause {
            after_bits: total_bits * u128::from(permille) / 1000,
            lasts_ns: i64::try_from(lasts)
                .unwrap_or(i64::MAX)
                .saturating_mul(NANOS_PER_SECOND),
        })
    };
    Fates {
        stall: pause("stall", config.stall_ppm, STALL_SECONDS),
        disconnect: pause("disconnect", config.disconnect_ppm, DISCONNECT_SECONDS),
        boot_failure: chance(config.seed, name, "boot failure", config.boot_failure_ppm),
    }
}

fn chance(seed: u64, name: &str, purpose: &str, ppm: u32) -> bool {
    ppm > 0 && draw(seed, name, purpose) % 1_000_000 < u64::from(ppm)
}

/// A whole number in `low..=high`.
fn between(seed: u64, name: &str, purpose: &str, (low, high): (u64, u64)) -> u64 {
    low + draw(seed, name, purpose) % (high - low + 1)
}

fn draw(seed: u64, name: &str, purpose: &str) -> u64 {
    // FNV-1a of the name and the purpose, with a separator no UTF-8 text contains.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain([0xff]).chain(purpose.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(seed ^ splitmix64(hash))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
