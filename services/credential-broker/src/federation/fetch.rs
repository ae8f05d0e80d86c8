//! Fetching a foreign trust domain's bundle from its bundle endpoint, on
//! the refresh schedule its bundle asks for.
//!
//! - `https_spiffe`: the endpoint must present an X.509-SVID that chains
//!   to the trust domain's last bundle (the operator's out-of-band copy
//!   until the first fetch) and names `endpoint_spiffe_id`.
//! - `https_web`: the endpoint must present a certificate for its host
//!   name from the public roots or the configured `ca_file`.
//!
//! A fetched bundle replaces the last one only when it differs and does
//! not go back in `spiffe_sequence` (a replayed old bundle could bring
//! back a key the trust domain withdrew); each replacement is stored with
//! its evidence record, then served. A failed fetch keeps the last bundle
//! and is tried again sooner.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use steward_evidence::EvidenceRecord;
use steward_identity::bundle::{MAX_DOCUMENT_BYTES, SpiffeBundle};
use steward_identity::{ServerAuthorizer, SpiffeId, TrustDomain};

use super::Federation;
use crate::config::{EndpointProfile, ForeignTrustDomain};
use crate::store::Store;
use crate::store::bundles::StoredBundle;

/// Without a hint, bundles are fetched this often (the specification's
/// suggestion).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// However often a bundle asks, it is fetched at most this often.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// ... and at least this often.
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// A fetch that has not finished by then has failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One foreign trust domain, checked.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub trust_domain: TrustDomain,
    url: hyper::Uri,
    host: String,
    port: u16,
    profile: Profile,
    refresh: Option<Duration>,
    bootstrap: Option<SpiffeBundle>,
}

#[derive(Debug, Clone)]
enum Profile {
    Spiffe(SpiffeId),
    Web(Arc<RootCertStore>),
}

impl Foreign {
    /// Checks `config`, reading its files: a start-up error names what is
    /// wrong, so a broker never runs trusting half of what it was told.
    pub fn check(config: &ForeignTrustDomain, own: &TrustDomain) -> Result<Self, String> {
        let name = &config.trust_domain;
        let trust_domain = TrustDomain::parse(name)
            .map_err(|e| format!("federation: trust_domain {name:?}: {e}"))?;
        if &trust_domain == own {
            return Err(format!(
                "federation: {name} is this broker's own trust domain"
            ));
        }
        let url: hyper::Uri = config
            .bundle_endpoint_url
            .parse()
            .map_err(|_| format!("federation: {name}: bundle_endpoint_url is not a URL"))?;
        if url.scheme_str() != Some("https") {
            return Err(format!(
                "federation: {name}: bundle_endpoint_url must be https"
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| format!("federation: {name}: bundle_endpoint_url has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(443);
        let (profile, bootstrap) = match config.profile {
            EndpointProfile::HttpsSpiffe => {
                let id = config.endpoint_spiffe_id.as_deref().ok_or_else(|| {
                    format!("federation: {name}: https_spiffe needs endpoint_spiffe_id")
                })?;
                let id = SpiffeId::parse(id)
                    .map_err(|e| format!("federation: {name}: endpoint_spiffe_id: {e}"))?;
                if id.trust_domain() != &trust_domain {
                    return Err(format!(
                        "federation: {name}: endpoint_spiffe_id is not in {name}"
                    ));
                }
                let bootstrap = match &config.bundle_file {
                    Some(path) => {
                        let document = std::fs::read(path).map_err(|e| {
                            format!("federation: {name}: bundle_file {}: {e}", path.display())
                        })?;
                        Some(
                            SpiffeBundle::parse(trust_domain.clone(), &document).map_err(|e| {
                                format!("federation: {name}: bundle_file {}: {e}", path.display())
                            })?,
                        )
                    }
                    None => None,
                };
                (Profile::Spiffe(id), bootstrap)
            }
            EndpointProfile::HttpsWeb => {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                if let Some(path) = &config.ca_file {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("federation: {name}: ca_file {}: {e}", path.display())
                    })?;
                    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                        let cert: CertificateDer<'static> = cert.map_err(|_| {
                            format!("federation: {name}: ca_file {} is not PEM", path.display())
                        })?;
                        roots.add(cert).map_err(|e| {
                            format!("federation: {name}: ca_file {}: {e}", path.display())
                        })?;
                    }
                }
                (Profile::Web(Arc::new(roots)), None)
            }
        };
        Ok(Self {
            trust_domain,
            url,
            host,
            port,
            profile,
            refresh: config.refresh_secs.map(Duration::from_secs),
            bootstrap,
        })
    }

    /// How long until the next fetch after one that brought `bundle`.
    fn refresh(&self, bundle: &SpiffeBundle) -> Duration {
        self.refresh
            .or(bundle.refresh_hint.map(Duration::from_secs))
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }

    fn tls(&self, last: Option<&SpiffeBundle>) -> Result<rustls::ClientConfig, String> {
        let provider = steward_identity::tls::crypto_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = match &self.profile {
            Profile::Spiffe(id) => {
                let last = last.ok_or_else(|| {
                    format!(
                        "no bundle of {} to authenticate its endpoint with: set bundle_file",
                        self.trust_domain
                    )
                })?;
                let mut roots = RootCertStore::empty();
                for der in &last.x509_authorities {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(|e| e.to_string())?;
                }
                let verifier = steward_identity::tls::SpiffeServerVerifier::new(
                    Arc::new(roots),
                    ServerAuthorizer::Exact(id.clone()),
                    &provider,
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            Profile::Web(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// One fetch: the endpoint's bundle, authenticated as the profile says.
    pub async fn fetch(&self, last: Option<&SpiffeBundle>) -> Result<SpiffeBundle, String> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls(last)?));
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|_| format!("{} is not a host name", self.host))?;
        let work = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(connection);
            let path = self
                .url
                .path_and_query()
                .map_or("/", hyper::http::uri::PathAndQuery::as_str);
            let authority = self
                .url
                .authority()
                .map_or(self.host.as_str(), |a| a.as_str());
            let request = hyper::Request::get(path)
                .header(hyper::header::HOST, authority)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(format!("the endpoint answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|_| format!("the bundle is not {MAX_DOCUMENT_BYTES} bytes or fewer"))?
                .to_bytes();
            SpiffeBundle::parse(self.trust_domain.clone(), &body).map_err(|e| e.to_string())
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| format!("no bundle within {FETCH_TIMEOUT:?}"))?
    }
}

/// Installs `foreign`'s out-of-band bundle when none is held yet (none
/// stored from an earlier run), stored with its evidence: done before the
/// broker serves, so no workload sees it start without the bundle.
pub async fn bootstrap(
    federation: &Federation,
    store: &Store,
    actor: &str,
    foreign: &Foreign,
) -> Result<(), String> {
    let name = foreign.trust_domain.name();
    if federation.foreign().contains_key(name) {
        return Ok(());
    }
    if let Some(bootstrap) = foreign.bootstrap.clone() {
        save(
            store,
            actor,
            foreign,
            &bootstrap,
            "federation.bundle_installed",
        )
        .await?;
        federation.install(bootstrap);
    }
    Ok(())
}

/// Follows `foreign` until `shutdown`: fetches on schedule.
pub async fn follow(
    federation: Arc<Federation>,
    store: Store,
    actor: String,
    foreign: Foreign,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let name = foreign.trust_domain.name().to_owned();
    tokio::pin!(shutdown);
    let mut retry = MIN_REFRESH;
    loop {
        let last = federation.foreign().get(&name).cloned();
        let wait = match foreign.fetch(last.as_ref()).await {
            Ok(bundle) => {
                retry = MIN_REFRESH;
                let wait = foreign.refresh(&bundle);
                match &last {
                    Some(last) if same_keys(last, &bundle) && last.sequence == bundle.sequence => {}
                    Some(last) if bundle.sequence != 0 && bundle.sequence < last.sequence => {
                        tracing::warn!(
                            trust_domain = %name,
                            fetched = bundle.sequence,
                            held = last.sequence,
                            "the endpoint served an older bundle than the one held; kept the held one"
                        );
                    }
                    _ => match save(
                        &store,
                        &actor,
                        &foreign,
                        &bundle,
                        "federation.bundle_updated",
                    )
                    .await
                    {
                        Ok(()) => {
                            tracing::info!(trust_domain = %name, sequence = bundle.sequence, "federated bundle updated");
                            federation.install(bundle);
                        }
                        Err(error) => {
                            tracing::warn!(trust_domain = %name, %error, "cannot store the fetched bundle; kept the held one");
                        }
                    },
                }
                wait
            }
            Err(error) => {
                tracing::warn!(trust_domain = %name, %error, "cannot fetch the federated bundle; kept the held one");
                retry = (retry * 2).min(Duration::from_secs(30));
                retry
            }
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn same_keys(a: &SpiffeBundle, b: &SpiffeBundle) -> bool {
    a.x509_authorities == b.x509_authorities && a.jwt_authorities == b.jwt_authorities
}

async fn save(
    store: &Store,
    actor: &str,
    foreign: &Foreign,
    bundle: &SpiffeBundle,
    action: &str,
) -> Result<(), String> {
    let document = bundle.to_document().map_err(|e| e.to_string())?;
    let document = String::from_utf8(document).map_err(|e| e.to_string())?;
    let mut record = EvidenceRecord::new(actor, action, crate::SPEC.name);
    let attributes = &mut record.attributes;
    attributes.insert("trust_domain".into(), bundle.trust_domain.name().to_owned());
    attributes.insert("sequence".into(), bundle.sequence.to_string());
    attributes.insert(
        "x509_authorities".into(),
        bundle.x509_authorities.len().to_string(),
    );
    attributes.insert(
        "jwt_authorities".into(),
        bundle.jwt_authorities.len().to_string(),
    );
    attributes.insert("bundle_endpoint_url".into(), foreign.url.to_string());
    let row = StoredBundle {
        trust_domain: bundle.trust_domain.name().to_owned(),
        document,
        sequence: i64::try_from(bundle.sequence).unwrap_or(i64::MAX),
        fetched_at_ns: crate::now_ns(),
    };
    store
        .save_foreign_bundle(&row, &record)
        .await
        .map_err(|e| steward_errors::causes(&e))
}
