//! Confer's collaboration server.
//!
//! # Model
//!
//! * A **subscriber** owns an e-mail address and registers **applications**
//!   by confirming a mailed 6-digit code. Each application gets a
//!   server-generated id and a secret shown once; the server keeps a SHA-256
//!   digest of the secret (HTTP Basic) and an HKDF-derived key that verifies
//!   the **user tokens** the application signs (see [`auth`]).
//! * A **user** belongs to one application and is provisioned the first
//!   time the application vouches for it, by a token it minted or obtained
//!   from `POST /api/v1/tokens`.
//! * **Conversations** hold members and totally ordered **messages**; every
//!   change becomes an event in each recipient's log, replayed to a client
//!   that resumes ([`messaging`], [`ws`]). Who is in a conversation is
//!   kept in memory for the send path and presence
//!   ([`messaging::Rosters`]); the store stays the authority.
//! * A **call** belongs to a conversation: two people talk peer-to-peer
//!   with signalling relaying their SDP and candidates; from a threshold of
//!   participants the call goes through the SFU that runs in this process
//!   ([`calls`], driven through `confer_sfu::SfuControl`).
//! * **Files** are uploaded by members straight to storage (a local
//!   directory served by this server, or S3) through signed URLs, checked
//!   (size, SHA-256), previewed if they are images, and attached to
//!   messages ([`files`]).
//! * **Governance**: an append-only audit log of administrative actions
//!   ([`audit`]), incoming webhooks that post as the application's bot
//!   ([`hooks`]), and outgoing webhooks: events written durably with the
//!   message they are about, then POSTed signed to the application's
//!   endpoints with retries and a dead letter ([`outbox`]); retention
//!   periods and legal holds ([`governance`]); and exports of
//!   conversations as archives ([`export`]).
//!
//! * **A cluster**: several processes share one PostgreSQL store
//!   ([`store::PgStore`]) and meet on NATS ([`bus::NatsBus`]), which
//!   carries each committed event to the node holding the user's
//!   connections, presence, and the invalidations of cached rosters; the
//!   store stays the truth, and a session that may have missed something
//!   reads it. A call lives on the node where it started and requests
//!   about it are forwarded there ([`calls`]).
//!
//! # Layers
//!
//! [`http`] handlers are thin: they extract input (with [`http::extract`]),
//! call the domain ([`tenancy::Tenancy`]) and map the result or an
//! [`error::Error`]. The domain works on the [`store::Store`] and
//! [`mail::Mailer`] traits and a [`ids::Clock`], so tests can run it on an
//! in-memory store and a manual clock. [`server::run`] serves the router on
//! a listener with graceful shutdown; the `signalling` binary only parses
//! its command line and configuration and calls it.

pub mod audit;
pub mod auth;
pub mod bus;
pub mod calls;
pub mod config;
pub mod error;
pub mod export;
pub mod files;
pub mod governance;
pub mod health;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod limits;
pub mod mail;
pub mod messaging;
pub mod outbox;
pub mod proto;
pub mod server;
pub mod store;
pub mod tenancy;
pub mod ws;

pub use config::SignallingConfig;
pub use server::{Services, run};
