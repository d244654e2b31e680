//! The LDAP side of the audit: the connections, the digest and re-read passes, and the
//! rounds that settle each difference.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("server {side} ({url}): {step}: {message}{hint}")]
    Ldap { side: &'static str, url: String, step: &'static str, message: String, code: Option<u32>, hint: &'static str },
    #[error("server {side} ({url}): {what} returned more than {limit} entries (it grew during the audit?); raise the bucket bits")]
    TooMany { side: &'static str, url: String, what: String, limit: usize },
    #[error("the audit did not finish within {0:?} (--timeout)")]
    Timeout(Duration),
}

/// Runs the audit. Never reports divergence for a change in flight; fails with an error
/// (not a verdict) when a server cannot be read completely.
pub async fn audit(cfg: &AuditConfig) -> Result<Report, AuditError> {
    match tokio::time::timeout(cfg.timeout, audit_inner(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(AuditError::Timeout(cfg.timeout)),
    }
}

async fn audit_inner(cfg: &AuditConfig) -> Result<Report, AuditError> {
    let started = Instant::now();
    let (a, b) = tokio::try_join!(Side::open("A", &cfg.a, cfg), Side::open("B", &cfg.b, cfg))?;
    let mut stats = Stats { buckets: 1 << cfg.bucket_bits, ..Stats::default() };
    let mut notes = Vec::new();

    let (pa, pb) =
        tokio::try_join!(a.digest_pass(Prefix::ROOT, cfg.bucket_bits), b.digest_pass(Prefix::ROOT, cfg.bucket_bits))?;
    for (label, pass) in [("A", &pa), ("B", &pb)] {
        if pass.without_uuid > 0 {
            notes.push(format!(
                "{} entries on {label} have no usable entryUUID and were not compared (e.g. {})",
                pass.without_uuid,
                pass.named_without_uuid.join("; ")
            ));
        }
    }
    let mut queue: VecDeque<BucketDiff> = differing(&pa.buckets, &pb.buckets).into();
    stats.differing_buckets = queue.len();
    let (entries_a, entries_b) = (pa.entries, pb.entries);
    drop((pa, pb));

    let mut outcome = Outcome::default();
    // Differing entries of several batches share their re-read rounds (and back-off), up
    // to `leaf_max` of them at a time.
    let mut pending: BTreeMap<Uuid, Tracked> = BTreeMap::new();
    while let Some(plan) = next_plan(&mut queue, cfg.leaf_max) {
        if outcome.confirmed_total >= cfg.max_report as u64 {
            // Enough to make the verdict and the repair decision; the rest is counted.
            let planned = match &plan {
                Plan::Leaf(prefixes) => prefixes.len(),
                Plan::Split(_) => 1,
            };
            outcome.unexamined = (queue.len() + planned) as u64;
            break;
        }
        match plan {
            Plan::Split(prefix) => {
                stats.split_buckets += 1;
                let (sa, sb) = tokio::try_join!(a.digest_pass(prefix, SPLIT_BITS), b.digest_pass(prefix, SPLIT_BITS))?;
                for d in differing(&sa.buckets, &sb.buckets).into_iter().rev() {
                    queue.push_front(d);
                }
            }
            Plan::Leaf(prefixes) => {
                read_leaf(&a, &b, &prefixes, cfg, &mut pending, &mut stats).await?;
                if pending.len() >= cfg.leaf_max {
                    settle(&a, &b, &mut pending, cfg, &mut outcome, &mut stats).await?;
                }
            }
        }
    }
    settle(&a, &b, &mut pending, cfg, &mut outcome, &mut stats).await?;

    let (ctx_a, ctx_b) = tokio::try_join!(a.context_csn(), b.context_csn())?;
    stats.searches = a.searches() + b.searches();
    a.close().await;
    b.close().await;

    // Last-change metadata of the suffix entry alone may differ harmlessly (delta-syncrepl
    // without a checkpoint on the accesslog database, OPENLDAP-NOTES.md).
    let base = cfg.a.base.clone();
    let (harmless, differences): (Vec<_>, Vec<_>) =
        outcome.confirmed.into_iter().partition(|d| d.metadata_only && d.dn.eq_ignore_ascii_case(&base));
    for d in harmless {
        notes.push(format!(
            "the suffix entry's last-change metadata differs (entryCSN A {} vs B {}), its attributes are equal: \
             harmless after delta-syncrepl without a checkpoint on the accesslog database",
            d.entry_csn_a.unwrap_or_default(),
            d.entry_csn_b.unwrap_or_default()
        ));
    }
    let listed_or_counted = differences.len() as u64 + outcome.not_listed;
    let verdict = Verdict::decide(listed_or_counted as usize, outcome.unsettled.len(), outcome.unexamined as usize);
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Report {
        verdict,
        base,
        context_csn_equal: ctx_a == ctx_b,
        a: SideReport { url: cfg.a.url.clone(), entries: entries_a, context_csn: ctx_a.values() },
        b: SideReport { url: cfg.b.url.clone(), entries: entries_b, context_csn: ctx_b.values() },
        differences,
        differences_not_listed: outcome.not_listed,
        unsettled: outcome.unsettled,
        unexamined_buckets: outcome.unexamined,
        notes,
        stats,
    })
}

#[derive(Default)]
struct Outcome {
    confirmed: Vec<Difference>,
    confirmed_total: u64,
    not_listed: u64,
    unsettled: Vec<Difference>,
    unexamined: u64,
}

/// Reads a batch of differing buckets on both servers; the entries that differ join
/// `pending`, with the contextCSN bracket of this read.
async fn read_leaf(
    a: &Side,
    b: &Side,
    prefixes: &[Prefix],
    cfg: &AuditConfig,
    pending: &mut BTreeMap<Uuid, Tracked>,
    stats: &mut Stats,
) -> Result<(), AuditError> {
    let filter = ranges_filter(prefixes);
    let limit = cfg.leaf_max.saturating_mul(LEAF_SLACK);
    let (ra, rb) = tokio::try_join!(a.observe(&filter, limit), b.observe(&filter, limit))?;
    stats.entries_reread += (ra.entries.len() + rb.entries.len()) as u64;
    let ctx = Arc::new(RoundCtx { a_before: ra.before, a_after: ra.after, b_before: rb.before, b_after: rb.after });
    let (mut ea, mut eb) = (ra.entries, rb.entries);
    let uuids: HashSet<Uuid> = ea.keys().chain(eb.keys()).copied().collect();
    for u in uuids {
        let obs = Observation { a: ea.remove(&u), b: eb.remove(&u) };
        if !obs.agrees() {
            stats.candidates += 1;
            pending.insert(u, Tracked { obs, ctx: ctx.clone(), streak: 0, last: Judgement::Moving });
        }
    }
    Ok(())
}

/// Follows the pending differing entries through the re-read rounds until each agrees, is
/// confirmed, or the rounds run out (then it is unsettled). Empties `pending`.
async fn settle(
    a: &Side,
    b: &Side,
    pending: &mut BTreeMap<Uuid, Tracked>,
    cfg: &AuditConfig,
    outcome: &mut Outcome,
    stats: &mut Stats,
) -> Result<(), AuditError> {
    for round in 1..=cfg.settle_rounds {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(cfg.backoff(round)).await;
        stats.rounds += 1;
        let uuids: Vec<Uuid> = pending.keys().copied().collect();
        let (ra, rb) = tokio::try_join!(a.observe_uuids(&uuids), b.observe_uuids(&uuids))?;
        let ctx = Arc::new(RoundCtx { a_before: ra.before, a_after: ra.after, b_before: rb.before, b_after: rb.after });
        let (mut ea, mut eb) = (ra.entries, rb.entries);
        pending.retain(|u, t| {
            let obs = Observation { a: ea.remove(u), b: eb.remove(u) };
            let j = judge(&t.obs, &t.ctx, &obs, &ctx);
            t.streak = if j == Judgement::Holds { t.streak + 1 } else { 0 };
            t.last = j;
            t.obs = obs;
            t.ctx = ctx.clone();
            if j == Judgement::Agrees {
                return false;
            }
            if t.streak >= CONFIRMATIONS {
                outcome.confirmed_total += 1;
                if outcome.confirmed.len() < cfg.max_report {
                    outcome.confirmed.push(Difference::new(*u, &t.obs, None));
                } else {
                    outcome.not_listed += 1;
                }
                return false;
            }
            true
        });
    }
    for (u, t) in std::mem::take(pending) {
        let reason = match t.last {
            Judgement::Lagging => "lagging: a server had not caught up with the other",
            _ => "moving: the entry kept changing",
        };
        if outcome.unsettled.len() < cfg.max_report {
            outcome.unsettled.push(Difference::new(u, &t.obs, Some(reason)));
        }
    }
    Ok(())
}

/// A first-level or split digest pass.
struct Pass {
    buckets: Buckets,
    entries: u64,
    without_uuid: u64,
    named_without_uuid: Vec<String>,
}

/// A read with each server's contextCSN just before and after it.
struct Observed {
    before: ContextCsn,
    entries: HashMap<Uuid, EntryState>,
    after: ContextCsn,
}

/// One server: an open, bound connection with its driver task.
struct Side {
    label: &'static str,
    url: String,
    base: String,
    ldap: Ldap,
    driver: tokio::task::JoinHandle<()>,
    op_timeout: Duration,
    page_size: i32,
    policy: AttrPolicy,
    searches: std::sync::atomic::AtomicU64,
}

impl Side {
    async fn open(label: &'static str, check: &LdapCheck, cfg: &AuditConfig) -> Result<Side, AuditError> {
        let err = |step, e: String, code| AuditError::Ldap {
            side: label,
            url: check.url.clone(),
            step,
            message: e,
            code,
            hint: "",
        };
        if matches!(check.bind, Bind::Simple { .. }) {
            crate::slapd::tls::refuse_cleartext_bind(check).map_err(|m| err("bind", m, None))?;
        }
        let settings = crate::slapd::tls::settings(check, cfg.op_timeout).map_err(|m| err("connect", m, None))?;
        let (conn, mut ldap) =
            match tokio::time::timeout(cfg.op_timeout, LdapConnAsync::with_settings(settings, &check.url)).await {
                Err(_) => return Err(err("connect", format!("no answer within {:?}", cfg.op_timeout), None)),
                Ok(Err(e)) => return Err(err("connect", e.to_string(), None)),
                Ok(Ok(c)) => c,
            };
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "audit LDAP connection ended");
            }
        });
        let bound = match &check.bind {
            Bind::Anonymous => Ok(()),
            Bind::SaslExternal => {
                ldap.with_timeout(cfg.op_timeout).sasl_external_bind().await.and_then(|r| r.success().map(drop))
            }
            Bind::Simple { dn, password_file } => {
                let password =
                    read_password(password_file).await.map_err(|m| err("read bind password file", m, None))?;
                ldap.with_timeout(cfg.op_timeout).simple_bind(dn, &password).await.and_then(|r| r.success().map(drop))
            }
        };
        if let Err(e) = bound {
            driver.abort();
            return Err(err("bind", e.to_string(), result_code(&e)));
        }
        Ok(Side {
            label,
            url: check.url.clone(),
            base: check.base.clone(),
            ldap,
            driver,
            op_timeout: cfg.op_timeout,
            page_size: cfg.page_size,
            policy: cfg.policy.clone(),
            searches: Default::default(),
        })
    }

    fn searches(&self) -> u64 {
        self.searches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self, step: &'static str, e: ldap3::LdapError) -> AuditError {
        let code = result_code(&e);
        let hint = match code {
            Some(4) => " (sizeLimitExceeded: give the audit identity olcLimits size=unlimited, or bind as the rootDN)",
            Some(3) => " (timeLimitExceeded: give the audit identity olcLimits time=unlimited)",
            Some(50) => " (insufficientAccess: the audit identity needs read access to every entry)",
            Some(12) => " (unavailableCriticalExtension: the server refuses a control the audit sends)",
            _ => "",
        };
        AuditError::Ldap { side: self.label, url: self.url.clone(), step, message: e.to_string(), code, hint }
    }

    /// A paged subtree search under the base; every entry goes to `each`. At most `limit`
    /// entries (the search is abandoned beyond), referrals and intermediate messages skipped.
    async fn search(&self, filter: &str, limit: usize, mut each: impl FnMut(RawEntry)) -> Result<usize, AuditError> {
        self.searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ldap = self.ldap.clone();
        ldap.with_timeout(self.op_timeout).with_controls(ManageDsaIt);
        let adapter = PagedResults::<String, Vec<String>>::new(self.page_size);
        let mut stream = ldap
            .streaming_search_with(adapter, &self.base, Scope::Subtree, filter, self.policy.request.clone())
            .await
            .map_err(|e| self.failed("search", e))?;
        let mut n = 0;
        loop {
            let item = match stream.next().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => return Err(self.failed("search", e)),
            };
            if item.is_ref() || item.is_intermediate() {
                continue;
            }
            n += 1;
            if n > limit {
                let _ = stream.finish().await;
                return Err(AuditError::TooMany {
                    side: self.label,
                    url: self.url.clone(),
                    what: format!("search {filter:.200}"),
                    limit,
                });
            }
            match parse_entry(item.0) {
                Some(entry) => each(entry),
                None => {
                    let _ = stream.finish().await;
                    return Err(AuditError::Ldap {
                        side: self.label,
                        url: self.url.clone(),
                        step: "search",
                        message: "malformed search result entry".into(),
                        code: None,
                        hint: "",
                    });
                }
            }
        }
        stream.finish().await.success().map_err(|e| self.failed("search", e))?;
        Ok(n)
    }

    async fn digest_pass(&self, prefix: Prefix, width: u32) -> Result<Pass, AuditError> {
        let mut pass =
            Pass { buckets: Buckets::new(prefix, width), entries: 0, without_uuid: 0, named_without_uuid: vec![] };
        let policy = &self.policy;
        self.search(&prefix.filter(), usize::MAX, |entry| {
            let d = digest_entry(entry, policy);
            pass.entries += 1;
            if !pass.buckets.add(&d) && prefix.is_root() {
                pass.without_uuid += 1;
                if pass.named_without_uuid.len() < MAX_NAMED_WITHOUT_UUID {
                    pass.named_without_uuid.push(String::from_utf8_lossy(&d.dn).into_owned());
                }
            }
        })
        .await?;
        Ok(pass)
    }

    /// The entries matching `filter` (with a UUID) between two contextCSN reads.
    async fn observe(&self, filter: &str, limit: usize) -> Result<Observed, AuditError> {
        self.observe_all(&[(filter.to_string(), limit)]).await
    }

    /// The entries with these UUIDs, read by equality in chunks, between two contextCSN reads.
    async fn observe_uuids(&self, uuids: &[Uuid]) -> Result<Observed, AuditError> {
        let searches: Vec<(String, usize)> =
            uuids.chunks(MAX_UUIDS_PER_SEARCH).map(|chunk| (uuids_filter(chunk), chunk.len())).collect();
        self.observe_all(&searches).await
    }

    /// The entries (with a UUID) of `searches` (filter, size limit), all between two
    /// contextCSN reads.
    async fn observe_all(&self, searches: &[(String, usize)]) -> Result<Observed, AuditError> {
        let before = self.context_csn().await?;
        let mut entries = HashMap::new();
        let policy = &self.policy;
        for (filter, limit) in searches {
            self.search(filter, *limit, |entry| {
                let d = digest_entry(entry, policy);
                if let Some(u) = d.uuid {
                    entries.insert(u, EntryState::from(d));
                }
            })
            .await?;
        }
        let after = self.context_csn().await?;
        Ok(Observed { before, entries, after })
    }

    async fn context_csn(&self) -> Result<ContextCsn, AuditError> {
        self.searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut ldap = self.ldap.clone();
        let mut stream = ldap
            .with_timeout(self.op_timeout)
            .streaming_search(&self.base, Scope::Base, "(objectClass=*)", vec!["contextCSN"])
            .await
            .map_err(|e| self.failed("read contextCSN", e))?;
        let mut values = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(item)) if !item.is_ref() && !item.is_intermediate() => {
                    let entry = parse_entry(item.0).unwrap_or(RawEntry { dn: vec![], attrs: vec![] });
                    for (name, vals) in entry.attrs {
                        if name.eq_ignore_ascii_case(b"contextCSN") {
                            values.extend(vals.iter().map(|v| String::from_utf8_lossy(v).into_owned()));
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(self.failed("read contextCSN", e)),
            }
        }
        stream.finish().await.success().map_err(|e| self.failed("read contextCSN", e))?;
        Ok(ContextCsn::parse(&values))
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ldap.unbind()).await;
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn result_code(e: &ldap3::LdapError) -> Option<u32> {
    match e {
        ldap3::LdapError::LdapResult { result } => Some(result.rc),
        _ => None,
    }
}

/// A differing entry the audit follows through its rounds.
#[derive(Debug, Clone)]
struct Tracked {
    obs: Observation,
    /// The contextCSN bracket of the read that made `obs`.
    ctx: Arc<RoundCtx>,
    streak: u32,
    last: Judgement,
}
