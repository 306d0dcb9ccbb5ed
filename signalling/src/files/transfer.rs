//! The local backend's transfers: downloads and uploads through this
//! server, checked against their signed URLs.

use super::*;

impl Files {
    /// A local-backend download: checks the URL, then opens the object
    /// with the file's presentation (the HTTP layer streams it).
    ///
    /// # Errors
    /// `not_found` (also on an S3 server), `bad_signature`, `url_expired`.
    pub async fn serve_local(
        &self,
        id: FileId,
        access: local::Access,
        expires: i64,
        signature: &str,
    ) -> Result<Download, Error> {
        let local = self.local.as_ref().ok_or(Error::NoRoute)?;
        local.verify(access, id, expires, signature, self.clock.now())?;
        let file = match self.store.file(id).await? {
            Some(f) if f.state == FileState::Ready => f,
            _ => return Err(Error::NotFound("file")),
        };
        let part = match access {
            local::Access::Preview => Part::Preview,
            _ => Part::Bytes,
        };
        let (content_type, disposition) = presentation(&file, part);
        let Some((len, bytes)) = local
            .open_object(Object::new(file.app_id, file.id, part))
            .await
            .map_err(Error::internal)?
        else {
            return Err(Error::NotFound("file"));
        };
        metrics::counter!("files_downloads_total").increment(1);
        Ok(Download {
            content_type,
            disposition,
            len,
            sha256: file.sha256.filter(|_| part == Part::Bytes),
            bytes,
        })
    }

    /// Receives a local-backend upload.
    ///
    /// # Errors
    /// `not_found` (also on an S3 server), `bad_signature`, `url_expired`,
    /// `already_uploaded` (409), `upload_size_mismatch`,
    /// `checksum_mismatch`.
    pub async fn receive_local(
        &self,
        id: FileId,
        expires: i64,
        signature: &str,
        content_length: Option<u64>,
        body: ByteStream,
    ) -> Result<(), Error> {
        let local = self.local.as_ref().ok_or(Error::NoRoute)?;
        local.verify(local::Access::Put, id, expires, signature, self.clock.now())?;
        let file = self.store.file(id).await?.ok_or(Error::NotFound("file"))?;
        if file.state != FileState::Pending {
            return Err(Error::refused(
                Code::AlreadyUploaded,
                "this file's upload is completed; it cannot be changed",
            ));
        }
        if let Some(len) = content_length
            && len != file.size
        {
            return Err(Error::refused(
                Code::UploadSizeMismatch,
                format!("Content-Length is {len}, {} bytes were declared", file.size),
            ));
        }
        local
            .receive(
                Object::new(file.app_id, file.id, Part::Incoming),
                file.size,
                file.declared_sha256.as_deref(),
                body,
            )
            .await?;
        metrics::counter!("files_bytes_received_total").increment(file.size);
        Ok(())
    }
}
