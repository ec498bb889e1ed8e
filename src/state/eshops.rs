//! The per-e-shop runtime record: one map entry holds everything the hot path keeps about an
//! e-shop — its token state ([`crate::state::tokens`]) and its flow state ([`crate::limits::flow`]).
//!
//! Why one record: a proxied request used to look its e-shop up twice (token cache, flow control),
//! each a SipHash over a sharded map and a pointer chase to a separately allocated entry. With
//! 100,000 e-shops in the traffic those are cache misses on every request, and two entries (plus a
//! separately allocated semaphore) cost memory per e-shop. The request now looks its e-shop up once
//! and hands the record on. An e-shop whose installation is replaced or removed has its token state
//! reset in place ([`crate::state::tokens::TokenCache::forget`]), so a request in flight keeps a valid
//! record and its upstream slot. Records go only when nothing but the map holds them and their
//! owner calls them idle ([`Eshops::evict`]): ids that were never installed (a typo, a probe)
//! would otherwise cost memory for the life of the process.

use crate::limits::flow::Lane;
use crate::state::tokens::TokenSlot;
use dashmap::DashMap;
use serde::Serialize;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

/// Everything kept about one e-shop while the process runs.
pub struct Eshop {
    pub id: u64,
    pub(crate) token: TokenSlot,
    pub(crate) flow: Lane,
    /// Proxied requests since start: relaxed counters for the live state, next to the lane the
    /// request touches anyway, so counting costs no extra cache miss.
    requests_total: AtomicU64,
    /// 0 until Shoptet answered a request of this e-shop.
    last_upstream_status: AtomicU16,
}

/// What this replica knows about one e-shop now (SPEC B7's `runtime`): no secret.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    pub token_expires_in_seconds: Option<u64>,
    pub token_refreshing: bool,
    /// RFC 3339.
    pub backoff_until: Option<String>,
    pub last_token_error: Option<&'static str>,
    pub in_flight: u32,
    pub queued: usize,
    pub bucket: Option<BucketState>,
    pub last_upstream_status: Option<u16>,
    pub requests_total: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketState {
    pub level: f64,
    pub capacity: u64,
    pub paced_total: u64,
}

impl Runtime {
    /// An e-shop this process holds no record of: nothing requested since start (or since its
    /// idle record was evicted).
    pub fn idle() -> Runtime {
        Runtime {
            token_expires_in_seconds: None,
            token_refreshing: false,
            backoff_until: None,
            last_token_error: None,
            in_flight: 0,
            queued: 0,
            bucket: None,
            last_upstream_status: None,
            requests_total: 0,
        }
    }
}

impl Eshop {
    fn new(id: u64, slots: usize) -> Eshop {
        Eshop {
            id,
            token: TokenSlot::default(),
            flow: Lane::new(slots),
            requests_total: AtomicU64::new(0),
            last_upstream_status: AtomicU16::new(0),
        }
    }

    /// A proxied request for this e-shop arrived.
    pub fn count_request(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Shoptet answered one of this e-shop's requests with `status`.
    pub fn upstream_answered(&self, status: u16) {
        self.last_upstream_status.store(status, Ordering::Relaxed);
    }

    /// The live state; each part is read under its own lock, held for a few field reads.
    pub fn runtime(&self) -> Runtime {
        let token = self.token.snapshot();
        let lane = self.flow.snapshot();
        let status = self.last_upstream_status.load(Ordering::Relaxed);
        Runtime {
            // Rounded up: a token with 0.4 s left is not "expired".
            token_expires_in_seconds: token
                .expires_in
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            token_refreshing: token.refreshing,
            backoff_until: token.backoff_until.and_then(|at| {
                time::OffsetDateTime::from(at)
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            last_token_error: token.last_error,
            in_flight: lane.in_flight,
            queued: lane.queued,
            bucket: lane.bucket.map(|b| BucketState {
                // Tenths: the model's drain is continuous, more digits are noise.
                level: (b.level * 10.0).round() / 10.0,
                capacity: b.capacity.round() as u64,
                paced_total: lane.paced_total,
            }),
            last_upstream_status: (status != 0).then_some(status),
            requests_total: self.requests_total.load(Ordering::Relaxed),
        }
    }
}

impl AsRef<Lane> for Eshop {
    fn as_ref(&self) -> &Lane {
        &self.flow
    }
}

/// All e-shops seen since start, by id.
pub struct Eshops {
    map: DashMap<u64, Arc<Eshop>, IdHash>,
    slots_per_eshop: usize,
}

impl Eshops {
    /// `slots_per_eshop` is `max_in_flight_per_eshop`: each new record gets that many slots.
    pub fn new(slots_per_eshop: usize) -> Eshops {
        Eshops {
            map: DashMap::with_hasher(IdHash::random()),
            slots_per_eshop,
        }
    }

    /// The record of `eshop_id`, created on first use.
    pub fn get(&self, eshop_id: u64) -> Arc<Eshop> {
        if let Some(e) = self.map.get(&eshop_id) {
            return e.clone();
        }
        self.map
            .entry(eshop_id)
            .or_insert_with(|| Arc::new(Eshop::new(eshop_id, self.slots_per_eshop)))
            .clone()
    }

    /// The record of `eshop_id` if any request or event has created it.
    pub fn existing(&self, eshop_id: u64) -> Option<Arc<Eshop>> {
        self.map.get(&eshop_id).map(|e| e.clone())
    }

    /// The records `pick` accepts, cloned out so no map guard outlives the call (the others are
    /// not cloned: with 100,000 records that would write to every one of them).
    pub fn picked(&self, mut pick: impl FnMut(&Eshop) -> bool) -> Vec<Arc<Eshop>> {
        self.map
            .iter()
            .filter(|e| pick(e.value()))
            .map(|e| e.value().clone())
            .collect()
    }

    /// Calls `f` on every record, holding each shard's read guard only while `f` runs on its
    /// records (so `f` must not block or touch the map).
    pub fn for_each(&self, mut f: impl FnMut(&Eshop)) {
        for e in self.map.iter() {
            f(e.value());
        }
    }

    /// Removes the records that no request, task or caller holds and that `idle` accepts;
    /// returns how many went. A request arriving later simply creates a fresh record.
    pub fn evict(&self, idle: impl Fn(&Eshop) -> bool) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| Arc::strong_count(e) > 1 || !idle(e.as_ref()));
        before.saturating_sub(self.map.len())
    }
}

/// Hashes e-shop ids with one folded multiplication and a per-process random seed: a few
/// nanoseconds instead of SipHash's tens, while ids chosen by a client still cannot be aimed at
/// one bucket without knowing the seed.
#[derive(Clone)]
pub struct IdHash {
    seed: u64,
}

impl IdHash {
    fn random() -> IdHash {
        IdHash {
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            seed: self.seed,
            hash: 0,
        }
    }
}

pub struct IdHasher {
    seed: u64,
    hash: u64,
}

/// Odd constants with well-spread bits (the golden ratio's and π's fractional parts).
const MULTIPLIERS: [u64; 2] = [0x9e37_79b9_7f4a_7c15, 0x243f_6a88_85a3_08d3];

/// The 128-bit product's halves XORed: every input bit reaches both the low bits (the table
/// index) and the high bits (the shard and the control byte).
fn folded_multiply(x: u64, m: u64) -> u64 {
    let product = u128::from(x) * u128::from(m);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; this keeps the hasher correct for anything else.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Two rounds: one alone leaves ids that differ only in high bits (large strides)
        // crowding into part of the table.
        let once = folded_multiply(id ^ self.seed ^ self.hash, MULTIPLIERS[0]);
        self.hash = folded_multiply(once, MULTIPLIERS[1]);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_record_is_created_once_and_shared() {
        let eshops = Eshops::new(3);
        let a = eshops.get(222_651);
        let b = eshops.get(222_651);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.id, 222_651);
        assert!(eshops.existing(1).is_none());
        assert_eq!(eshops.picked(|_| true).len(), 1);
        assert!(eshops.picked(|e| e.id == 1).is_empty());
    }

    #[test]
    fn only_idle_records_nobody_holds_are_evicted() {
        let eshops = Eshops::new(3);
        let held = eshops.get(1);
        eshops.get(2);
        eshops.get(3);
        // Record 3 is not idle; record 1 is held by a request.
        assert_eq!(eshops.evict(|e| e.id != 3), 1);
        assert!(eshops.existing(2).is_none());
        assert_eq!(eshops.picked(|_| true).len(), 2);
        drop(held);
        assert_eq!(eshops.evict(|e| e.id != 3), 1);
        assert!(eshops.existing(3).is_some());
    }

    #[test]
    fn sequential_and_strided_ids_spread_over_table_indexes() {
        let hash = IdHash::random();
        for stride in [1u64, 2, 1024, 1 << 20] {
            let low_bits: HashSet<u64> = (0..4096u64)
                .map(|i| hash.hash_one(i * stride) & 4095)
                .collect();
            // A good hash fills most of 4,096 slots with 4,096 keys (~63 % expected at random).
            assert!(low_bits.len() > 2300, "stride {stride}: {}", low_bits.len());
        }
    }
}
