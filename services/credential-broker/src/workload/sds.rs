//! Envoy's Secret Discovery Service (SDS v3) on the Workload API socket,
//! as SPIRE's agent serves it: the caller is attested exactly as the
//! Workload API attests it (the socket peer's kernel credentials; Envoy
//! sends no security header), and gets its own SVIDs and the bundle.
//!
//! Resource names:
//! - the workload's SPIFFE ID, or `default` (its first SVID): a
//!   `tls_certificate` with the SVID's chain and key, in PEM;
//! - the trust domain (`spiffe://<td>` or `<td>`) or `ROOTCA`: a
//!   `validation_context` whose `trusted_ca` is the bundle;
//! - a federated trust domain, the same way: its bundle;
//! - `ALL`: one `validation_context` with this trust domain's bundle and
//!   every federated one's.
//!
//! A request that names nothing gets every SVID, the bundle and each
//! federated bundle. The
//! stream follows the xDS protocol: each response has a new `version_info`
//! and `nonce`; a request carrying the last nonce with the same names is
//! an ACK (or, with `error_detail`, a NACK) and is not answered; a request
//! with a stale nonce is ignored; new names are answered at once. A new
//! version is pushed when an SVID is renewed (half its lifetime), when
//! its lease is revoked and after a CA rotation.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use steward_proto::spiffe_workload as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Entry, Held, Renewals, Stream_, WorkloadApi};

/// The type of every SDS resource.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

impl WorkloadApi {
    /// The secrets `names` asks for (every SVID and the bundle when it
    /// asks for none), from `svids`; a name Steward does not serve is left
    /// out, as the xDS protocol has it.
    fn secrets(&self, names: &[String], svids: &pb::X509svidResponse) -> Vec<Secret> {
        let own_roots = self.issuer.authorities().roots.clone();
        let foreign = self.federation.foreign();
        let bundle = |name: &str, roots: &[Vec<u8>]| Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(pem_all("CERTIFICATE", roots))),
                    ..Default::default()
                },
            )),
        };
        let certificate = |name: &str, svid: &pb::X509svid| Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(pem_all(
                    "CERTIFICATE",
                    &certificates(&svid.x509_svid),
                ))),
                private_key: Some(inline(pem("PRIVATE KEY", &svid.x509_svid_key))),
                ..Default::default()
            })),
        };
        let trust_domain = self.trust_domain_id();
        if names.is_empty() {
            let mut all: Vec<Secret> = svids
                .svids
                .iter()
                .map(|s| certificate(&s.spiffe_id, s))
                .collect();
            all.push(bundle(&trust_domain, &own_roots));
            for federated in foreign.values() {
                let name = federated.trust_domain.id().to_string();
                all.push(bundle(&name, &federated.x509_authorities));
            }
            return all;
        }
        names
            .iter()
            .filter_map(|name| {
                if name == "default" {
                    return svids.svids.first().map(|s| certificate(name, s));
                }
                if let Some(svid) = svids.svids.iter().find(|s| &s.spiffe_id == name) {
                    return Some(certificate(name, svid));
                }
                if name == "ALL" {
                    // Every trust domain this one trusts, in one context.
                    let mut roots = own_roots.clone();
                    for federated in foreign.values() {
                        roots.extend(federated.x509_authorities.iter().cloned());
                    }
                    return Some(bundle(name, &roots));
                }
                let of_trust_domain = *name == trust_domain
                    || name.as_str() == self.issuer.own.trust_domain().name()
                    || name == "ROOTCA";
                if of_trust_domain {
                    return Some(bundle(name, &own_roots));
                }
                let named = name.strip_prefix("spiffe://").unwrap_or(name);
                foreign
                    .get(named)
                    .map(|federated| bundle(name, &federated.x509_authorities))
            })
            .collect()
    }

    /// The caller's SVIDs now: re-attested, each renewed when due.
    async fn served(
        &self,
        selectors: &[steward_proto::steward::inventory::v1::Selector],
        held: &mut Held,
    ) -> Result<(pb::X509svidResponse, HashSet<String>, Duration), Status> {
        let entries: Vec<Entry> = self.entries(selectors.to_vec()).await?;
        self.x509_svids(&entries, held).await
    }
}

/// One xDS stream's side of the protocol.
struct Subscription {
    /// What the client subscribed to; `None` before its first request.
    names: Option<Vec<String>>,
    version: u64,
    nonce: String,
    /// The resources last sent, to push only what changed.
    sent: Vec<Secret>,
}

impl Subscription {
    /// Whether `request` asks for an answer: the first request, or new
    /// names on the last response's nonce. An ACK or NACK of the last
    /// response, or a request on a stale nonce, does not.
    fn wants_answer(&mut self, request: DiscoveryRequest) -> bool {
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                version = request.version_info,
                code = error.code,
                nack_message = error.message,
                "sds: the client refused a secrets version (NACK)"
            );
        }
        let current = request.response_nonce.is_empty() && self.names.is_none()
            || request.response_nonce == self.nonce;
        if !current || self.names.as_ref() == Some(&request.resource_names) {
            return false;
        }
        self.names = Some(request.resource_names);
        true
    }

    /// The next response for `secrets`; `None` when nothing changed since
    /// the last one (unless `always`).
    fn response(&mut self, secrets: Vec<Secret>, always: bool) -> Option<DiscoveryResponse> {
        if !always && secrets == self.sent {
            return None;
        }
        self.sent = secrets.clone();
        self.version += 1;
        self.nonce = uuid::Uuid::now_v7().to_string();
        Some(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: secrets
                .into_iter()
                .map(envoy_types::util::pack_any)
                .collect(),
            type_url: SECRET_TYPE.to_owned(),
            nonce: self.nonce.clone(),
            ..Default::default()
        })
    }
}

/// Refuses a request for a type other than secrets.
fn check_type(request: &DiscoveryRequest) -> Result<(), Status> {
    if request.type_url.is_empty() || request.type_url == SECRET_TYPE {
        Ok(())
    } else {
        Err(steward_errors::invalid(
            "type_url",
            format!(
                "{} is not {SECRET_TYPE}",
                steward_errors::shown(&request.type_url)
            ),
        )
        .into())
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for WorkloadApi {
    type DeltaSecretsStream = Stream_<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Stream_<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(super::refusal::Refusal::DeltaSds.into())
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let selectors = Self::peer_selectors(&request)?;
        // Attested before the stream opens: a caller with no entry is
        // PERMISSION_DENIED at once.
        let mut held = Held::default();
        let (mut svids, mut leases, refresh) = self.served(&selectors, &mut held).await?;
        // When the next SVID is due, however many requests come before.
        let mut due = tokio::time::Instant::now() + refresh;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        let mut renewals = Renewals::of(&self.issuer, &self.federation);
        let stopped = self.stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut subscription = Subscription {
                names: None,
                version: 0,
                nonce: String::new(),
                sent: Vec::new(),
            };
            loop {
                let asked = tokio::select! {
                    () = tx.closed() => return,
                    () = &mut stopped => return,
                    request = requests.message() => match request {
                        Ok(Some(request)) => {
                            if let Err(status) = check_type(&request) {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            if !subscription.wants_answer(request) {
                                continue;
                            }
                            true
                        }
                        Ok(None) | Err(_) => return,
                    },
                    wake = renewals.next(due.saturating_duration_since(tokio::time::Instant::now()), &leases) => {
                        if !held.apply(wake) {
                            return;
                        }
                        false
                    }
                };
                if !asked {
                    match api.served(&selectors, &mut held).await {
                        Ok((now, now_leases, refresh)) => {
                            (svids, leases) = (now, now_leases);
                            due = tokio::time::Instant::now() + refresh;
                        }
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                // Nothing is pushed before the client has asked.
                let Some(names) = subscription.names.clone() else {
                    continue;
                };
                let secrets = api.secrets(&names, &svids);
                if let Some(response) = subscription.response(secrets, asked)
                    && tx.send(Ok(response)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let selectors = Self::peer_selectors(&request)?;
        let request = request.into_inner();
        check_type(&request)?;
        let (svids, _, _) = self.served(&selectors, &mut Held::default()).await?;
        let secrets = self.secrets(&request.resource_names, &svids);
        let mut subscription = Subscription {
            names: Some(request.resource_names),
            version: 0,
            nonce: String::new(),
            sent: Vec::new(),
        };
        let response = subscription.response(secrets, true).unwrap_or_default();
        Ok(Response::new(response))
    }
}

fn inline(text: String) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(text.into_bytes())),
        ..Default::default()
    }
}

/// One DER value as PEM.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_all<D: AsRef<[u8]>>(label: &str, ders: &[D]) -> String {
    ders.iter().map(|d| pem(label, d.as_ref())).collect()
}

/// The certificates of a chain given as concatenated DER, as the Workload
/// API carries it: each a SEQUENCE whose length its header says.
fn certificates(mut der: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while der.len() >= 2 && der[0] == 0x30 {
        let (header, length) = match der[1] {
            n if n < 0x80 => (2, usize::from(n)),
            n => {
                let bytes = usize::from(n & 0x7f);
                if bytes == 0 || bytes > 4 || der.len() < 2 + bytes {
                    break;
                }
                let length = der[2..2 + bytes]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (2 + bytes, length)
            }
        };
        let Some(end) = header.checked_add(length).filter(|end| *end <= der.len()) else {
            break;
        };
        out.push(&der[..end]);
        der = &der[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_splits_into_its_certificates() {
        let short = [0x30, 0x02, 0xaa, 0xbb];
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(std::iter::repeat_n(0x11, 0x80));
        let joined: Vec<u8> = [short.as_slice(), long.as_slice()].concat();
        assert_eq!(certificates(&joined), vec![&short[..], &long[..]]);
        assert!(certificates(&[0x30, 0x05, 0x00]).is_empty(), "truncated");
    }

    #[test]
    fn pem_wraps_at_sixty_four() {
        let text = pem("CERTIFICATE", &[0u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
    }

    fn request(nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_ack_or_a_stale_nonce_is_not_answered_and_new_names_are() {
        let mut s = Subscription {
            names: None,
            version: 0,
            nonce: String::new(),
            sent: Vec::new(),
        };
        assert!(s.wants_answer(request("", &["default"])));
        let first = s.response(Vec::new(), true).unwrap();
        assert_eq!(first.version_info, "1");
        assert!(!s.wants_answer(request(&first.nonce, &["default"])), "ACK");
        assert!(!s.wants_answer(request("stale", &["ROOTCA"])), "stale");
        assert!(s.wants_answer(request(&first.nonce, &["default", "ROOTCA"])));
        assert!(s.response(Vec::new(), false).is_none(), "nothing changed");
        let second = s.response(Vec::new(), true).unwrap();
        assert_eq!(second.version_info, "2");
        assert_ne!(second.nonce, first.nonce);
    }
}
