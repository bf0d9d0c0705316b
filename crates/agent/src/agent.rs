//! One reconciliation cycle: make sure the identity is usable, poll the
//! assignments, and bring every configured certificate to the server's
//! current version (request, renew, fetch, check, install, reload, verify,
//! roll back on failure), then report.

use std::time::Duration;

use anyhow::Context;
use certflow_api::agent::{
    AgentCertificateRequest, Assignment, CertificateBundle, DeploymentReport, DeploymentStatus,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::config::{CertConfig, Config, KeySource, OnRevoked};
use crate::deploy;
use crate::install::{Installer, Material, VersionMeta, fsync_dir};
use crate::pki;
use crate::report;
use crate::state::{CertState, StateDir, write_atomic};

/// The agent: configuration, connection, one installer per certificate.
pub struct Agent {
    cfg: Config,
    state: StateDir,
    client: Client,
    certs: Vec<(CertConfig, Installer)>,
    dry_run: bool,
    /// Changes a `--dry-run` cycle said it would make.
    planned: usize,
    reported_start: bool,
}

/// A uniformly random number in [0, 1) from the system's generator.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A time as people read it in the dry run's lines (RFC 3339, UTC).
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The last line of a `--dry-run` cycle: how many changes it would make and
/// how many certificates are served at their current version.
pub fn dry_run_summary(changes: usize, up_to_date: usize, configured: usize) -> String {
    let certs = |n: usize| format!("{n} certificate{}", if n == 1 { "" } else { "s" });
    match (changes, up_to_date == configured) {
        (0, true) => format!("nothing to do: {} up to date", certs(up_to_date)),
        (0, false) => format!(
            "nothing would change now: {up_to_date} of {} up to date",
            certs(configured)
        ),
        (n, _) => format!(
            "{n} change{} would be made; {up_to_date} of {} up to date",
            if n == 1 { "" } else { "s" },
            certs(configured)
        ),
    }
}

/// Delay before retry `attempt` (1-based) while the server is down:
/// exponential from 1 s, capped, with "equal jitter" (half fixed, half
/// random) so a fleet that lost the server together does not return together.
pub fn backoff(attempt: u32, cap: Duration, unit: f64) -> Duration {
    let exp = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(20)).min(cap);
    exp.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// The pause between polls when the server answered: the poll interval ±10 %.
pub fn poll_pause(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

impl Agent {
    /// Builds the agent: state directory, client, installers (and cleans up
    /// any install a killed agent left half-way).
    pub fn new(cfg: Config, dry_run: bool) -> anyhow::Result<Self> {
        let state = if dry_run {
            StateDir::existing(&cfg.state_dir)
        } else {
            StateDir::open(&cfg.state_dir)?
        };
        let client = Client::new(&cfg, state.clone())?;
        let mut certs = Vec::new();
        for c in &cfg.certificates {
            let inst = Installer::new(c).with_context(|| format!("certificate {}", c.label()))?;
            if !dry_run {
                inst.recover().with_context(|| {
                    format!(
                        "certificate {}: recovering an interrupted install",
                        c.label()
                    )
                })?;
            }
            certs.push((c.clone(), inst));
        }
        Ok(Self {
            cfg,
            state,
            client,
            certs,
            dry_run,
            planned: 0,
            reported_start: false,
        })
    }

    /// Whether the last poll brought a changed list.
    pub fn changed(&self) -> bool {
        self.client.changed()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One cycle; `Ok(true)` when every certificate is served at the
    /// server's current version. A shutdown request ends the poll early but
    /// never an install that has begun.
    pub async fn cycle(
        &mut self,
        wait: u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        if self.dry_run && !self.client.enrolled() {
            println!(
                "would enrol at {} (no identity in {})",
                self.cfg.server,
                self.cfg.state_dir.display()
            );
            return Ok(false);
        }
        if !self.dry_run {
            self.client.ensure_identity().await?;
        }
        tokio::select! {
            r = self.client.poll(wait) => { r.context("polling assignments")?; }
            _ = shutdown.changed() => return Ok(true),
        }
        let mut items = Vec::new();
        let mut all_good = true;
        let mut up_to_date = 0;
        self.planned = 0;
        for i in 0..self.certs.len() {
            let label = self.certs[i].0.label();
            match self.reconcile(i).await {
                Ok((entry, good)) => {
                    all_good &= good;
                    up_to_date += usize::from(good);
                    items.extend(entry);
                }
                Err(e) => {
                    all_good = false;
                    if crate::client::is_unreachable(&e) {
                        return Err(e);
                    }
                    tracing::error!(certificate = %label, error = %format!("{e:#}"), "certificate not brought up to date");
                }
            }
        }
        self.reported_start = true;
        if self.dry_run {
            // Silence would read as "did not run": say what was found.
            println!(
                "{}",
                dry_run_summary(self.planned, up_to_date, self.certs.len())
            );
        }
        if !self.dry_run {
            report::send(&mut self.client, items)
                .await
                .context("sending the report")?;
        }
        Ok(all_good)
    }

    /// `once`'s discovery: one pass reported to the server (an enrolled
    /// identity is needed: run after a cycle); with `--dry-run` only what
    /// would be reported is printed. Nothing to do without `[discovery]`.
    pub async fn discovery(&mut self) -> anyhow::Result<()> {
        let Some(d) = self.cfg.discovery.clone() else {
            return Ok(());
        };
        if self.dry_run {
            let out = crate::discover::discover(&d).await;
            println!(
                "would report {} discovered certificate(s){}",
                out.items.len(),
                if out.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} source(s) not read)", out.errors.len())
                }
            );
            for i in &out.items {
                println!("  {}: {}", i.source, i.fingerprint_sha256);
            }
            return Ok(());
        }
        crate::discover::report(&d, &mut self.client)
            .await
            .map(|_| ())
    }

    /// The state directory (the discovery loop opens its own connection from it).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn assignment_for(&self, cfg: &CertConfig) -> Option<Assignment> {
        self.client
            .assignments()?
            .iter()
            .find(|a| match (&cfg.id, &cfg.name) {
                (Some(id), _) => a.certificate_id == *id,
                (None, Some(n)) => &a.name == n,
                (None, None) => false,
            })
            .cloned()
    }

    /// The server's assignment for this certificate; for an agent-keyed
    /// certificate not yet known to the server, the request that creates it.
    /// `None`: nothing to install this cycle.
    async fn assignment_or_request(
        &mut self,
        cfg: &CertConfig,
        label: &str,
    ) -> anyhow::Result<Option<Assignment>> {
        match self.assignment_for(cfg) {
            Some(a) => Ok(Some(a)),
            None if cfg.key == KeySource::Agent && cfg.id.is_none() => {
                if self.dry_run {
                    println!(
                        "{label}: would generate a {:?} key here and request a certificate for {:?}",
                        cfg.key_type, cfg.names
                    );
                    self.planned += 1;
                    return Ok(None);
                }
                let key = self.agent_key(label, cfg, false)?;
                let req = AgentCertificateRequest {
                    name: label.to_string(),
                    csr: pki::csr(&key, &cfg.names[0], &cfg.names)?,
                    team: cfg.team.clone(),
                    issuer: cfg.issuer.clone(),
                    profile: cfg.profile.clone(),
                    validity_days: cfg.validity_days,
                    validity_seconds: cfg.validity_seconds,
                };
                let a = self
                    .client
                    .request_certificate(&req)
                    .await
                    .context("requesting the certificate")?;
                tracing::info!(certificate = %label, id = %a.certificate_id, version = a.version, "certificate requested");
                Ok(Some(a))
            }
            None => {
                if self.dry_run {
                    println!("{label}: not assigned to this agent (yet): nothing to install");
                }
                tracing::warn!(certificate = %label, "not assigned to this agent (yet)");
                Ok(None)
            }
        }
    }

    /// Brings one certificate up to date: (report entry, served at the current version).
    async fn reconcile(&mut self, i: usize) -> anyhow::Result<(Option<DeploymentReport>, bool)> {
        let (cfg, inst) = self.certs[i].clone();
        let label = cfg.label();
        let mut st = self.state.cert_state(&label);
        let Some(a) = self.assignment_or_request(&cfg, &label).await? else {
            return Ok((None, false));
        };
        if a.status == "revoked" {
            return self.revoked(&cfg, &inst, &a).await;
        }
        if a.status != "active" {
            if self.dry_run {
                println!("{label}: {}: left in place, not renewed", a.status);
            }
            tracing::info!(certificate = %label, status = %a.status, "no longer active: left in place, not renewed");
            return Ok((None, true));
        }
        let current = inst.current();
        if current
            .as_ref()
            .is_some_and(|m| m.fingerprint_sha256 == a.fingerprint_sha256)
            && inst.targets_linked()
        {
            if self.dry_run {
                println!(
                    "{label}: up to date (version {}, serial {}, until {})",
                    a.version,
                    a.serial,
                    rfc3339(a.not_after)
                );
            }
            let entry = (!self.reported_start).then(|| {
                report::entry(
                    a.certificate_id,
                    current.as_ref(),
                    DeploymentStatus::Installed,
                    None,
                    None,
                )
            });
            return Ok((entry, true));
        }
        let now = OffsetDateTime::now_utc();
        if st.attempted_version == Some(a.version)
            && st.last_status != Some(DeploymentStatus::Installed)
            && st.retry_after.is_some_and(|t| now < t)
        {
            if let (true, Some(t)) = (self.dry_run, st.retry_after) {
                println!(
                    "{label}: version {} failed here; next attempt after {}",
                    a.version,
                    rfc3339(t)
                );
            }
            tracing::debug!(certificate = %label, version = a.version, "failed version: waiting before the next attempt");
            return Ok((None, false));
        }
        if self.dry_run {
            println!(
                "{label}: would install version {} (serial {}, until {}) over {}",
                a.version,
                a.serial,
                rfc3339(a.not_after),
                current
                    .as_ref()
                    .map_or("nothing".into(), |m| format!("version {}", m.version))
            );
            for line in inst.describe() {
                println!("  {line}");
            }
            self.planned += 1;
            return Ok((None, false));
        }
        let (status, served, error, attempted) = self.deploy(&cfg, &inst, a.clone()).await?;
        let good = status == DeploymentStatus::Installed;
        st.certificate_id = Some(a.certificate_id);
        st.attempted_version = Some(attempted);
        st.last_status = Some(status);
        st.last_error = error.clone();
        st.updated_at = Some(OffsetDateTime::now_utc());
        if good {
            st.failures = 0;
            st.retry_after = None;
        } else {
            st.failures = st.failures.saturating_add(1);
            let pause = self
                .cfg
                .poll_interval()
                .saturating_mul(1 << st.failures.saturating_sub(1).min(10))
                .min(Duration::from_secs(3600));
            st.retry_after = Some(OffsetDateTime::now_utc() + pause);
        }
        self.state.save_cert_state(&label, &st)?;
        let entry = report::entry(
            a.certificate_id,
            served.as_ref(),
            status,
            Some(attempted),
            error,
        );
        Ok((Some(entry), good))
    }

    /// The server revoked the certificate without a replacement (a
    /// replacement would be an active new version): the assignment's
    /// `revoked` is the instruction to take it out of service. With
    /// `on_revoked = "remove"` the agent's files go and the service is
    /// reloaded, once per version; with `keep` they stay and a warning is
    /// logged once per version. The state directory remembers which.
    async fn revoked(
        &mut self,
        cfg: &CertConfig,
        inst: &Installer,
        a: &Assignment,
    ) -> anyhow::Result<(Option<DeploymentReport>, bool)> {
        let label = cfg.label();
        let mut st = self.state.cert_state(&label);
        match revoked_action(cfg.on_revoked, &st, a.version) {
            RevokedAction::Nothing => return Ok((None, true)),
            RevokedAction::Warn => {
                tracing::warn!(certificate = %label, version = a.version, "revoked by the server without a replacement: left in place (on_revoked = \"keep\") and not renewed; clients that check revocation refuse it");
                st.revoked_warned = Some(a.version);
            }
            RevokedAction::Remove if self.dry_run => {
                println!(
                    "{label}: revoked (version {}): would remove the installed files and reload",
                    a.version
                );
                self.planned += 1;
                return Ok((None, false));
            }
            RevokedAction::Remove => {
                let removed = inst.remove().context("removing the revoked certificate")?;
                tracing::warn!(certificate = %label, version = a.version, served = ?removed.as_ref().map(|m| m.version), "revoked by the server without a replacement: installed files removed (on_revoked = \"remove\")");
                // Only a service that was served something needs to let go of it.
                if removed.is_some()
                    && let Some(r) = &cfg.reload
                    && let Err(e) = deploy::reload(r).await
                {
                    tracing::error!(certificate = %label, error = %format!("{e:#}"), "reload after removing the revoked certificate failed");
                }
                st.revoked_removed = Some(a.version);
            }
        }
        if !self.dry_run {
            st.certificate_id = Some(a.certificate_id);
            st.updated_at = Some(OffsetDateTime::now_utc());
            self.state.save_cert_state(&label, &st)?;
        }
        Ok((None, true))
    }

    /// Fetches, checks, installs, reloads and verifies one version; rolls
    /// back on failure. Returns (status, what is served now, error, version attempted).
    async fn deploy(
        &mut self,
        cfg: &CertConfig,
        inst: &Installer,
        mut a: Assignment,
    ) -> anyhow::Result<(DeploymentStatus, Option<VersionMeta>, Option<String>, u32)> {
        let label = cfg.label();
        if a.not_after <= OffsetDateTime::now_utc() {
            // Off for longer than the certificate lived: renew at once.
            let csr = self.rotation_csr(&label, cfg)?;
            tracing::info!(certificate = %label, "the current version expired: renewing now");
            a = self
                .client
                .renew_certificate(a.certificate_id, csr)
                .await
                .context("renewing the expired certificate")?;
        }
        let (bundle, leaf, key_pem, from_next) =
            self.keyed_bundle(&label, cfg, a.certificate_id).await?;
        let chain = pki::pem_certs(&bundle.chain_pem)?;
        let m = Material {
            certificate_id: bundle.certificate_id,
            version: bundle.version,
            leaf_der: leaf.clone(),
            chain_der: chain.clone(),
            key_pem,
            pkcs12_password: pkcs12_password(cfg)?,
        };
        let requested = match cfg.key {
            KeySource::Agent => cfg.names.clone(),
            KeySource::Server => a.names.clone(),
        };
        let attempted = bundle.version;
        let before = inst.current();
        let installed = match inst.install(&m, &requested) {
            Ok(meta) => meta,
            Err(e) => {
                let e = format!("install refused: {e:#}");
                tracing::error!(certificate = %label, version = attempted, error = %e, "not installed");
                return Ok((DeploymentStatus::Failed, before, Some(e), attempted));
            }
        };
        tracing::info!(certificate = %label, version = attempted, serial = %installed.serial, "installed");
        let mut failure = None;
        if let Some(r) = &cfg.reload
            && let Err(e) = deploy::reload(r).await
        {
            failure = Some(format!("{e:#}"));
        }
        if failure.is_none()
            && let Some(v) = &cfg.verify
            && let Err(e) = deploy::verify(v, &leaf, &chain, &installed.fingerprint_sha256).await
        {
            failure = Some(format!("{e:#}"));
        }
        let Some(failure) = failure else {
            if from_next {
                self.promote_key(&label)?;
            }
            // Say only what was done: reload and verify are both optional.
            let done = match (cfg.reload.is_some(), cfg.verify.is_some()) {
                (true, true) => "reloaded and verified",
                (true, false) => "reloaded (no [certificate.verify])",
                (false, true) => "verified (no [certificate.reload])",
                (false, false) => "in place (no reload or verify configured)",
            };
            tracing::info!(certificate = %label, version = attempted, "{done}");
            return Ok((
                DeploymentStatus::Installed,
                Some(installed),
                None,
                attempted,
            ));
        };
        tracing::error!(certificate = %label, version = attempted, error = %failure, "deployment failed: rolling back");
        Ok(roll_back(cfg, inst, &label, &failure, attempted).await)
    }

    /// The bundle of certificate `id` and the key its leaf is for: the
    /// server's for a server key, else this host's (installed or pending);
    /// when the leaf is for neither, a version for a new key is requested
    /// first. Returns (bundle, leaf, key, whether the key is the pending one).
    async fn keyed_bundle(
        &mut self,
        label: &str,
        cfg: &CertConfig,
        id: uuid::Uuid,
    ) -> anyhow::Result<(CertificateBundle, Vec<u8>, Option<Zeroizing<String>>, bool)> {
        let mut bundle = self
            .client
            .bundle(id)
            .await
            .context("fetching the bundle")?;
        let mut leaf = first_cert(&bundle.certificate_pem)?;
        let (key_pem, from_next) = match cfg.key {
            KeySource::Server => (
                Some(Zeroizing::new(bundle.key_pem.take().context(
                    "the server sent no key for a server-keyed certificate",
                )?)),
                false,
            ),
            KeySource::Agent => match self.matching_key(label, &leaf)? {
                Some((k, next)) => (Some(k), next),
                None => {
                    // Not our key (state lost, or keyed elsewhere): a new key, a new version.
                    tracing::warn!(certificate = %label, "the server's version is not for a key of this host: requesting one for a new key");
                    let csr = self.rotation_csr(label, cfg)?;
                    self.client
                        .renew_certificate(id, csr)
                        .await
                        .context("renewing for a new key")?;
                    bundle = self
                        .client
                        .bundle(id)
                        .await
                        .context("fetching the bundle")?;
                    leaf = first_cert(&bundle.certificate_pem)?;
                    let (k, next) = self
                        .matching_key(label, &leaf)?
                        .context("the renewed certificate is still not for this host's key")?;
                    (Some(k), next)
                }
            },
        };
        Ok((bundle, leaf, key_pem, from_next))
    }

    /// A CSR for a rotation: a new (pending) key for agent keys, none for server keys.
    fn rotation_csr(&self, label: &str, cfg: &CertConfig) -> anyhow::Result<Option<String>> {
        if cfg.key == KeySource::Server {
            return Ok(None);
        }
        let key = self.agent_key(label, cfg, true)?;
        Ok(Some(pki::csr(&key, &cfg.names[0], &cfg.names)?))
    }

    /// The host's key for this certificate (`next`: the one awaiting its
    /// certificate), generated on first use; it never leaves the state directory.
    fn agent_key(
        &self,
        label: &str,
        cfg: &CertConfig,
        next: bool,
    ) -> anyhow::Result<Zeroizing<String>> {
        let path = self.state.key(label, next);
        if let Some(k) = self.state.read_secret(&path) {
            return Ok(k);
        }
        let k = pki::generate_key(cfg.key_type)?;
        write_atomic(&path, k.as_bytes(), 0o600)?;
        Ok(k)
    }

    /// The local key the certificate is for: (key, is the pending one).
    fn matching_key(
        &self,
        label: &str,
        leaf: &[u8],
    ) -> anyhow::Result<Option<(Zeroizing<String>, bool)>> {
        let want = pki::cert_info(leaf)?.public_key;
        for next in [false, true] {
            if let Some(k) = self.state.read_secret(&self.state.key(label, next))
                && pki::key_public(&k).ok().as_ref() == Some(&want)
            {
                return Ok(Some((k, next)));
            }
        }
        Ok(None)
    }

    /// The pending key became the installed one.
    fn promote_key(&self, label: &str) -> anyhow::Result<()> {
        let (next, cur) = (self.state.key(label, true), self.state.key(label, false));
        std::fs::rename(&next, &cur)?;
        if let Some(d) = cur.parent() {
            fsync_dir(d)?;
        }
        Ok(())
    }
}

/// What a revoked assignment calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevokedAction {
    /// Already done for this version.
    Nothing,
    /// Warn (and remember the version).
    Warn,
    /// Remove the files (and remember the version).
    Remove,
}

/// Once per revoked version: a warning with `keep`, a removal with `remove`.
fn revoked_action(on: OnRevoked, st: &CertState, version: u32) -> RevokedAction {
    match on {
        OnRevoked::Keep if st.revoked_warned != Some(version) => RevokedAction::Warn,
        OnRevoked::Remove if st.revoked_removed != Some(version) => RevokedAction::Remove,
        _ => RevokedAction::Nothing,
    }
}

/// After a failed reload or verify: the previous files back and the service
/// reloaded onto them. Returns (status, what is served now, error, version
/// attempted) for the report.
async fn roll_back(
    cfg: &CertConfig,
    inst: &Installer,
    label: &str,
    failure: &str,
    attempted: u32,
) -> (DeploymentStatus, Option<VersionMeta>, Option<String>, u32) {
    let back = match inst.rollback() {
        Ok(back) => back,
        Err(e) => {
            let e = format!("{failure}; rollback impossible: {e:#}");
            return (DeploymentStatus::Broken, inst.current(), Some(e), attempted);
        }
    };
    if let Some(r) = &cfg.reload
        && let Err(e) = deploy::reload(r).await
    {
        let e = format!("{failure}; reload after rollback failed too: {e:#}");
        return (DeploymentStatus::Broken, back, Some(e), attempted);
    }
    let to = back
        .as_ref()
        .map_or("nothing".into(), |m| format!("version {}", m.version));
    tracing::warn!(certificate = %label, restored = %to, "rolled back");
    (
        DeploymentStatus::Failed,
        back,
        Some(format!("{failure}; rolled back to {to}")),
        attempted,
    )
}

/// The PKCS#12 password from its file, without the final line break.
fn pkcs12_password(cfg: &CertConfig) -> anyhow::Result<Option<Zeroizing<String>>> {
    Ok(match &cfg.install.pkcs12_password_file {
        Some(f) => Some(Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("pkcs12 password {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )),
        None => None,
    })
}

fn first_cert(pem: &str) -> anyhow::Result<Vec<u8>> {
    pki::pem_certs(pem)?
        .into_iter()
        .next()
        .context("the bundle holds no certificate")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A dry run always ends with one line, "nothing to do" only when
    /// nothing would change and everything is served current.
    #[test]
    fn a_dry_run_says_what_it_found() {
        assert_eq!(
            dry_run_summary(0, 2, 2),
            "nothing to do: 2 certificates up to date"
        );
        assert_eq!(
            dry_run_summary(0, 1, 1),
            "nothing to do: 1 certificate up to date"
        );
        assert_eq!(
            dry_run_summary(0, 0, 1),
            "nothing would change now: 0 of 1 certificate up to date"
        );
        assert_eq!(
            dry_run_summary(1, 1, 2),
            "1 change would be made; 1 of 2 certificates up to date"
        );
    }

    /// A revoked version is warned about, or removed, once; a later
    /// revoked version again; switching `keep` to `remove` still removes.
    #[test]
    fn a_revoked_version_is_acted_on_once() {
        let mut st = CertState::default();
        assert_eq!(revoked_action(OnRevoked::Keep, &st, 3), RevokedAction::Warn);
        st.revoked_warned = Some(3);
        assert_eq!(
            revoked_action(OnRevoked::Keep, &st, 3),
            RevokedAction::Nothing
        );
        assert_eq!(revoked_action(OnRevoked::Keep, &st, 4), RevokedAction::Warn);
        assert_eq!(
            revoked_action(OnRevoked::Remove, &st, 3),
            RevokedAction::Remove
        );
        st.revoked_removed = Some(3);
        assert_eq!(
            revoked_action(OnRevoked::Remove, &st, 3),
            RevokedAction::Nothing
        );
        assert_eq!(
            revoked_action(OnRevoked::Remove, &st, 5),
            RevokedAction::Remove
        );
    }

    /// The state survives a restart: a saved removal is not repeated.
    #[test]
    fn the_removal_is_remembered_in_the_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let mut st = state.cert_state("www");
        assert_eq!(
            revoked_action(OnRevoked::Remove, &st, 2),
            RevokedAction::Remove
        );
        st.revoked_removed = Some(2);
        state.save_cert_state("www", &st).unwrap();
        let again = StateDir::open(tmp.path()).unwrap().cert_state("www");
        assert_eq!(
            revoked_action(OnRevoked::Remove, &again, 2),
            RevokedAction::Nothing
        );
    }

    #[test]
    fn on_revoked_defaults_to_keep_and_accepts_remove_only_by_name() {
        let parse = |extra: &str| {
            toml::from_str::<CertConfig>(&format!(
                "name = \"www\"\n{extra}\n[install]\ncert = \"/tmp/www.crt\"\n"
            ))
        };
        assert_eq!(parse("").unwrap().on_revoked, OnRevoked::Keep);
        assert_eq!(
            parse("on_revoked = \"remove\"").unwrap().on_revoked,
            OnRevoked::Remove
        );
        let err = parse("on_revoked = \"delete\"").unwrap_err().to_string();
        assert!(err.contains("keep") && err.contains("remove"), "{err}");
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, cap, 1.0), cap);
        assert_eq!(backoff(30, cap, 0.0), cap / 2);
    }

    /// A fleet of simulated agents that lost the server at the same moment
    /// comes back spread out, not in one burst.
    #[test]
    fn a_fleet_returns_spread_out() {
        let cap = Duration::from_secs(300);
        let mut delays: Vec<f64> = (0..1000)
            .map(|_| {
                (1..=10)
                    .map(|n| backoff(n, cap, random_unit()))
                    .sum::<Duration>()
                    .as_secs_f64()
            })
            .collect();
        delays.sort_by(f64::total_cmp);
        let (lo, hi) = (delays[0], delays[999]);
        assert!(hi - lo > 100.0, "spread {lo}..{hi}");
        // No single second holds more than 2 % of the fleet.
        let mut per_second = std::collections::HashMap::new();
        for d in &delays {
            *per_second.entry(*d as u64).or_insert(0) += 1;
        }
        let worst = per_second.values().max().copied().unwrap_or(0);
        assert!(worst <= 20, "{worst} agents retried within one second");
        let p = poll_pause(Duration::from_secs(100), random_unit());
        assert!(p >= Duration::from_secs(90) && p <= Duration::from_secs(110));
    }
}
