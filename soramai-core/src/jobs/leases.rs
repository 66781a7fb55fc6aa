//! The workers' side of jobs: claiming a queued job under a lease, heartbeats and cancels, events,
//! the job's input and checkpoints, finishing it (a fine-tune's adapter stored), handing it back,
//! and reaping the jobs of workers that died.

use super::*;

impl Core {
    /// Requeues running jobs whose lease has expired (their worker died), or fails them once out of
    /// attempts, or cancels them if cancellation was asked for. Returns how many were handled.
    pub fn reap_expired_leases(&self) -> Result<usize> {
        let now = self.now();
        let expired: Vec<(String, String, u32, u32, bool)> = self.write(|tx| {
            let expired: Vec<(String, String, u32, u32, bool)> = {
                tx.query_map("SELECT id, tenant_id, attempts, max_attempts, cancel_requested FROM jobs WHERE state = 'running' AND lease_expires_at < ?1", [now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
            };
            for (id, tenant, attempts, max, cancel) in &expired {
                let job = JobId::new(id.clone())?;
                let tenant = TenantId::new(tenant.clone())?;
                let (state, action) = if *cancel {
                    ("cancelled", Some(Action::JobCancelled))
                } else if attempts >= max {
                    ("failed", Some(Action::JobFinished))
                } else {
                    ("queued", None)
                };
                let finished = (state != "queued").then_some(now);
                tx.execute(
                    "UPDATE jobs SET state = ?2, lease_owner = NULL, lease_expires_at = NULL, finished_at = ?3,
                     error = CASE WHEN ?2 = 'failed' THEN 'the worker stopped responding too many times' ELSE error END WHERE id = ?1",
                    params![id, state, finished],
                )?;
                self.add_event(tx, &job, "state", &serde_json::json!({"state": state, "reason": "lease expired"}))?;
                if let Some(action) = action {
                    self.audit_tx(tx, &tenant, &Actor::System, action, id, serde_json::json!({"state": state, "reason": "lease expired"}))?;
                }
            }
            Ok(expired)
        })?;
        // Ended for good: what the jobs kept in the store goes.
        for (id, ..) in expired.iter().filter(|(_, _, attempts, max, cancel)| *cancel || attempts >= max) {
            let job = self.job_by_id(&JobId::new(id.clone())?)?;
            self.drop_job_objects(&job)?;
        }
        Ok(expired.len())
    }

    /// The pools with queued jobs of active tenants (what a node's workers may look for).
    pub fn queued_pools(&self) -> Result<Vec<PoolId>> {
        self.read(|c| {
            let pools = c.query_map(
                "SELECT DISTINCT j.pool FROM jobs j JOIN tenants t ON t.id = j.tenant_id
                 WHERE j.state = 'queued' AND t.status = 'active' ORDER BY j.pool",
                (),
                |r| r.get::<String>(0),
            )?;
            pools.into_iter().map(PoolId::new).collect()
        })
    }

    /// Claims the oldest queued job of `pool` for `worker` with a lease of `lease`.
    pub fn claim_job(&self, worker: &str, pool: &PoolId, lease: Duration) -> Result<Option<Claim>> {
        self.reap_expired_leases()?;
        let now = self.now();
        let expires = now.saturating_add(millis(lease));
        let id: Option<String> = self.write(|tx| {
            let id: Option<(String, String)> = tx
                .query_row(
                    "SELECT j.id, j.tenant_id FROM jobs j JOIN tenants t ON t.id = j.tenant_id
                     WHERE j.state = 'queued' AND j.pool = ?1 AND t.status = 'active' ORDER BY j.created_at, j.id LIMIT 1",
                    [pool.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((id, tenant)) = id else { return Ok(None) };
            tx.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_expires_at = ?3, attempts = attempts + 1,
                 started_at = COALESCE(started_at, ?4), committing = 0 WHERE id = ?1",
                params![id, worker, expires, now],
            )?;
            let job = JobId::new(id.clone())?;
            self.add_event(tx, &job, "state", &serde_json::json!({"state": "running"}))?;
            self.audit_tx(tx, &TenantId::new(tenant)?, &Actor::System, Action::JobStarted, &id, serde_json::json!({"pool": pool.as_str()}))?;
            Ok(Some(id))
        })?;
        match id {
            None => Ok(None),
            Some(id) => Ok(Some(Claim { job: self.job_by_id(&JobId::new(id)?)?, lease_expires_at: expires })),
        }
    }

    fn check_lease(tx: &Db<'_>, job: &JobId, worker: &str) -> Result<bool> {
        let row: Option<(String, Option<String>, bool)> = tx
            .query_row("SELECT state, lease_owner, cancel_requested FROM jobs WHERE id = ?1", [job.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        match row {
            Some((state, Some(owner), cancel)) if state == "running" && owner == worker => Ok(cancel),
            _ => Err(Error::LeaseLost),
        }
    }

    /// Extends a lease. Returns whether cancellation was requested; fails with
    /// [`Error::LeaseLost`] if the worker no longer holds the job.
    pub fn heartbeat(&self, job: &JobId, worker: &str, lease: Duration) -> Result<bool> {
        let expires = self.now().saturating_add(millis(lease));
        self.write(|tx| {
            let cancel = Self::check_lease(tx, job, worker)?;
            tx.execute("UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1", params![job.as_str(), expires])?;
            Ok(cancel)
        })
    }

    /// Records a progress or metric event from the job holding the lease.
    pub fn report_job_event(&self, job: &JobId, worker: &str, kind: &str, data: &serde_json::Value) -> Result<()> {
        if !matches!(kind, "progress" | "metric") {
            return Err(Error::InvalidArgument("job events are progress or metric".into()));
        }
        self.write(|tx| {
            Self::check_lease(tx, job, worker)?;
            if kind == "progress"
                && let Some(p) = data.get("fraction").and_then(|f| f.as_f64())
            {
                tx.execute("UPDATE jobs SET progress = ?2 WHERE id = ?1", params![job.as_str(), p.clamp(0.0, 1.0)])?;
            }
            self.add_event(tx, job, kind, data)
        })
    }

    /// Begins storing a job's result: false when a cancel was asked for (the job is to end
    /// cancelled); otherwise no cancel is accepted from now on ([`Core::cancel_job`] answers
    /// with the final state), so a success is never reported over an accepted cancel.
    pub fn begin_commit(&self, job: &JobId, worker: &str) -> Result<bool> {
        self.write(|tx| {
            if Self::check_lease(tx, job, worker)? {
                return Ok(false);
            }
            tx.execute("UPDATE jobs SET committing = 1 WHERE id = ?1", [job.as_str()])?;
            Ok(true)
        })
    }

    /// Ends a job the worker holds. A job whose cancel was accepted ends cancelled, whatever
    /// else its worker saw (a failure after the cancel, say).
    pub fn finish_job(&self, job: &JobId, worker: &str, outcome: Outcome) -> Result<Job> {
        let now = self.now();
        let current = self.job_by_id(job)?;
        self.write(|tx| {
            let cancel = Self::check_lease(tx, job, worker)?;
            let outcome = match outcome {
                Outcome::Failed(_) if cancel => &Outcome::Cancelled,
                ref o => o,
            };
            let (state, result, error) = match outcome {
                Outcome::Succeeded(v) => ("succeeded", Some(v.to_string()), None),
                Outcome::Failed(e) => ("failed", None, Some(e.clone())),
                Outcome::Cancelled => ("cancelled", None, None),
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, result = ?3, error = ?4, finished_at = ?5, lease_owner = NULL, lease_expires_at = NULL,
                 progress = CASE WHEN ?2 = 'succeeded' THEN 1.0 ELSE progress END WHERE id = ?1",
                params![job.as_str(), state, result, error, now],
            )?;
            self.add_event(tx, job, "state", &serde_json::json!({"state": state}))?;
            let action = if state == "cancelled" { Action::JobCancelled } else { Action::JobFinished };
            self.audit_tx(tx, &current.tenant, &Actor::System, action, job.as_str(), serde_json::json!({"state": state}))
        })?;
        self.job_by_id(job)
    }

    /// The decrypted input of a claimed job, for the worker holding its lease only.
    pub(crate) fn job_input(&self, job: &Job, worker: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        self.write(|tx| Self::check_lease(tx, &job.id, worker).map(|_| ()))?;
        match job.spec.dataset() {
            Some(dataset) => self.dataset_bytes(&job.tenant, dataset),
            None => self.get_object(&job.tenant, &input_path(&job.id)?),
        }
    }

    /// The job's last checkpoint, decrypted, for the worker holding its lease; `None` before the
    /// first one.
    pub(crate) fn job_checkpoint(&self, job: &Job, worker: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        let step: Option<u64> = self.write(|tx| {
            Self::check_lease(tx, &job.id, worker)?;
            tx.query_row("SELECT checkpoint_step FROM jobs WHERE id = ?1", [job.id.as_str()], |r| r.get(0))
        })?;
        match step {
            None => Ok(None),
            Some(_) => Ok(Some(self.get_object(&job.tenant, &checkpoint_path(&job.id)?)?)),
        }
    }

    /// Stores a training checkpoint encrypted under the tenant key and charges the tokens trained
    /// up to it, in one transaction: a checkpoint is never kept unpaid, nor a token paid twice.
    pub(crate) fn save_job_checkpoint(
        &self,
        job: &Job,
        worker: &str,
        step: u64,
        trained_tokens: u64,
        state: &[u8],
    ) -> Result<()> {
        self.put_object_with(&job.tenant, &checkpoint_path(&job.id)?, state, |tx| {
            Self::check_lease(tx, &job.id, worker)?;
            self.charge_training_tx(tx, job, trained_tokens)?;
            tx.execute("UPDATE jobs SET checkpoint_step = ?2 WHERE id = ?1", params![job.id.as_str(), step])?;
            self.add_event(
                tx,
                &job.id,
                "checkpoint",
                &serde_json::json!({"step": step, "trained_tokens": trained_tokens}),
            )
        })
    }

    fn charge_training_tx(&self, tx: &Db<'_>, job: &Job, trained_tokens: u64) -> Result<()> {
        let charged: u64 =
            tx.query_row("SELECT charged_tokens FROM jobs WHERE id = ?1", [job.id.as_str()], |r| r.get(0))?;
        if trained_tokens > charged {
            let amount = i64::try_from(trained_tokens - charged)
                .map_err(|_| Error::InvalidArgument("trained token count overflows".into()))?
                .saturating_mul(CREDITS_PER_TRAINED_TOKEN);
            self.ledger_entry_tx(tx, &job.tenant, "usage", amount, &format!("fine-tune {}", job.id.as_str()))?;
            tx.execute("UPDATE jobs SET charged_tokens = ?2 WHERE id = ?1", params![job.id.as_str(), trained_tokens])?;
        }
        Ok(())
    }

    /// Registers a finished fine-tune's adapter (encrypted, under a new model id), charging its
    /// remaining trained tokens in the same transaction; returns the result with the model id.
    pub(crate) fn complete_fine_tune(
        &self,
        job: &Job,
        worker: &str,
        spec: &FineTuneSpec,
        mut result: serde_json::Value,
        files: &[(String, zeroize::Zeroizing<Vec<u8>>)],
    ) -> Result<serde_json::Value> {
        let count = |k: &str| result.get(k).and_then(|v| v.as_u64());
        let trained =
            count("trained_tokens").ok_or_else(|| Error::Runner("the result has no trained_tokens".into()))?;
        let tokens = count("tokens").unwrap_or(trained);
        let millis = result.get("seconds").and_then(|v| v.as_f64()).map_or(0, |s| (s * 1000.0) as u64);
        let model = self.register_fine_tuned(
            &job.tenant,
            &spec.base_model,
            spec.suffix.as_deref(),
            &job.id,
            trained,
            files,
            |tx| {
                Self::check_lease(tx, &job.id, worker)?;
                self.charge_training_tx(tx, job, trained)
            },
        )?;
        self.record_usage(
            &job.tenant,
            &UsageEvent {
                kind: UsageKind::Training,
                model: spec.base_model.clone(),
                adapter: Some(model.id.clone()),
                input_tokens: tokens,
                output_tokens: trained,
                latency_ms: millis,
                status: UsageStatus::Ok,
            },
        )?;
        result["fine_tuned_model"] = serde_json::json!(model.id.as_str());
        Ok(result)
    }

    /// Removes what an ended job kept in the store: a fine-tune's checkpoint, an ingestion's
    /// input (nothing to do without them).
    pub(crate) fn drop_job_objects(&self, job: &Job) -> Result<()> {
        let path = match &job.spec {
            JobSpec::FineTune(_) => checkpoint_path(&job.id)?,
            JobSpec::Ingest(_) => input_path(&job.id)?,
            JobSpec::Checksum { .. } => return Ok(()),
        };
        match self.delete_object(&job.tenant, &path) {
            Err(Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Hands a running job back to its queue (its worker is stopping): it runs again from its
    /// last checkpoint, without the attempt counting against it.
    pub(crate) fn release_job(&self, job: &JobId, worker: &str) -> Result<()> {
        self.write(|tx| {
            Self::check_lease(tx, job, worker)?;
            tx.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = ?1",
                [job.as_str()],
            )?;
            self.add_event(tx, job, "state", &serde_json::json!({"state": "queued", "reason": "worker stopping"}))
        })
    }
}
