//! Connecting to Steward services as the operator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use steward_identity::{ServerAuthorizer, SpiffeId, SvidPaths, SvidSource, TrustDomain};
use steward_telemetry::{Traced, TracedChannel};

/// Where the services are and which SVID to present.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// The operator's X.509-SVID (PEM chain).
    #[arg(
        long,
        global = true,
        env = "STEWARD_CERT",
        default_value = ".steward/dev/pki/operator.crt"
    )]
    pub cert: PathBuf,
    /// The operator's private key (PEM PKCS#8).
    #[arg(
        long,
        global = true,
        env = "STEWARD_KEY",
        default_value = ".steward/dev/pki/operator.key"
    )]
    pub key: PathBuf,
    /// The trust bundle (PEM).
    #[arg(
        long,
        global = true,
        env = "STEWARD_BUNDLE",
        default_value = ".steward/dev/pki/bundle.pem"
    )]
    pub bundle: PathBuf,
    /// Host the services listen on.
    #[arg(long, global = true, env = "STEWARD_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the first service (inventory); the others follow in order.
    #[arg(
        long,
        global = true,
        env = "STEWARD_BASE_PORT",
        default_value_t = 50051
    )]
    pub base_port: u16,
    /// `host:port` of the one service a command talks to, overriding
    /// --host and --base-port.
    #[arg(long, global = true, env = "STEWARD_ADDR")]
    pub addr: Option<String>,
    /// `name=host:port` of one service (repeatable, or comma-separated in
    /// the environment), for services that are not laid out from
    /// --base-port and for commands that talk to more than one.
    #[arg(
        long = "service-addr",
        global = true,
        env = "STEWARD_SERVICE_ADDRS",
        value_delimiter = ',',
        value_parser = service_addr
    )]
    pub service_addrs: Vec<(String, String)>,
    /// The services' addresses from the config file (below the flags).
    #[arg(skip)]
    pub configured_addrs: Vec<(String, String)>,
    /// Where the OIDC token from `steward login` is kept (default
    /// `~/.config/steward/token`).
    #[arg(long, global = true, env = "STEWARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ConnectionArgs {
    /// Loads the operator SVID.
    pub fn source(&self) -> anyhow::Result<Arc<SvidSource>> {
        SvidSource::load(
            SvidPaths {
                cert: self.cert.clone(),
                key: self.key.clone(),
                bundle: self.bundle.clone(),
            },
            Vec::new(),
        )
        .with_context(|| {
            format!(
                "cannot load the operator svid from {} (run `steward dev up` first, or pass --cert/--key/--bundle)",
                self.cert.display()
            )
        })
    }

    /// A channel to `service` as the operator, accepting only that
    /// service's SPIFFE ID.
    pub async fn channel(&self, service: &str) -> anyhow::Result<TracedChannel> {
        let source = self.source()?;
        let trust_domain = source.material().id.trust_domain().clone();
        connect(
            &source,
            &self.address(service)?,
            service_id(&trust_domain, service)?,
        )
        .await
    }

    /// `host:port` of a service.
    pub fn address(&self, service: &str) -> anyhow::Result<String> {
        if let Some((_, addr)) = self.service_addrs.iter().rev().find(|(n, _)| n == service) {
            return Ok(addr.clone());
        }
        if let Some(addr) = &self.addr {
            return Ok(addr.clone());
        }
        if let Some((_, addr)) = self.configured_addrs.iter().find(|(n, _)| n == service) {
            return Ok(addr.clone());
        }
        let index = crate::SERVICES
            .iter()
            .position(|(name, _)| *name == service)
            .with_context(|| format!("unknown service {service:?}; one of inventory, authority, credential-broker, audit"))?;
        let port = self.base_port + u16::try_from(index)?;
        Ok(format!("{}:{port}", self.host))
    }
}

/// `name=host:port`, `name` one of Steward's services.
pub fn service_addr(text: &str) -> Result<(String, String), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected name=host:port"))?;
    if !crate::SERVICES.iter().any(|(known, _)| *known == name) {
        return Err(format!(
            "{name:?} is not one of inventory, authority, credential-broker, audit"
        ));
    }
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("{addr:?}: expected host:port"));
    }
    Ok((name.to_owned(), addr.to_owned()))
}

/// The SPIFFE ID a Steward service presents.
pub fn service_id(trust_domain: &TrustDomain, service: &str) -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::service(trust_domain, service)?)
}

/// A channel to `service` that accepts only that service's SPIFFE ID.
/// Its calls continue the trace `TRACEPARENT` names, when set (the
/// OpenTelemetry convention for passing trace context to a command), so a
/// script's step joins the script's trace.
pub async fn connect(
    source: &Arc<SvidSource>,
    address: &str,
    expected: SpiffeId,
) -> anyhow::Result<TracedChannel> {
    let channel = steward_identity::connector::connect(
        source.clone(),
        address,
        ServerAuthorizer::Exact(expected),
    )
    .await?;
    let parent = std::env::var("TRACEPARENT").ok();
    Ok(Traced::continuing(channel, parent.as_deref()))
}
