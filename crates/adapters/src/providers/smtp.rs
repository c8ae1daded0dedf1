//! E-mail over SMTP: the real adapter behind the e-mail [`Notifier`] port.
//!
//! Uses lettre's asynchronous transport on tokio. Each message is a plain-text
//! mail from the configured sender to the shopper. Its `Message-ID` is built
//! from the call's idempotency key, so a mail sent twice after a redelivery
//! carries the same id and mail systems that deduplicate on it can drop the copy.
//!
//! SMTP tells transient from permanent failures itself: 4xx replies ("mailbox
//! busy, try later") and anything that broke the connection (refused, reset,
//! timed out, TLS handshake) are retryable; 5xx replies ("no such user") are
//! permanent, and so is an address lettre cannot parse.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orderflow_core::ports::providers::{Notifier, OutgoingMessage, ProviderError};
use orderflow_domain::notification::Channel;
use secrecy::{ExposeSecret, SecretString};

use super::{ProviderConfigError, instrumented};

const PROVIDER: &str = "email";

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain text. Only for a relay on the same host or a test server.
    None,
    /// Plain text upgraded with `STARTTLS`, which the server must offer
    /// (usually port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

impl SmtpTls {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }
}

impl FromStr for SmtpTls {
    type Err = String;

    /// `none`, `starttls` or `tls` (case-insensitive), as in configuration.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            other => Err(format!(
                "unknown SMTP TLS mode {other:?} (expected none, starttls or tls)"
            )),
        }
    }
}

impl fmt::Display for SmtpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where and how to send mail. The password is a [`SecretString`]: `Debug`
/// prints it as `[REDACTED]`, so the settings can be logged at start-up.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Log in when set (with `password`, which may then be empty).
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The sender, as `shop@example.com` or `Shop <shop@example.com>`.
    pub from: String,
    /// For connecting and for each SMTP command.
    pub timeout: Duration,
}

impl SmtpSettings {
    /// Settings for `host:port` with the given security, no login, a
    /// 10-second timeout.
    pub fn new(host: impl Into<String>, port: u16, tls: SmtpTls, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            tls,
            username: None,
            password: None,
            from: from.into(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_credentials(mut self, username: impl Into<String>, password: SecretString) -> Self {
        self.username = Some(username.into());
        self.password = Some(password);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Sends e-mail through an SMTP server.
#[derive(Clone)]
pub struct SmtpNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of `Message-ID`s, taken from the sender's address.
    id_domain: String,
    /// For `Debug` only; the transport holds the credentials.
    settings: SmtpSettings,
}

impl fmt::Debug for SmtpNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `settings` redacts the password; the transport is not printed at all.
        f.debug_struct("SmtpNotifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SmtpNotifier {
    /// Builds the transport. Does not connect: the first message does, so a
    /// mail server that is down at start-up only delays e-mail.
    pub fn new(settings: SmtpSettings) -> Result<Self, ProviderConfigError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|error| ProviderConfigError::new(PROVIDER, "from", format!("{error}")))?;
        if settings.host.is_empty() {
            return Err(ProviderConfigError::new(PROVIDER, "host", "is empty"));
        }
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(&settings.host)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(&settings.host)?),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.as_str())
                .port(settings.port)
                .tls(tls)
                .timeout(Some(settings.timeout));
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        let id_domain = from.email.domain().to_owned();
        Ok(Self {
            transport: builder.build(),
            from,
            id_domain,
            settings,
        })
    }

    /// The mail for one message; an address lettre cannot parse is a
    /// permanent failure (retrying will not fix it).
    fn compose(&self, message: &OutgoingMessage) -> Result<Message, ProviderError> {
        let address: Address = message.email.parse().map_err(|error| {
            ProviderError::permanent(
                PROVIDER,
                format!("invalid recipient address {:?}: {error}", message.email),
            )
        })?;
        let name = (!message.name.trim().is_empty()).then(|| message.name.clone());
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(name, address))
            .subject(message.subject.clone())
            .message_id(Some(format!(
                "<{}@{}>",
                message_id_part(&message.idempotency_key),
                self.id_domain
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|error| {
                ProviderError::permanent(PROVIDER, format!("cannot build the message: {error}"))
            })
    }

    async fn deliver(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        let mail = self.compose(message)?;
        self.transport
            .send(mail)
            .await
            .map(drop)
            .map_err(|error| classify(&error))
    }
}

#[async_trait]
impl Notifier for SmtpNotifier {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        instrumented(PROVIDER, self.deliver(message)).await
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters, ProviderConfigError> {
    TlsParameters::new(host.to_owned())
        .map_err(|error| ProviderConfigError::new(PROVIDER, "tls", format!("{error}")))
}

/// Sorts an SMTP failure: only a 5xx reply, or a problem on our side of the
/// client (say, no authentication mechanism in common with the server), is
/// permanent; everything else may pass.
fn classify(error: &lettre::transport::smtp::Error) -> ProviderError {
    let message = format!("SMTP: {error}");
    if error.is_permanent() || error.is_client() {
        ProviderError::permanent(PROVIDER, message)
    } else {
        ProviderError::transient(PROVIDER, message)
    }
}

/// The left part of a `Message-ID` (`id-left` in RFC 5322): the idempotency
/// key with anything but letters, digits, `.`, `-` and `_` replaced.
fn message_id_part(key: &str) -> String {
    let part: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if part.is_empty() {
        "orderflow".to_owned()
    } else {
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_parse_from_configuration() {
        assert_eq!("none".parse(), Ok(SmtpTls::None));
        assert_eq!("STARTTLS".parse(), Ok(SmtpTls::StartTls));
        assert_eq!("tls".parse(), Ok(SmtpTls::Tls));
        assert!("ssl".parse::<SmtpTls>().is_err());
    }

    #[test]
    fn message_ids_keep_only_safe_characters() {
        assert_eq!(message_id_part("email:0190-ab_c.d"), "email-0190-ab_c.d");
        assert_eq!(message_id_part(""), "orderflow");
    }
}
