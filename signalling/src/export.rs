//! Exports: a subscriber asks for the messages of one conversation, or of
//! every conversation a user is in, sent in a time range; the server
//! builds a tar archive in the background and keeps it in the file store
//! (the local directory or the S3 bucket) until `[exports] keep_days`
//! after it is ready.
//!
//! The archive holds, under `confer-export/`: `manifest.json` (what was
//! asked, when, the counts), `conversations.jsonl` (each conversation and
//! its members), `messages.jsonl` (each message as clients see it in
//! history — edited ones with `edited_at`, deleted ones emptied with
//! `deleted_at` — then, `"record": "version"`, each version a legal hold
//! kept before its author edited or deleted it), `users.jsonl` (the
//! authors and members) and `files/<file id>/<name>` (the attachments
//! still stored). Progress is stored as it goes; an export whose progress
//! stops (its process died) is marked failed. The download URL is signed
//! with the export's own random key and expires; asking for the export,
//! its completion and each download are in the audit log.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::io::AsyncWriteExt as _;

use crate::audit::Audited;
use crate::error::{Code, Error};
use crate::files::storage::{ByteStream, Object, Part};
use crate::ids::{ConversationId, ExportId, FileId, Timestamp, UserId};
use crate::messaging::MessageView;
use crate::server::Services;
use crate::store::exports::ExportRecord;
use crate::store::messaging::{MessageBody, StoredMessage};
use crate::store::{Application, Subscriber};

/// How long a download URL works.
pub const EXPORT_URL_TTL: Duration = Duration::from_secs(60 * 60);

/// A running export whose progress has not moved for this long is failed
/// (its process stopped). Progress moves with each page of messages and
/// each attachment; packing and storing the archive must fit in it.
const STALLED_AFTER: Duration = Duration::from_secs(60 * 60);

/// Messages read per page.
const PAGE: u32 = 200;

/// The end of a range without one: 9999-12-31T23:59:59Z.
pub const OPEN_END: Timestamp = Timestamp(253_402_300_799_000);

/// The archive's top directory.
const ROOT: &str = "confer-export";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The archive's object: the export's id in the application's files.
fn object(export: &ExportRecord) -> Object {
    Object::new(export.app_id, FileId(export.id.0), Part::Bytes)
}

/// The signature of a download URL of `export` that expires at `expires`
/// (Unix seconds).
fn signature(export: &ExportRecord, expires: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(export.token.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{}.{expires}", export.id).as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// A name safe as one path component of the archive.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.trim() {
        "" | "." | ".." => "file".to_owned(),
        // At most 200 bytes (file systems allow 255), whole characters.
        n => {
            let mut end = n.len().min(200);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            n[..end].to_owned()
        }
    }
}

/// One JSON line.
fn line(value: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("JSON serializes");
    out.push(b'\n');
    out
}

/// What the run writes, and where.
struct Work {
    dir: tempfile::TempDir,
    conversations: tokio::io::BufWriter<tokio::fs::File>,
    messages: tokio::io::BufWriter<tokio::fs::File>,
    people: BTreeSet<UserId>,
    files: BTreeSet<FileId>,
}

impl Work {
    fn content(&self) -> PathBuf {
        self.dir.path().join(ROOT)
    }

    fn note(&mut self, body: &MessageBody, author: Option<UserId>) {
        self.people.extend(author);
        self.files
            .extend(body.attachments.iter().map(|a| a.file_id));
    }
}

impl Services {
    /// Starts an export of one conversation or of a user's conversations,
    /// of the messages sent in `from..to`; it runs in the background.
    ///
    /// # Errors
    /// `invalid_request` unless exactly one of them is given, or for
    /// `from` not before `to`; `not_found` for one of another application.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_export(
        self: &Arc<Self>,
        subscriber: &Subscriber,
        app: &Application,
        conversation: Option<ConversationId>,
        user: Option<UserId>,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        ip: Option<IpAddr>,
    ) -> Result<ExportRecord, Error> {
        let target = self.scope_target(app, conversation, user).await?;
        let now = self.clock.now();
        let (from, to) = (
            from.unwrap_or(Timestamp(0)),
            to.unwrap_or(OPEN_END).min(OPEN_END),
        );
        if from >= to {
            return Err(Error::InvalidRequest("from: before to".to_owned()));
        }
        let export = ExportRecord {
            id: ExportId::random(),
            app_id: app.id,
            subscriber_id: subscriber.id,
            conversation_id: conversation,
            user_id: user,
            from,
            to,
            state: "running".to_owned(),
            conversations_total: 0,
            conversations_done: 0,
            messages: 0,
            files: 0,
            bytes: 0,
            error: None,
            token: crate::auth::generate_secret(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        self.store.create_export(&export).await?;
        self.audit(self.export_audit(&export, "export.requested", target), ip)
            .await;
        let this = self.clone();
        let running = export.clone();
        tokio::spawn(async move { this.run_export(running).await });
        Ok(export)
    }

    fn export_audit(&self, export: &ExportRecord, action: &'static str, target: String) -> Audited {
        Audited {
            subscriber_id: export.subscriber_id,
            app_id: Some(export.app_id),
            actor: format!("subscriber:{}", export.subscriber_id),
            action,
            target: Some(target),
            details: Some(serde_json::json!({
                "export_id": export.id,
                "from": export.from.to_rfc3339(),
                "to": (export.to < OPEN_END).then(|| export.to.to_rfc3339()),
            })),
        }
    }

    /// An export of `app`.
    ///
    /// # Errors
    /// `not_found` for another application's.
    pub async fn export_of(&self, app: &Application, id: ExportId) -> Result<ExportRecord, Error> {
        self.store
            .export(id)
            .await?
            .filter(|e| e.app_id == app.id)
            .ok_or(Error::NotFound("export"))
    }

    /// A download URL of a ready export (under `base`), and when it stops
    /// working.
    #[must_use]
    pub fn export_url(&self, export: &ExportRecord, base: &str) -> (String, Timestamp) {
        let until = self.clock.now().plus(EXPORT_URL_TTL);
        let expires = until.as_secs();
        (
            format!(
                "{base}/api/v1/exports/{}/archive?expires={expires}&signature={}",
                export.id,
                signature(export, expires)
            ),
            until,
        )
    }

    /// The archive of export `id`, for a URL signed with `signature` that
    /// expires at `expires`; the download is audited.
    ///
    /// # Errors
    /// `bad_signature`, `url_expired` (403); `not_found` when it is not
    /// ready (or expired).
    pub async fn open_export(
        &self,
        id: ExportId,
        expires: i64,
        given: &str,
        ip: Option<IpAddr>,
    ) -> Result<(ExportRecord, ByteStream), Error> {
        let bad = || {
            Error::refused(
                Code::BadSignature,
                "the URL's signature does not match: use the URL exactly as it was given",
            )
        };
        let export = self.store.export(id).await?.ok_or_else(bad)?;
        let expected = signature(&export, expires);
        if !crate::auth::digests_equal(&expected, given) {
            return Err(bad());
        }
        if expires < self.clock.now().as_secs() {
            return Err(Error::refused(
                Code::UrlExpired,
                "the URL has expired: ask for the export again for a new one",
            ));
        }
        if export.state != "ready" {
            return Err(Error::NotFound("export"));
        }
        let bytes = self
            .files
            .storage()
            .read(object(&export))
            .await
            .map_err(|e| Error::internal(anyhow::anyhow!("reading an export: {e}")))?;
        self.audit(
            self.export_audit(&export, "export.downloaded", format!("export:{id}")),
            ip,
        )
        .await;
        Ok((export, bytes))
    }

    /// Fails exports whose progress stopped (their process died) and
    /// deletes the archives of exports ready for longer than
    /// `[exports] keep_days`.
    ///
    /// # Errors
    /// On store failure.
    pub async fn tidy_exports(&self) -> Result<(), Error> {
        let now = self.clock.now();
        for mut export in self
            .store
            .exports_in(
                "running",
                Timestamp(now.0.saturating_sub(ms(STALLED_AFTER))),
            )
            .await?
        {
            export.state = "failed".to_owned();
            export.error = Some("interrupted: the server stopped while building it".to_owned());
            export.updated_at = now;
            export.finished_at = Some(now);
            self.store.update_export(&export, "running").await?;
        }
        let keep = Duration::from_secs(self.config.exports.keep_days * 24 * 60 * 60);
        for mut export in self
            .store
            .exports_in("ready", Timestamp(now.0.saturating_sub(ms(keep))))
            .await?
        {
            if let Err(e) = self.files.storage().delete(object(&export)).await {
                tracing::warn!(export = %export.id, error = %e, "deleting an old export failed");
                continue;
            }
            export.state = "expired".to_owned();
            export.updated_at = now;
            self.store.update_export(&export, "ready").await?;
        }
        Ok(())
    }

    /// Builds the archive and stores it; records the outcome.
    async fn run_export(self: Arc<Self>, mut export: ExportRecord) {
        let outcome = self.build_export(&mut export).await;
        let now = self.clock.now();
        export.updated_at = now;
        export.finished_at = Some(now);
        match outcome {
            Ok(bytes) => {
                export.state = "ready".to_owned();
                export.bytes = bytes;
                let what = self
                    .export_audit(&export, "export.completed", format!("export:{}", export.id))
                    .with(serde_json::json!({
                        "export_id": export.id,
                        "messages": export.messages,
                        "files": export.files,
                        "bytes": bytes,
                    }));
                self.audit(
                    Audited {
                        actor: "system:export".to_owned(),
                        ..what
                    },
                    None,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(export = %export.id, error = %e, "an export failed");
                export.state = "failed".to_owned();
                export.error = Some(e.to_string());
            }
        }
        if let Err(e) = self.store.update_export(&export, "running").await {
            tracing::warn!(export = %export.id, error = %e, "recording an export's end failed");
        }
    }

    async fn build_export(&self, export: &mut ExportRecord) -> Result<u64, Error> {
        let io = |e: std::io::Error| Error::internal(anyhow::anyhow!("writing an export: {e}"));
        let dir = tempfile::tempdir_in(&self.config.data_dir).map_err(io)?;
        tokio::fs::create_dir_all(dir.path().join(ROOT).join("files"))
            .await
            .map_err(io)?;
        let open = |name: &str| {
            let path = dir.path().join(ROOT).join(name);
            async move {
                Ok::<_, std::io::Error>(tokio::io::BufWriter::new(
                    tokio::fs::File::create(path).await?,
                ))
            }
        };
        let mut work = Work {
            conversations: open("conversations.jsonl").await.map_err(io)?,
            messages: open("messages.jsonl").await.map_err(io)?,
            dir,
            people: BTreeSet::new(),
            files: BTreeSet::new(),
        };
        let conversations = match (export.conversation_id, export.user_id) {
            (Some(c), _) => vec![c],
            (None, Some(u)) => self.store.member_conversations(export.app_id, u).await?,
            (None, None) => Vec::new(),
        };
        export.conversations_total = conversations.len() as u64;
        for id in conversations {
            self.export_conversation(export, id, &mut work).await?;
            export.conversations_done += 1;
            export.updated_at = self.clock.now();
            self.store.update_export(export, "running").await?;
        }
        self.export_files(export, &mut work).await?;
        self.export_people(export, &mut work).await?;
        work.conversations.flush().await.map_err(io)?;
        work.messages.flush().await.map_err(io)?;
        let manifest = serde_json::json!({
            "format": "confer-export/1",
            "export_id": export.id,
            "app_id": export.app_id,
            "conversation_id": export.conversation_id,
            "user_id": export.user_id,
            "from": export.from.to_rfc3339(),
            "to": (export.to < OPEN_END).then(|| export.to.to_rfc3339()),
            "requested_at": export.created_at.to_rfc3339(),
            "built_at": self.clock.now().to_rfc3339(),
            "conversations": export.conversations_done,
            "messages": export.messages,
            "files": export.files,
        });
        tokio::fs::write(work.content().join("manifest.json"), line(&manifest))
            .await
            .map_err(io)?;
        let archive = work.dir.path().join("archive.tar");
        let (content, target) = (work.content(), archive.clone());
        tokio::task::spawn_blocking(move || pack(&content, &target))
            .await
            .map_err(|e| Error::internal(anyhow::anyhow!(e)))?
            .map_err(io)?;
        let bytes = tokio::fs::metadata(&archive).await.map_err(io)?.len();
        self.files
            .storage()
            .write_file(object(export), &archive, "application/x-tar")
            .await
            .map_err(|e| Error::internal(anyhow::anyhow!("storing an export: {e}")))?;
        Ok(bytes)
    }

    /// Writes one conversation, its messages in range and their kept
    /// versions.
    async fn export_conversation(
        &self,
        export: &mut ExportRecord,
        id: ConversationId,
        work: &mut Work,
    ) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::internal(anyhow::anyhow!("writing an export: {e}"));
        let store = self.messaging.store();
        let Some(conversation) = store.conversation(export.app_id, id).await? else {
            return Ok(());
        };
        let members = store.members(id).await?;
        work.people.extend(members.iter().copied());
        let row = serde_json::json!({
            "id": conversation.id,
            "title": conversation.title,
            "is_group": conversation.is_group,
            "all_users": conversation.all_users,
            "app_key": conversation.app_key,
            "context": conversation.context,
            "created_at": conversation.created_at.to_rfc3339(),
            "members": members,
        });
        work.conversations
            .write_all(&line(&row))
            .await
            .map_err(io)?;
        let mut after = 0;
        loop {
            let page = store.history(id, Some(after), None, PAGE).await?;
            for m in page
                .iter()
                .filter(|m| (export.from..export.to).contains(&m.created_at))
            {
                work.note(&m.body, author_of(m));
                let mut row = serde_json::to_value(MessageView::from(m))
                    .map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
                row["record"] = "message".into();
                work.messages.write_all(&line(&row)).await.map_err(io)?;
                export.messages += 1;
            }
            let Some(last) = page.last() else { break };
            after = last.seq;
            if page.len() < PAGE as usize {
                break;
            }
            export.updated_at = self.clock.now();
            self.store.update_export(export, "running").await?;
        }
        for copy in self.store.held_copies(id, export.from, export.to).await? {
            let body: MessageBody = serde_json::from_str(&copy.body).unwrap_or_default();
            work.note(&body, copy.author.parse().ok());
            let row = serde_json::json!({
                "record": "version",
                "message_id": copy.message_id,
                "conversation_id": copy.conversation_id,
                "seq": copy.seq,
                "author": copy.author,
                "created_at": copy.created_at.to_rfc3339(),
                "replaced": copy.why,
                "replaced_at": copy.kept_at.to_rfc3339(),
                "body": body,
            });
            work.messages.write_all(&line(&row)).await.map_err(io)?;
            export.messages += 1;
        }
        Ok(())
    }

    /// Copies the attachments still stored into `files/<id>/<name>`.
    async fn export_files(&self, export: &mut ExportRecord, work: &mut Work) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::internal(anyhow::anyhow!("writing an export: {e}"));
        for id in std::mem::take(&mut work.files) {
            let Some(file) = self.files.record(id).await? else {
                continue;
            };
            let Ok(mut bytes) = self
                .files
                .storage()
                .read(Object::new(export.app_id, id, Part::Bytes))
                .await
            else {
                continue;
            };
            let dir = work.content().join("files").join(id.to_string());
            tokio::fs::create_dir_all(&dir).await.map_err(io)?;
            let mut out = tokio::fs::File::create(dir.join(safe_name(&file.name)))
                .await
                .map_err(io)?;
            while let Some(chunk) = bytes.next().await {
                out.write_all(&chunk.map_err(io)?).await.map_err(io)?;
            }
            out.flush().await.map_err(io)?;
            export.files += 1;
            export.updated_at = self.clock.now();
            self.store.update_export(export, "running").await?;
        }
        Ok(())
    }

    /// Writes `users.jsonl`: the authors and members met.
    async fn export_people(&self, export: &ExportRecord, work: &mut Work) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::internal(anyhow::anyhow!("writing an export: {e}"));
        let ids: Vec<UserId> = work.people.iter().copied().collect();
        let mut out = String::new();
        for chunk in ids.chunks(500) {
            for user in self.store.users(export.app_id, chunk).await? {
                let row = serde_json::json!({
                    "id": user.id,
                    "external_id": user.external_id,
                    "name": user.name,
                    "email": user.email,
                });
                out.push_str(&String::from_utf8(line(&row)).expect("JSON is UTF-8"));
            }
        }
        tokio::fs::write(work.content().join("users.jsonl"), out)
            .await
            .map_err(io)
    }
}

fn author_of(m: &StoredMessage) -> Option<UserId> {
    match m.author {
        crate::store::messaging::Author::User(u) => Some(u),
        crate::store::messaging::Author::App => None,
    }
}

/// Packs `content` (a directory) into the tar file `target`.
fn pack(content: &Path, target: &Path) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(target)?));
    builder.follow_symlinks(false);
    builder.append_dir_all(ROOT, content)?;
    builder
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}
