//! Issuance: one `make` for every credential kind, its lifetime rules, its
//! lease and evidence committed together, and revocation.

use super::*;

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Make<'a> {
    /// An X.509-SVID certifying the CSR's key.
    /// `dns_names`: DNS SANs beside the SPIFFE ID, from a registration
    /// entry (never from the caller's CSR).
    X509 {
        csr: &'a [u8],
        dns_names: &'a [String],
    },
    /// A JWT-SVID for these audiences.
    Jwt { audience: &'a [String] },
    /// An opaque API token with these scopes.
    Token { scopes: &'a [String] },
    /// A login role in the configured backend, from a template.
    DatabaseRole { template: &'a str },
}

/// What was issued.
#[derive(Debug)]
pub(crate) enum Made {
    X509(IssuedSvid),
    Jwt(String),
    Token(String),
    DatabaseRole(BackendCredential),
}

impl Made {
    /// The X.509-SVID's chain, leaf first (empty for other kinds).
    pub(crate) fn x509_chain(self) -> Vec<Vec<u8>> {
        match self {
            Self::X509(issued) => issued.chain_der,
            _ => Vec::new(),
        }
    }

    /// The JWT or API token (empty for an X.509-SVID).
    pub(crate) fn secret(self) -> String {
        match self {
            Self::Jwt(token) | Self::Token(token) => token,
            Self::X509(_) | Self::DatabaseRole(_) => String::new(),
        }
    }
}

/// A lease event's evidence, with what every one of them records.
pub fn lease_record(lease: &Lease, actor: &str, action: &str) -> EvidenceRecord {
    let mut record = EvidenceRecord::new(actor, action, crate::SPEC.name);
    record.target.nhi_id.clone_from(&lease.identity_id);
    record.target.lease_id.clone_from(&lease.lease_id);
    record.target.credential_serial = truncate_utf8(lease.credential_ref.clone(), 256);
    record.incident_ref = truncate_utf8(lease.incident_ref.clone(), 256);
    let attributes = &mut record.attributes;
    attributes.insert("kind".into(), lease.kind.as_str().into());
    attributes.insert("holder".into(), truncate_utf8(lease.holder.clone(), 1024));
    if !lease.spiffe_id.is_empty() {
        attributes.insert(
            "spiffe_id".into(),
            truncate_utf8(lease.spiffe_id.clone(), 1024),
        );
    }
    attributes.insert("expires_at_ns".into(), lease.expires_at_ns.to_string());
    attributes.insert("state".into(), lease.state.as_str().into());
    if !lease.decision_id.is_empty() {
        attributes.insert("decision_id".into(), lease.decision_id.clone());
    }
    record
}

impl BrokerServer {
    /// The lifetime to issue for: the request's (or `default`), within the
    /// broker's max and authority's obligation, and never beyond the
    /// window. Returns (ttl seconds, expiry ns).
    pub(super) fn lifetime(
        &self,
        requested: u32,
        default: u64,
        allowed: &Allowed,
        task: &Task,
        now: i64,
    ) -> Result<(i64, i64), Status> {
        let mut ttl = if requested == 0 {
            default
        } else {
            u64::from(requested)
        };
        if let Some(cap) = allowed.max_ttl() {
            if requested != 0 && u64::from(requested) > cap {
                return Err(Status::failed_precondition(format!(
                    "ttl_seconds: {requested} is above the {cap} s the policy allows (decision {})",
                    allowed.decision.decision_id
                )));
            }
            ttl = ttl.min(cap);
        }
        let ttl = i64::try_from(ttl.min(self.shared.ttl.max)).unwrap_or(i64::MAX);
        let expires = now
            .saturating_add(ttl.saturating_mul(NS))
            .min(task.window_end_ns);
        Ok(((expires - now) / NS, expires))
    }

    pub(crate) fn check_ttl(&self, requested: u32) -> Result<(), Status> {
        if u64::from(requested) > self.shared.ttl.max {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {requested} is above the broker's maximum of {} s",
                self.shared.ttl.max
            )));
        }
        Ok(())
    }

    /// The checks every issuance makes first: the identity, the TTL and
    /// the task. Returns the task and the time of the request.
    pub(crate) fn checked(
        &self,
        identity_id: &str,
        ttl_seconds: u32,
        task: Option<&pb::Task>,
    ) -> Result<(Task, i64), Status> {
        let now = now_ns();
        uuid("identity_id", identity_id)?;
        self.check_ttl(ttl_seconds)?;
        Ok((check_task(task, now)?, now))
    }

    /// Refuses a task window that has not started yet.
    pub(super) fn started(task: &Task, now: i64) -> Result<(), Status> {
        if task.window_start_ns > now + NS {
            return Err(Status::failed_precondition(
                "task.window_start: the task window has not started; credentials are issued inside it",
            ));
        }
        Ok(())
    }

    /// The live lease of the API token whose SHA-256 is `hash`: what
    /// `Introspect` answers, and what a rotation checks to confirm an old
    /// token is rejected.
    pub(crate) async fn introspection(&self, hash: &[u8]) -> Result<Option<Lease>, StoreError> {
        let lease = self.shared.store.lease_by_token(hash).await?;
        Ok(lease.filter(|l| l.live(now_ns())))
    }

    /// The lease for a credential issued under `allowed`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lease(
        &self,
        kind: Kind,
        identity_id: &str,
        holder: &str,
        spiffe_id: &str,
        task: &Task,
        allowed: &Allowed,
        (ttl, expires): (i64, i64),
        now: i64,
        credential_ref: String,
    ) -> Lease {
        let renewable = kind == Kind::ApiToken;
        let max_ttl = i64::try_from(
            allowed
                .max_ttl()
                .unwrap_or(self.shared.ttl.max)
                .min(self.shared.ttl.max),
        )
        .unwrap_or(i64::MAX);
        let max_expires = if renewable {
            now.saturating_add(max_ttl.saturating_mul(NS))
                .min(task.window_end_ns)
                .max(expires)
        } else {
            expires
        };
        Lease {
            lease_id: Uuid::now_v7().hyphenated().to_string(),
            identity_id: identity_id.to_owned(),
            kind,
            holder: holder.to_owned(),
            spiffe_id: spiffe_id.to_owned(),
            incident_ref: task.incident_ref.clone(),
            window_start_ns: task.window_start_ns,
            window_end_ns: task.window_end_ns,
            issued_at_ns: now,
            expires_at_ns: expires,
            max_expires_at_ns: max_expires,
            ttl_seconds: ttl,
            renewable,
            state: LeaseState::Active,
            credential_ref,
            token_hash: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            decision_id: allowed.decision.decision_id.clone(),
            grant_id: allowed.decision.grant_id.clone(),
            revoked_at_ns: 0,
            revoked_by: String::new(),
            revoke_reason: String::new(),
            backend: String::new(),
            sealed_secret: None,
        }
    }

    /// The evidence of an issued lease.
    pub(super) fn issue_record(
        &self,
        lease: &Lease,
        allowed: &Allowed,
        task: &Task,
        fingerprint: String,
    ) -> EvidenceRecord {
        let mut record = lease_record(lease, &lease.holder, "credential.issue");
        record.target.credential_fingerprint = fingerprint;
        allowed.carry(&mut record, task);
        record
    }

    /// Records that an issuance authority allowed was not carried out, when
    /// this refusal is the only record its decision will have (ADR 0012).
    pub(super) async fn record_refusal(
        &self,
        allowed: &Allowed,
        principal: &str,
        identity_id: &str,
        task: &Task,
        refused: &Status,
    ) {
        if !allowed.decision.recorded_with_outcome {
            return;
        }
        let mut record = EvidenceRecord::new(principal, "credential.issue", crate::SPEC.name);
        record.target.nhi_id = identity_id.to_owned();
        record.incident_ref = truncate_utf8(task.incident_ref.clone(), 256);
        allowed.carry(&mut record, task);
        record.outcome.status = OutcomeStatus::Failed;
        record.outcome.reason = truncate_utf8(
            format!("{:?}: {}", refused.code(), refused.message()),
            MAX_REASON,
        );
        if let Err(e) = self
            .shared
            .writer
            .submit(Change::Record {
                evidence: Box::new(record),
            })
            .await
        {
            tracing::error!(error = %e, decision = allowed.decision.decision_id, "a refused issuance could not be recorded");
        }
    }

    /// The identity's SPIFFE ID from the decision's facts, required for an
    /// SVID and required to be in the broker's trust domain.
    pub(super) fn svid_id(&self, identity_id: &str, allowed: &Allowed) -> Result<SpiffeId, Status> {
        let id = &allowed.facts.spiffe_id;
        if id.is_empty() {
            return Err(Status::failed_precondition(format!(
                "identity_id: identity {identity_id} has no SPIFFE ID in inventory; SVIDs name one"
            )));
        }
        let parsed = SpiffeId::parse(id).map_err(|e| {
            Status::failed_precondition(format!(
                "identity_id: inventory's SPIFFE ID for {identity_id} is invalid: {e}"
            ))
        })?;
        if parsed.trust_domain() != self.shared.own.trust_domain() {
            return Err(Status::failed_precondition(format!(
                "identity_id: {id} is not in the broker's trust domain {}",
                self.shared.own.trust_domain()
            )));
        }
        Ok(parsed)
    }

    /// Asks authority to `issue`, then issues (see [`Self::make`]). The
    /// Workload API issues through here too.
    pub(crate) async fn issue(
        &self,
        principal: &str,
        identity_id: &str,
        what: Make<'_>,
        ttl_seconds: u32,
        task: &Task,
        now: i64,
    ) -> Result<(Lease, Made), Status> {
        let allowed = self
            .authorize(
                principal,
                "issue",
                identity_id,
                task,
                u64::from(ttl_seconds),
            )
            .await?;
        let made = self
            .make(
                &allowed,
                principal,
                identity_id,
                what,
                ttl_seconds,
                task,
                now,
            )
            .await;
        if let Err(refused) = &made {
            self.record_refusal(&allowed, principal, identity_id, task, refused)
                .await;
        }
        made
    }

    /// Issues a credential under a decision already allowed: the
    /// credential, its lease and the evidence, committed together.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn make(
        &self,
        allowed: &Allowed,
        principal: &str,
        identity_id: &str,
        what: Make<'_>,
        ttl_seconds: u32,
        task: &Task,
        now: i64,
    ) -> Result<(Lease, Made), Status> {
        Self::started(task, now)?;
        let ttl = &self.shared.ttl;
        let default = match what {
            Make::X509 { .. } => ttl.x509_svid_default,
            Make::Jwt { .. } => ttl.jwt_svid_default,
            Make::Token { .. } | Make::DatabaseRole { .. } => ttl.api_token_default,
        };
        let (ttl, expires) = self.lifetime(ttl_seconds, default, allowed, task, now)?;
        let m = Minting {
            allowed,
            principal,
            identity_id,
            task,
            ttl,
            expires,
            now,
        };
        let (lease, record, made) = match what {
            Make::X509 { csr, dns_names } => self.mint_x509(&m, csr, dns_names)?,
            Make::Jwt { audience } => self.mint_jwt(&m, audience)?,
            Make::Token { scopes } => self.mint_token(&m, scopes)?,
            Make::DatabaseRole { template } => self.mint_database_role(&m, template).await?,
        };
        let lease = match self.commit_issue(lease.clone(), record).await {
            Ok(lease) => lease,
            Err(status) => {
                // The credential exists in the backend but no lease does:
                // take it back.
                if let (Made::DatabaseRole(c), Some(backend)) = (&made, &self.shared.backend)
                    && let Err(e) = backend.revoke(&c.username).await
                {
                    tracing::error!(lease = lease.lease_id, error = %e, "an unrecorded database role could not be revoked");
                }
                return Err(status);
            }
        };
        Ok((lease, made))
    }

    /// An X.509-SVID from the caller's CSR, for the identity's SPIFFE ID.
    fn mint_x509(
        &self,
        m: &Minting<'_>,
        csr: &[u8],
        dns_names: &[String],
    ) -> Result<Minted, Status> {
        let spiffe_id = self.svid_id(m.identity_id, m.allowed)?.to_string();
        let issued = self
            .authorities()
            .ca
            .issue_x509_svid(
                csr,
                &spiffe_id,
                dns_names,
                time::Duration::seconds(m.ttl),
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(m.now))
                    .map_err(|e| Status::internal(e.to_string()))?,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let expires = m
            .expires
            .min(i64::try_from(issued.not_after.unix_timestamp_nanos()).unwrap_or(i64::MAX));
        let lease = self.lease(
            Kind::X509Svid,
            m.identity_id,
            m.principal,
            &spiffe_id,
            m.task,
            m.allowed,
            (m.ttl, expires),
            m.now,
            issued.serial.clone(),
        );
        let record = self.issue_record(&lease, m.allowed, m.task, hex(&sha256(&issued.cert_der)));
        Ok((lease, record, Made::X509(issued)))
    }

    /// A JWT-SVID for `audience`, signed with the current key.
    fn mint_jwt(&self, m: &Minting<'_>, audience: &[String]) -> Result<Minted, Status> {
        let spiffe_id = self.svid_id(m.identity_id, m.allowed)?.to_string();
        let jti = Uuid::new_v4().hyphenated().to_string();
        let mut lease = self.lease(
            Kind::JwtSvid,
            m.identity_id,
            m.principal,
            &spiffe_id,
            m.task,
            m.allowed,
            (m.ttl, m.expires),
            m.now,
            jti.clone(),
        );
        lease.audience = audience.to_vec();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), spiffe_id.into());
        claims.insert(
            "aud".into(),
            match audience {
                [one] => one.clone().into(),
                many => many.to_vec().into(),
            },
        );
        claims.insert("exp".into(), (lease.expires_at_ns / NS).into());
        claims.insert("iat".into(), (m.now / NS).into());
        claims.insert("jti".into(), jti.into());
        let token = self
            .authorities()
            .jwt
            .sign("JWT", &claims)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut record = self.issue_record(&lease, m.allowed, m.task, String::new());
        record
            .attributes
            .insert("audience".into(), truncate_utf8(audience.join(" "), 1024));
        Ok((lease, record, Made::Jwt(token)))
    }

    /// An opaque API token: only its hash and reference are kept.
    fn mint_token(&self, m: &Minting<'_>, scopes: &[String]) -> Result<Minted, Status> {
        let mut secret = [0u8; 32];
        self.shared
            .random
            .fill(&mut secret)
            .map_err(|_| Status::internal("no randomness available"))?;
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let reference = token[..TOKEN_PREFIX.len() + TOKEN_REF_CHARS].to_owned();
        let mut lease = self.lease(
            Kind::ApiToken,
            m.identity_id,
            m.principal,
            &m.allowed.facts.spiffe_id,
            m.task,
            m.allowed,
            (m.ttl, m.expires),
            m.now,
            reference,
        );
        lease.token_hash = Some(sha256(token.as_bytes()));
        lease.scopes = scopes.to_vec();
        let mut record = self.issue_record(&lease, m.allowed, m.task, String::new());
        record
            .attributes
            .insert("scopes".into(), truncate_utf8(scopes.join(" "), 1024));
        Ok((lease, record, Made::Token(token)))
    }

    /// A login role from the database backend's `template`; its password
    /// is kept sealed.
    async fn mint_database_role(&self, m: &Minting<'_>, template: &str) -> Result<Minted, Status> {
        let backend = self.shared.backend.clone().ok_or_else(|| {
            Status::failed_precondition(
                "template: no database backend is configured (postgres_backend)",
            )
        })?;
        let credential = backend
            .create(template, m.expires)
            .await
            .map_err(|e| match e {
                BackendError::UnknownTemplate(m) => {
                    Status::invalid_argument(format!("template: {m}"))
                }
                BackendError::Refused(m) => Status::failed_precondition(m),
                BackendError::Unavailable(m) => {
                    tracing::warn!(error = m, "database backend unavailable");
                    Status::unavailable(
                        "the database backend cannot be reached; nothing was issued",
                    )
                }
            })?;
        let mut lease = self.lease(
            Kind::DatabaseRole,
            m.identity_id,
            m.principal,
            &m.allowed.facts.spiffe_id,
            m.task,
            m.allowed,
            (m.ttl, m.expires),
            m.now,
            credential.username.clone(),
        );
        lease.backend = backend.name().to_owned();
        lease.scopes = vec![template.to_owned()];
        lease.sealed_secret = Some(
            crate::backends::seal(
                self.shared.kek.as_ref(),
                &lease.lease_id,
                &credential.password,
            )
            .map_err(Status::internal)?,
        );
        let mut record = self.issue_record(&lease, m.allowed, m.task, String::new());
        record
            .attributes
            .insert("backend".into(), lease.backend.clone());
        record
            .attributes
            .insert("template".into(), truncate_utf8(template.to_owned(), 256));
        Ok((lease, record, Made::DatabaseRole(credential)))
    }

    pub(super) async fn commit_issue(
        &self,
        lease: Lease,
        record: EvidenceRecord,
    ) -> Result<Lease, Status> {
        match self
            .shared
            .writer
            .submit(Change::Issue {
                lease: Box::new(lease),
                evidence: Box::new(record),
            })
            .await
            .map_err(store_status)?
        {
            Applied::Issued(lease) => Ok(lease),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }

    /// Revokes `leases`, asking authority once per identity first unless
    /// `decided` (authority itself closing an incident).
    pub(crate) async fn revoke(
        &self,
        caller: &str,
        leases: &[Lease],
        reason: &str,
        correlation_id: &str,
        decided: bool,
    ) -> Result<Vec<Lease>, Status> {
        let mut identities: Vec<&str> = if decided {
            Vec::new()
        } else {
            leases.iter().map(|l| l.identity_id.as_str()).collect()
        };
        identities.sort_unstable();
        identities.dedup();
        let now = now_ns();
        for identity in identities {
            // The task is the lease's own incident; revoking ends now.
            let lease = leases
                .iter()
                .find(|l| l.identity_id == identity)
                .ok_or_else(|| Status::internal("lease vanished"))?;
            let lease_task = Task {
                incident_ref: lease.incident_ref.clone(),
                window_start_ns: now,
                window_end_ns: i64::MAX,
                reason: reason.to_owned(),
                correlation_id: correlation_id.to_owned(),
            };
            self.authorize(caller, "revoke", identity, &lease_task, 0)
                .await?;
        }
        let evidence: RevocationEvidence = {
            let caller = caller.to_owned();
            let reason = reason.to_owned();
            let correlation_id = correlation_id.to_owned();
            Arc::new(move |lease: &Lease| {
                let mut record = lease_record(lease, &caller, "credential.revoke");
                record.outcome.reason = truncate_utf8(reason.clone(), MAX_REASON);
                record.correlation_id.clone_from(&correlation_id);
                record
            })
        };
        match self
            .shared
            .writer
            .submit(Change::Revoke {
                lease_ids: leases.iter().map(|l| l.lease_id.clone()).collect(),
                state: LeaseState::Revoked,
                by: caller.to_owned(),
                reason: reason.to_owned(),
                evidence,
            })
            .await
            .map_err(store_status)?
        {
            Applied::Revoked(ended) => Ok(ended),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }
}

/// What every credential kind is minted under: the decision, who asked
/// for which identity in which task, and the lease's lifetime.
pub(crate) struct Minting<'a> {
    allowed: &'a Allowed,
    principal: &'a str,
    identity_id: &'a str,
    task: &'a Task,
    ttl: i64,
    expires: i64,
    now: i64,
}

/// A minted credential: its lease, its evidence record, and what the
/// caller gets.
type Minted = (Lease, EvidenceRecord, Made);
