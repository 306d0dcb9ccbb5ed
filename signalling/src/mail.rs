//! Outgoing mail: SMTP through lettre, or `.eml` files in an outbox.
//!
//! With no SMTP relay configured every mail is written as
//! `<data_dir>/outbox/<uuid>.eml`, which is how a first run on one machine,
//! the tests and `signalling admin outbox` read the codes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailConfig, SmtpConfig, SmtpTls};

/// A mail that could not be built or sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// An address did not parse.
    #[error("bad address: {0}")]
    Address(#[from] lettre::address::AddressError),
    /// The message could not be built.
    #[error("cannot build message: {0}")]
    Build(#[from] lettre::error::Error),
    /// The SMTP relay refused or could not be reached.
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// Writing to the outbox failed.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The outbox's disk is full: the mail was not written, and can be
    /// once space returns.
    #[error("outbox: {0}")]
    Unavailable(crate::store::Unavailable),
}

/// An outbox failure: [`MailError::Unavailable`] when the disk is full.
fn outbox_error(
    err: &(dyn std::error::Error + 'static),
    context: impl std::fmt::Display,
) -> MailError {
    match crate::store::Unavailable::of_error(err) {
        Some(why) => MailError::Unavailable(why),
        None => MailError::Outbox(format!("{context}{err}")),
    }
}

/// Something that delivers mail.
#[async_trait]
pub trait Mailer: Send + Sync + std::fmt::Debug {
    /// Sends one message.
    async fn send(&self, message: Message) -> Result<(), MailError>;
    /// Whether mail can go out now (health).
    async fn check(&self) -> Result<(), MailError>;
    /// `"smtp"` or `"outbox"`.
    fn kind(&self) -> &'static str;
    /// Deletes kept mail older than `age` (the outbox's files); returns
    /// how many went.
    async fn tidy(&self, _age: Duration) -> Result<usize, MailError> {
        Ok(0)
    }
}

/// Writes each mail as an `.eml` file.
#[derive(Debug)]
pub struct OutboxMailer {
    dir: PathBuf,
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl OutboxMailer {
    /// An outbox in `dir`, created if missing.
    ///
    /// # Errors
    /// [`MailError::Outbox`] if the directory cannot be created.
    pub fn new(dir: &Path) -> Result<Self, MailError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MailError::Outbox(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            dir: dir.to_owned(),
            transport: AsyncFileTransport::new(dir),
        })
    }
}

#[async_trait]
impl Mailer for OutboxMailer {
    async fn send(&self, message: Message) -> Result<(), MailError> {
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| outbox_error(&e, ""))
    }

    async fn check(&self) -> Result<(), MailError> {
        let probe = self.dir.join(".health-probe");
        let context = format!("{}: ", self.dir.display());
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(|e| outbox_error(&e, &context))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(|e| outbox_error(&e, &context))
    }

    fn kind(&self) -> &'static str {
        "outbox"
    }

    async fn tidy(&self, age: Duration) -> Result<usize, MailError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || remove_older(&dir, age))
            .await
            .map_err(|e| MailError::Outbox(e.to_string()))?
            .map_err(|e| MailError::Outbox(e.to_string()))
    }
}

/// Deletes the `.eml` files in `dir` last written more than `age` ago.
fn remove_older(dir: &Path, age: Duration) -> std::io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|at| now.duration_since(at).is_ok_and(|d| d > age));
        if old && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sends through an SMTP relay.
#[derive(Debug)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpMailer {
    /// A pooled connection to the relay in `config`.
    ///
    /// # Errors
    /// [`MailError::Smtp`] if the TLS parameters cannot be built.
    pub fn new(config: &SmtpConfig) -> Result<Self, MailError> {
        let mut builder = match config.tls {
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)?,
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host).port(25)
            }
        };
        if let Some(port) = config.port {
            builder = builder.port(port);
        }
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, message: Message) -> Result<(), MailError> {
        self.transport.send(message).await.map(|_| ())?;
        Ok(())
    }

    async fn check(&self) -> Result<(), MailError> {
        self.transport.test_connection().await.map(|_| ())?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }
}

/// The mailer `config` asks for.
///
/// # Errors
/// [`MailError`] if it cannot be set up.
pub fn from_config(
    config: &MailConfig,
    outbox: &Path,
) -> Result<std::sync::Arc<dyn Mailer>, MailError> {
    Ok(match &config.smtp {
        Some(smtp) => std::sync::Arc::new(SmtpMailer::new(smtp)?),
        None => std::sync::Arc::new(OutboxMailer::new(outbox)?),
    })
}

/// What a mailed code is for, as the mail words it.
#[derive(Debug, Clone, Copy)]
pub enum CodeMail<'a> {
    /// Registering an application with this name.
    Register {
        /// The application name as typed.
        app_name: &'a str,
    },
    /// Signing in as a subscriber.
    SignIn,
}

/// The mail carrying a code. The code stands alone on the first line of
/// the body (`Confer code: 123456`), which stays readable in the
/// quoted-printable encoding whatever the rest of the text holds.
///
/// # Errors
/// [`MailError`] if an address does not parse.
pub fn code_message(
    from: &str,
    to: &str,
    code: &str,
    what: CodeMail<'_>,
    valid_minutes: u64,
) -> Result<Message, MailError> {
    let (subject, purpose) = match what {
        CodeMail::Register { app_name } => (
            "Your Confer registration code".to_owned(),
            format!("to register the application \u{ab}{app_name}\u{bb}"),
        ),
        CodeMail::SignIn => (
            "Your Confer sign-in code".to_owned(),
            "to sign in to Confer".to_owned(),
        ),
    };
    let body = format!(
        "Confer code: {code}\n\nEnter this code {purpose}.\nIt is valid for {valid_minutes} minutes \
         and can be used once.\nIf you did not ask for it, ignore this mail.\n"
    );
    let message = Message::builder()
        .from(from.parse::<Mailbox>()?)
        .to(to.parse::<Mailbox>()?)
        .subject(subject)
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .header(ContentTransferEncoding::QuotedPrintable)
                .body(body),
        )?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_writes_an_eml_with_a_readable_code() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = OutboxMailer::new(dir.path()).unwrap();
        mailer.check().await.unwrap();
        let name = "Склад \"Север\" <&> 🚚";
        let msg = code_message(
            "Confer <confer@localhost>",
            "a@example.com",
            "012345",
            CodeMail::Register { app_name: name },
            15,
        )
        .unwrap();
        mailer.send(msg).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert!(text.contains("Confer code: 012345"), "{text}");
    }
}
