//! Per-tenant rate limiting: one token bucket per tenant.
//!
//! A bucket holds up to `burst` tokens and gains `requests_per_second` tokens
//! per second; each admitted request takes one. Arithmetic is exact integer
//! arithmetic: time is counted in nanoseconds and the rate in millionths of a
//! request per second, so one token is 10^15 credit units and a refill
//! after `d` nanoseconds adds exactly `d × rate` units. (A rate is therefore
//! resolved to 10^-6 requests per second.) Over any run of checks the number
//! admitted is exactly `burst + floor(elapsed × rate)` when the bucket is
//! kept busy, whatever the interleaving of threads.
//!
//! Memory stays bounded. A bucket that has refilled completely is
//! indistinguishable from a new one, so it can be dropped: each shard drops
//! its full buckets every [`SWEEP_EVERY`] checks, and before admitting a new
//! tenant into a shard at capacity. The map never holds more than
//! `max_tenants` buckets; a new tenant arriving when its shard is still at
//! capacity after the sweep is refused (not tracked) with the full-refill
//! time, after which every idle bucket has become droppable.
//!
//! Deliberately not done: distribution (each gateway replica limits on its
//! own), and reading the clock (callers pass `now`, so tests drive time).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The bound on tracked tenants used by [`RateLimiter::new`].
pub const DEFAULT_MAX_TENANTS: usize = 100_000;

/// Each shard drops its full buckets once per this many checks.
pub const SWEEP_EVERY: u64 = 4096;

/// Shards of the tenant map: concurrent checks for different tenants rarely
/// wait on the same lock.
const SHARDS: usize = 16;

/// One token, in credit units (rate in 10^-6 requests/s × nanoseconds).
const UNIT: u128 = 1_000_000_000_000_000;

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why rate-limit settings are invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The rate is zero, negative, not a number or infinite.
    #[error("`requests_per_second` must be a positive finite number, got {value}")]
    InvalidRate {
        /// The value found.
        value: f64,
    },
    /// The burst is zero.
    #[error("`burst` must be at least 1")]
    InvalidBurst,
}

/// How fast each tenant may call: `requests_per_second` on average, with up
/// to `burst` at once. Deserialization validates (unknown keys refused,
/// missing keys take the defaults of 50 requests/s and a burst of 100).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct RateLimitSettings {
    /// Sustained rate per tenant; positive and finite.
    pub requests_per_second: f64,
    /// Bucket size: requests admitted at once after an idle period; at least 1.
    pub burst: u32,
}

impl RateLimitSettings {
    /// Checks settings built in code (deserialized settings are already
    /// checked).
    pub fn validate(&self) -> Result<(), RateLimitError> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err(RateLimitError::InvalidRate {
                value: self.requests_per_second,
            });
        }
        if self.burst == 0 {
            return Err(RateLimitError::InvalidBurst);
        }
        Ok(())
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: 50.0,
            burst: 100,
        }
    }
}

impl TryFrom<RawSettings> for RateLimitSettings {
    type Error = RateLimitError;

    fn try_from(raw: RawSettings) -> Result<Self, Self::Error> {
        let settings = Self {
            requests_per_second: raw.requests_per_second,
            burst: raw.burst,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The settings as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    requests_per_second: f64,
    burst: u32,
}

impl Default for RawSettings {
    fn default() -> Self {
        let d = RateLimitSettings::default();
        Self {
            requests_per_second: d.requests_per_second,
            burst: d.burst,
        }
    }
}

/// The per-tenant limiter. Cloning is cheap (the buckets are shared), and
/// one instance serves every request concurrently.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Credit units gained per nanosecond (the rate in 10^-6 requests/s).
    rate: u128,
    /// `burst` tokens in credit units.
    capacity: u128,
    /// Buckets per shard at most; `shards.len() × per_shard ≤ max_tenants`.
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
    /// Keyed at random per limiter so that tenant names cannot be chosen to
    /// crowd one shard.
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<String, Bucket>,
    checks: u64,
}

#[derive(Debug)]
struct Bucket {
    /// Credit units held; at most `capacity`.
    credit: u128,
    /// The latest `now` seen; refills count from here. Never moves back, so
    /// an out-of-order `now` from a racing thread adds nothing.
    last: Instant,
}

impl RateLimiter {
    /// A limiter tracking at most [`DEFAULT_MAX_TENANTS`] tenants.
    ///
    /// Settings are expected to be valid (see [`RateLimitSettings::validate`]);
    /// out-of-range values fail closed: a burst of 0 counts as 1, and an
    /// invalid rate as the smallest rate, 10^-6 requests/s.
    pub fn new(settings: RateLimitSettings) -> Self {
        Self::with_max_tenants(settings, DEFAULT_MAX_TENANTS)
    }

    /// A limiter tracking at most `max_tenants` tenants (at least 1).
    pub fn with_max_tenants(settings: RateLimitSettings, max_tenants: usize) -> Self {
        let max_tenants = max_tenants.max(1);
        let shards = SHARDS.min(max_tenants);
        let rps = settings.requests_per_second;
        // Float-to-integer `as` saturates, so a huge rate stays in range;
        // NaN and non-positive rates are caught first.
        let rate = if rps.is_finite() && rps > 0.0 {
            u128::from(((rps * 1e6).round() as u64).max(1))
        } else {
            1
        };
        Self {
            inner: Arc::new(Inner {
                rate,
                capacity: u128::from(settings.burst.max(1)) * UNIT,
                per_shard: max_tenants / shards,
                shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
                hasher: RandomState::new(),
            }),
        }
    }

    /// Takes one token for `tenant` at `now`.
    ///
    /// `Err(retry_after)` when the bucket is empty: the exact time (to the
    /// nanosecond, rounded up) until one token is available; the caller
    /// rounds it up to whole seconds for `Retry-After`. A new tenant that
    /// cannot be tracked because the map is full gets the full-refill time
    /// (`burst / requests_per_second`).
    pub fn check(&self, tenant: &str, now: Instant) -> Result<(), Duration> {
        let inner = &*self.inner;
        let index = (inner.hasher.hash_one(tenant) % inner.shards.len() as u64) as usize;
        let mut shard = lock(&inner.shards[index]);
        shard.checks = shard.checks.wrapping_add(1);
        if shard.checks.is_multiple_of(SWEEP_EVERY) {
            shard.sweep(inner, now);
        }
        if let Some(bucket) = shard.buckets.get_mut(tenant) {
            return inner.take(bucket, now);
        }
        if shard.buckets.len() >= inner.per_shard {
            shard.sweep(inner, now);
            if shard.buckets.len() >= inner.per_shard {
                return Err(nanos(inner.capacity.div_ceil(inner.rate)));
            }
        }
        // A new bucket starts full, and this request takes its first token.
        let bucket = Bucket {
            credit: inner.capacity - UNIT,
            last: now,
        };
        shard.buckets.insert(tenant.to_owned(), bucket);
        Ok(())
    }

    /// The number of tenants tracked (buckets not yet dropped).
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).buckets.len()).sum()
    }

    /// Whether no tenant is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        if now > bucket.last {
            let elapsed = (now - bucket.last).as_nanos();
            bucket.credit = bucket
                .credit
                .saturating_add(elapsed.saturating_mul(self.rate))
                .min(self.capacity);
            bucket.last = now;
        }
    }

    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        self.refill(bucket, now);
        if bucket.credit >= UNIT {
            bucket.credit -= UNIT;
            Ok(())
        } else {
            Err(nanos((UNIT - bucket.credit).div_ceil(self.rate)))
        }
    }
}

impl Shard {
    /// Drops the buckets that are full at `now`: a full bucket behaves
    /// exactly like the new one created on the tenant's next request.
    fn sweep(&mut self, inner: &Inner, now: Instant) {
        self.buckets.retain(|_, bucket| {
            inner.refill(bucket, now);
            bucket.credit < inner.capacity
        });
    }
}

/// Locks a shard. A panic cannot happen while a shard is held (the code
/// under the lock is integer arithmetic and map operations), and every
/// bucket is valid after each single update anyway, so a poisoned lock is
/// still safe to use.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A duration of `ns` nanoseconds, saturating at the largest `Duration`.
fn nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    let sub = (ns % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}
