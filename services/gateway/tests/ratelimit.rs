//! The per-tenant token bucket, driven with explicit instants (no sleeping):
//! exact admission counts, exact retry-after values, bounded memory.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use soma_gateway::ratelimit::{RateLimitError, RateLimitSettings, RateLimiter, SWEEP_EVERY};

fn settings(requests_per_second: f64, burst: u32) -> RateLimitSettings {
    RateLimitSettings {
        requests_per_second,
        burst,
    }
}

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

#[test]
fn burst_is_admitted_at_once_then_refused_with_one_over_rate() {
    let limiter = RateLimiter::new(settings(50.0, 100));
    let t0 = Instant::now();
    for i in 0..100 {
        assert_eq!(limiter.check("acme", t0), Ok(()), "request {i}");
    }
    assert_eq!(limiter.check("acme", t0), Err(Duration::from_millis(20)));
    // One nanosecond short of the refill: still refused, for exactly 1 ns.
    assert_eq!(limiter.check("acme", t0 + ns(19_999_999)), Err(ns(1)));
    assert_eq!(limiter.check("acme", t0 + Duration::from_millis(20)), Ok(()));
    assert_eq!(
        limiter.check("acme", t0 + Duration::from_millis(20)),
        Err(Duration::from_millis(20))
    );
}

#[test]
fn retry_after_is_exact_for_a_rate_that_does_not_divide_a_second() {
    let limiter = RateLimiter::new(settings(3.0, 1));
    let t0 = Instant::now();
    assert_eq!(limiter.check("acme", t0), Ok(()));
    // 1/3 s = 333_333_333.3 ns, rounded up.
    assert_eq!(limiter.check("acme", t0), Err(ns(333_333_334)));
    assert_eq!(limiter.check("acme", t0 + ns(333_333_333)), Err(ns(1)));
    assert_eq!(limiter.check("acme", t0 + ns(333_333_334)), Ok(()));
}

#[test]
fn slow_rate_retry_after_spans_seconds() {
    let limiter = RateLimiter::new(settings(0.5, 2));
    let t0 = Instant::now();
    assert_eq!(limiter.check("acme", t0), Ok(()));
    assert_eq!(limiter.check("acme", t0), Ok(()));
    assert_eq!(limiter.check("acme", t0), Err(Duration::from_secs(2)));
    assert_eq!(
        limiter.check("acme", t0 + Duration::from_millis(500)),
        Err(Duration::from_millis(1500))
    );
    assert_eq!(limiter.check("acme", t0 + Duration::from_secs(2)), Ok(()));
}

#[test]
fn refill_stops_at_burst() {
    let limiter = RateLimiter::new(settings(10.0, 5));
    let t0 = Instant::now();
    assert_eq!(limiter.check("acme", t0), Ok(()));
    // An hour idle refills to 5 tokens, not 36,000.
    let later = t0 + Duration::from_secs(3600);
    for _ in 0..5 {
        assert_eq!(limiter.check("acme", later), Ok(()));
    }
    assert_eq!(limiter.check("acme", later), Err(Duration::from_millis(100)));
}

#[test]
fn tenants_are_independent() {
    let limiter = RateLimiter::new(settings(1.0, 3));
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(limiter.check("acme", t0), Ok(()));
    }
    assert!(limiter.check("acme", t0).is_err());
    for _ in 0..3 {
        assert_eq!(limiter.check("globex", t0), Ok(()));
    }
    assert!(limiter.check("globex", t0).is_err());
    assert_eq!(limiter.len(), 2);
}

#[test]
fn an_earlier_instant_adds_nothing() {
    let limiter = RateLimiter::new(settings(1.0, 1));
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(limiter.check("acme", t1), Ok(()));
    // A racing thread that read the clock before t1 arrives late.
    assert_eq!(limiter.check("acme", t0), Err(Duration::from_secs(1)));
    assert_eq!(limiter.check("acme", t1 + Duration::from_secs(1)), Ok(()));
}

#[test]
fn concurrent_checks_admit_exactly_burst_plus_elapsed_times_rate() {
    const THREADS: u64 = 16;
    const CHECKS: u64 = 10_000;
    // 2.0005 s at 1000 requests/s: floor(2000.5) = 2000 refills.
    const ELAPSED_NS: u64 = 2_000_500_000;
    let limiter = RateLimiter::new(settings(1000.0, 100));
    let t0 = Instant::now();
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let limiter = limiter.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let mut admitted = 0u64;
                for j in 0..CHECKS {
                    let now = t0 + ns(ELAPSED_NS * j / (CHECKS - 1));
                    if limiter.check("acme", now).is_ok() {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 100 + 2000);
}

#[test]
fn a_full_map_refuses_new_tenants_until_a_bucket_refills() {
    // One tenant at most: a single shard holding a single bucket.
    let limiter = RateLimiter::with_max_tenants(settings(1.0, 2), 1);
    let t0 = Instant::now();
    assert_eq!(limiter.check("acme", t0), Ok(()));
    // The full-refill time: burst / rate = 2 s.
    assert_eq!(limiter.check("globex", t0), Err(Duration::from_secs(2)));
    assert_eq!(
        limiter.check("globex", t0 + ns(999_999_999)),
        Err(Duration::from_secs(2))
    );
    assert_eq!(limiter.len(), 1);
    // acme is full again after 1 s, so it is dropped to make room.
    assert_eq!(limiter.check("globex", t0 + Duration::from_secs(1)), Ok(()));
    assert_eq!(limiter.len(), 1);
    // acme starts again from a full bucket, as if never seen; but there is
    // no room for it while globex is not full.
    assert_eq!(
        limiter.check("acme", t0 + Duration::from_secs(1)),
        Err(Duration::from_secs(2))
    );
}

#[test]
fn the_map_never_exceeds_max_tenants() {
    let limiter = RateLimiter::with_max_tenants(settings(1.0, 5), 64);
    let t0 = Instant::now();
    let mut admitted = 0;
    for i in 0..1000 {
        if limiter.check(&format!("tenant-{i}"), t0).is_ok() {
            admitted += 1;
        }
        assert!(limiter.len() <= 64);
    }
    // Sharding may refuse a little before the bound, never after it.
    assert_eq!(limiter.len(), admitted);
    assert!(admitted > 0 && admitted <= 64, "{admitted}");
}

#[test]
fn full_buckets_are_swept_periodically() {
    const TENANTS: usize = 1000;
    // Enough probes that every one of the 16 shards holds one, with
    // overwhelming probability (a shard is missed with chance < 10^-13).
    const PROBES: usize = 512;
    let limiter = RateLimiter::new(settings(1.0, 1));
    let t0 = Instant::now();
    for i in 0..TENANTS {
        assert_eq!(limiter.check(&format!("tenant-{i}"), t0), Ok(()));
    }
    assert_eq!(limiter.len(), TENANTS);
    // After one second every bucket is full again; each probe's shard counts
    // SWEEP_EVERY checks per probe and so sweeps at least once.
    let t1 = t0 + Duration::from_secs(1);
    for p in 0..PROBES {
        let probe = format!("probe-{p}");
        for _ in 0..SWEEP_EVERY {
            let _ = limiter.check(&probe, t1);
        }
    }
    // Only the probes remain: each spent its token at t1 and is not full.
    assert_eq!(limiter.len(), PROBES);
}

#[test]
fn settings_are_validated_when_read() {
    let default: RateLimitSettings = toml::from_str("").unwrap();
    assert_eq!(
        default,
        RateLimitSettings {
            requests_per_second: 50.0,
            burst: 100
        }
    );
    assert_eq!(default, RateLimitSettings::default());
    let custom: RateLimitSettings = toml::from_str("requests_per_second = 2.5\nburst = 7").unwrap();
    assert_eq!(custom, settings(2.5, 7));

    for (text, names) in [
        ("requests_per_second = 0.0", "requests_per_second"),
        ("requests_per_second = -1.0", "requests_per_second"),
        ("requests_per_second = nan", "requests_per_second"),
        ("requests_per_second = inf", "requests_per_second"),
        ("burst = 0", "burst"),
        ("bursts = 10", "bursts"),
    ] {
        let err = toml::from_str::<RateLimitSettings>(text).unwrap_err();
        assert!(err.to_string().contains(names), "{text}: {err}");
    }
}

#[test]
fn settings_built_in_code_are_validated_on_request() {
    assert!(settings(50.0, 100).validate().is_ok());
    assert!(matches!(
        settings(0.0, 1).validate(),
        Err(RateLimitError::InvalidRate { .. })
    ));
    assert!(matches!(
        settings(f64::NAN, 1).validate(),
        Err(RateLimitError::InvalidRate { .. })
    ));
    assert!(matches!(
        settings(1.0, 0).validate(),
        Err(RateLimitError::InvalidBurst)
    ));
}

#[test]
fn invalid_settings_fail_closed() {
    // A zero burst counts as 1 and a zero rate as the smallest rate.
    let limiter = RateLimiter::new(settings(0.0, 0));
    let t0 = Instant::now();
    assert_eq!(limiter.check("acme", t0), Ok(()));
    let retry = limiter.check("acme", t0).unwrap_err();
    assert_eq!(retry, Duration::from_secs(1_000_000));
}
