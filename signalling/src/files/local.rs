//! The default backend: a directory on this machine, with URLs that point
//! at this server and carry an HMAC over what they allow and until when.
//!
//! Layout: `<dir>/<app>/<file>` (checked bytes), `<app>/<file>.upload`
//! (an upload not yet completed) and `<app>/<file>.preview.jpg`. An upload
//! is written to `<dir>/.partial/` and renamed to `.upload` only once its
//! length (and SHA-256, when declared) are right, so a half-written file
//! is never visible. The signing key is `<dir>/.url-key` (32 random bytes, made on
//! first start, mode 0600): URLs outlive a restart.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::storage::{ByteStream, Object, Part, Presentation, Storage, StorageError, Validity};
use crate::error::{Code, Error};
use crate::ids::{FileId, Timestamp};

type HmacSha256 = Hmac<Sha256>;

/// An upload that sends nothing for this long is cut off (and its partial
/// file removed), so a stalled client holds no file and no task.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a local URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `PUT` the file's bytes.
    Put,
    /// `GET` the file's bytes.
    Get,
    /// `GET` the file's preview.
    Preview,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Preview => "preview",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Put | Self::Get => "content",
            Self::Preview => "preview",
        }
    }
}

/// The local directory backend.
#[derive(Debug)]
pub struct LocalStorage {
    dir: PathBuf,
    key: [u8; 32],
}

impl LocalStorage {
    /// Opens (creating) `dir` and its URL key.
    ///
    /// # Errors
    /// If the directory or key cannot be created or read.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join(".partial"))?;
        let key_path = dir.join(".url-key");
        let key = match std::fs::read(&key_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                write_private(&key_path, &bytes)?;
                bytes.to_vec()
            }
            Err(e) => return Err(e),
        };
        let key: [u8; 32] = key.try_into().map_err(|_| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!("{} is not 32 bytes", key_path.display()),
            )
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// Removes partial files not written to for `age`: uploads cut off by
    /// a crash (a live upload writes continuously). Returns how many.
    pub fn remove_stale_partials(&self, age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join(".partial")) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        entries
            .flatten()
            .filter(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age)
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    fn path(&self, object: Object) -> PathBuf {
        self.dir.join(object.key())
    }

    fn signature(&self, access: Access, file: FileId, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(access, file, expires).finalize().into_bytes())
    }

    fn mac(&self, access: Access, file: FileId, expires: i64) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(format!("{}\n{file}\n{expires}", access.as_str()).as_bytes());
        mac
    }

    fn url(&self, access: Access, object: Object, validity: Validity, base: &str) -> String {
        let expires = validity.expires_at().0 / 1000;
        format!(
            "{base}/api/v1/files/{}/{}?expires={expires}&signature={}",
            object.file,
            access.path(),
            self.signature(access, object.file, expires)
        )
    }

    /// Checks a URL's signature, then its expiry: a URL whose expiry was
    /// changed is `bad_signature`, not `url_expired`.
    ///
    /// # Errors
    /// `bad_signature` or `url_expired` (403).
    pub fn verify(
        &self,
        access: Access,
        file: FileId,
        expires: i64,
        signature: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        let bad = || {
            Error::refused(
                Code::BadSignature,
                "the URL's signature does not match: use the URL exactly as it was given",
            )
        };
        let given = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad())?;
        self.mac(access, file, expires)
            .verify_slice(&given)
            .map_err(|_| bad())?;
        if now.0 / 1000 >= expires {
            return Err(Error::refused(
                Code::UrlExpired,
                "this URL has expired: ask for a new one",
            ));
        }
        Ok(())
    }

    /// Receives an upload of `object` (its [`Part::Incoming`]): streams
    /// `body` to a partial file while counting and hashing, refuses it the
    /// moment it is longer than `size`, and at the end if it is shorter or
    /// its SHA-256 is not `declared`; only a right upload is renamed into
    /// place. Returns the SHA-256 (hex).
    ///
    /// # Errors
    /// `upload_size_mismatch`, `checksum_mismatch` (400); `unavailable`
    /// (503) when the disk is full, `internal` when it fails otherwise.
    pub async fn receive(
        &self,
        object: Object,
        size: u64,
        declared: Option<&str>,
        body: ByteStream,
    ) -> Result<String, Error> {
        let partial = self.dir.join(".partial").join(format!(
            "{}.{:016x}",
            object.file,
            rand::random::<u64>()
        ));
        let result = self.write_partial(&partial, size, declared, body).await;
        let outcome = match result {
            Ok(sha256) => self
                .place(&partial, &self.path(object))
                .await
                .map(|()| sha256)
                .map_err(Error::io),
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        outcome
    }

    async fn write_partial(
        &self,
        partial: &Path,
        size: u64,
        declared: Option<&str>,
        body: ByteStream,
    ) -> Result<String, Error> {
        let file = tokio::fs::File::create(partial).await.map_err(Error::io)?;
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut hash = Sha256::new();
        let mut received: u64 = 0;
        let mut chunks = body;
        loop {
            let next = tokio::time::timeout(STALL_TIMEOUT, chunks.next())
                .await
                .map_err(|_| {
                    size_mismatch(format!(
                        "the upload stalled for {} s after {received} of {size} bytes",
                        STALL_TIMEOUT.as_secs()
                    ))
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                size_mismatch(format!(
                    "the upload broke off after {received} of {size} bytes: {e}"
                ))
            })?;
            received += chunk.len() as u64;
            if received > size {
                return Err(size_mismatch(format!(
                    "the upload is longer than the {size} bytes declared"
                )));
            }
            hash.update(&chunk);
            out.write_all(&chunk).await.map_err(Error::io)?;
        }
        if received < size {
            return Err(size_mismatch(format!(
                "the upload has {received} bytes, {size} were declared"
            )));
        }
        let sha256 = hex(&hash.finalize());
        if let Some(declared) = declared
            && !declared.eq_ignore_ascii_case(&sha256)
        {
            return Err(Error::refused(
                Code::ChecksumMismatch,
                format!("the bytes have SHA-256 {sha256}, {declared} was declared"),
            ));
        }
        out.flush().await.map_err(Error::io)?;
        out.into_inner().sync_all().await.map_err(Error::io)?;
        Ok(sha256)
    }

    /// Renames a complete file into place and makes the rename durable.
    async fn place(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let dir = to.parent().unwrap_or(&self.dir).to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(from, to).await?;
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Opens an object to serve it: its length and its bytes.
    ///
    /// # Errors
    /// `None` when there is no such object; an error when the disk fails.
    pub async fn open_object(&self, object: Object) -> std::io::Result<Option<(u64, ByteStream)>> {
        match tokio::fs::File::open(self.path(object)).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
                Ok(Some((len, Box::pin(stream))))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn size_mismatch(message: String) -> Error {
    Error::refused(Code::UploadSizeMismatch, message)
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[async_trait]
impl Storage for LocalStorage {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn upload_url(
        &self,
        object: Object,
        _size: u64,
        _content_type: &str,
        validity: Validity,
        base: &str,
    ) -> String {
        self.url(Access::Put, object, validity, base)
    }

    fn download_url(
        &self,
        object: Object,
        _presentation: Presentation<'_>,
        validity: Validity,
        base: &str,
    ) -> String {
        let access = if object.part == Part::Preview {
            Access::Preview
        } else {
            Access::Get
        };
        self.url(access, object, validity, base)
    }

    async fn size(&self, object: Object) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.path(object)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(&self, object: Object) -> Result<ByteStream, StorageError> {
        match self.open_object(object).await? {
            Some((_, stream)) => Ok(stream),
            None => Err(StorageError::Io(std::io::Error::new(
                ErrorKind::NotFound,
                format!("no object {}", object.key()),
            ))),
        }
    }

    async fn write(
        &self,
        object: Object,
        bytes: Bytes,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let partial = self.dir.join(".partial").join(format!(
            "{}.{:016x}",
            object.file,
            rand::random::<u64>()
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&partial).await?;
            file.write_all(&bytes).await?;
            file.sync_all().await?;
            self.place(&partial, &self.path(object)).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        Ok(result?)
    }

    async fn write_file(
        &self,
        object: Object,
        path: &Path,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let partial = self.dir.join(".partial").join(format!(
            "{}.{:016x}",
            object.file,
            rand::random::<u64>()
        ));
        let result = async {
            tokio::fs::copy(path, &partial).await?;
            tokio::fs::File::open(&partial).await?.sync_all().await?;
            self.place(&partial, &self.path(object)).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        Ok(result?)
    }

    async fn promote(&self, incoming: Object) -> Result<(), StorageError> {
        let from = self.path(incoming);
        Ok(self
            .place(&from, &self.path(incoming.with(Part::Bytes)))
            .await?)
    }

    async fn delete(&self, object: Object) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(object)).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn check(&self) -> Result<(), StorageError> {
        let meta = tokio::fs::metadata(self.dir.join(".partial")).await?;
        if meta.permissions().readonly() {
            return Err(StorageError::Io(std::io::Error::new(
                ErrorKind::PermissionDenied,
                format!("{} is read-only", self.dir.display()),
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_url_is_bound_to_its_access_file_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStorage::open(dir.path()).unwrap();
        let file = FileId::random();
        let now = Timestamp::from_secs(1_000);
        let sig = local.signature(Access::Put, file, 2_000);
        local.verify(Access::Put, file, 2_000, &sig, now).unwrap();
        let code = |r: Result<(), Error>| r.unwrap_err().code();
        assert_eq!(
            code(local.verify(Access::Get, file, 2_000, &sig, now)),
            Code::BadSignature
        );
        assert_eq!(
            code(local.verify(Access::Put, FileId::random(), 2_000, &sig, now)),
            Code::BadSignature
        );
        assert_eq!(
            code(local.verify(Access::Put, file, 3_000, &sig, now)),
            Code::BadSignature
        );
        assert_eq!(
            code(local.verify(Access::Put, file, 2_000, "AAAA", now)),
            Code::BadSignature
        );
        let later = Timestamp::from_secs(2_000);
        assert_eq!(
            code(local.verify(Access::Put, file, 2_000, &sig, later)),
            Code::UrlExpired
        );
        // The key survives a restart.
        let again = LocalStorage::open(dir.path()).unwrap();
        again.verify(Access::Put, file, 2_000, &sig, now).unwrap();
    }
}
