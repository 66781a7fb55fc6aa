//! Admission: each tenant's requests per minute (a token bucket) and requests in flight, by tier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use soramai_core::TenantId;
use soramai_core::tier::Policy;

use crate::PlatformError;

/// Per-tenant load: a token bucket for requests per minute and a count of requests in flight.
#[derive(Debug)]
struct Load {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

/// The tier limits of every tenant.
#[derive(Debug, Default)]
pub(super) struct Limiter {
    loads: Mutex<HashMap<TenantId, Load>>,
}

impl Limiter {
    /// Takes a place for one request of `tenant` under its tier's `policy`: refused when the
    /// tenant is over its requests per minute or its requests in flight.
    pub(super) fn admit(self: &Arc<Self>, tenant: &TenantId, policy: &Policy) -> Result<Permit, PlatformError> {
        let mut loads = self.loads.lock().map_err(|_| PlatformError::Engine("limiter poisoned".into()))?;
        let load = Self::refilled(&mut loads, tenant, policy)?;
        if load.in_flight >= policy.max_concurrent_requests {
            return Err(PlatformError::RateLimited(format!(
                "more than {} concurrent requests on the {} tier",
                policy.max_concurrent_requests,
                policy.tier.as_str()
            )));
        }
        load.tokens -= 1.0;
        load.in_flight += 1;
        Ok(Permit { limiter: self.clone(), tenant: tenant.clone() })
    }

    /// Counts a request that is refused without running (a missing scope) against the
    /// tenant's requests per minute, taking no place in flight: refused itself when over.
    pub(super) fn charge(&self, tenant: &TenantId, policy: &Policy) -> Result<(), PlatformError> {
        let mut loads = self.loads.lock().map_err(|_| PlatformError::Engine("limiter poisoned".into()))?;
        Self::refilled(&mut loads, tenant, policy)?.tokens -= 1.0;
        Ok(())
    }

    /// The tenant's load with its bucket refilled for the time passed; refused when the bucket
    /// holds less than one request.
    fn refilled<'a>(
        loads: &'a mut HashMap<TenantId, Load>,
        tenant: &TenantId,
        policy: &Policy,
    ) -> Result<&'a mut Load, PlatformError> {
        let rate = f64::from(policy.requests_per_minute.max(1));
        let now = Instant::now();
        let load = loads.entry(tenant.clone()).or_insert(Load { tokens: rate, refilled: now, in_flight: 0 });
        load.tokens = (load.tokens + now.duration_since(load.refilled).as_secs_f64() * rate / 60.0).min(rate);
        load.refilled = now;
        if load.tokens < 1.0 {
            return Err(PlatformError::RateLimited(format!(
                "more than {} requests per minute on the {} tier",
                policy.requests_per_minute,
                policy.tier.as_str()
            )));
        }
        Ok(load)
    }
}

/// A request's place within its tenant's concurrency limit; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    tenant: TenantId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut loads) = self.limiter.loads.lock()
            && let Some(l) = loads.get_mut(&self.tenant)
        {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}
