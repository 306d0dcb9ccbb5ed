//! Any S3-compatible store. Clients get SigV4 presigned URLs (rusty-s3
//! signs them); the server's own requests (check, read, write a preview,
//! delete) are presigned the same way and sent with reqwest.
//!
//! An upload URL signs `Content-Length` and `Content-Type`, so the store
//! itself refuses a body of another length; the server still checks the
//! object's size when the upload is completed.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::storage::{ByteStream, Object, Part, Presentation, Storage, StorageError, Validity};
use crate::config::S3Config;

/// How long the URLs of the server's own requests live.
const OWN_REQUEST_TTL: Duration = Duration::from_secs(60);

/// An S3 bucket.
#[derive(Debug)]
pub struct S3Storage {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

impl S3Storage {
    /// A client for the configured bucket (nothing is sent yet).
    ///
    /// # Errors
    /// If the endpoint is not a usable URL.
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let endpoint = config
            .endpoint
            .parse()
            .map_err(|e| StorageError::S3(format!("endpoint {:?}: {e}", config.endpoint)))?;
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| StorageError::S3(format!("bucket: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A store that stops sending is given up on, not waited for.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StorageError::S3(format!("HTTP client: {e}")))?;
        Ok(Self {
            bucket,
            credentials: Credentials::new(config.access_key.clone(), config.secret_key.clone()),
            http,
        })
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

fn at(validity: Validity) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(validity.signed_at.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Turns an answer that is not a success into an error naming the status
/// and the store's own error code.
async fn check_status(
    what: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, StorageError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or("");
    Err(StorageError::S3(format!("{what}: {status} {code}")))
}

fn transport(what: &str) -> impl Fn(reqwest::Error) -> StorageError + '_ {
    move |e| StorageError::S3(format!("{what}: {e}"))
}

impl S3Storage {
    /// Sends a bodiless request to a URL the server signed for itself;
    /// `None` for 404, the answer for a success, an error otherwise.
    async fn own(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        what: &str,
    ) -> Result<Option<reqwest::Response>, StorageError> {
        let response = self
            .http
            .request(method, url)
            .send()
            .await
            .map_err(transport(what))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_status(what, response).await.map(Some)
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn upload_url(
        &self,
        object: Object,
        size: u64,
        content_type: &str,
        validity: Validity,
        _base: &str,
    ) -> String {
        let key = object.key();
        let mut put = self.bucket.put_object(Some(&self.credentials), &key);
        put.headers_mut().insert("content-length", size.to_string());
        put.headers_mut()
            .insert("content-type", content_type.to_owned());
        put.sign_with_time(validity.ttl, &at(validity)).to_string()
    }

    fn download_url(
        &self,
        object: Object,
        presentation: Presentation<'_>,
        validity: Validity,
        _base: &str,
    ) -> String {
        let key = object.key();
        let mut get = self.bucket.get_object(Some(&self.credentials), &key);
        get.query_mut().insert(
            "response-content-disposition",
            presentation.disposition.to_owned(),
        );
        get.query_mut().insert(
            "response-content-type",
            presentation.content_type.to_owned(),
        );
        get.sign_with_time(validity.ttl, &at(validity)).to_string()
    }

    async fn size(&self, object: Object) -> Result<Option<u64>, StorageError> {
        let key = object.key();
        let url = self
            .bucket
            .head_object(Some(&self.credentials), &key)
            .sign_with_time(OWN_REQUEST_TTL, &Self::now());
        let Some(response) = self.own(reqwest::Method::HEAD, url, "HEAD object").await? else {
            return Ok(None);
        };
        let len = response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StorageError::S3("HEAD object: no Content-Length".to_owned()))?;
        Ok(Some(len))
    }

    async fn read(&self, object: Object) -> Result<ByteStream, StorageError> {
        let key = object.key();
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign_with_time(OWN_REQUEST_TTL, &Self::now());
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(transport("GET object"))?;
        let response = check_status("GET object", response).await?;
        Ok(Box::pin(
            response.bytes_stream().map_err(std::io::Error::other),
        ))
    }

    async fn write(
        &self,
        object: Object,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let key = object.key();
        let mut put = self.bucket.put_object(Some(&self.credentials), &key);
        put.headers_mut()
            .insert("content-type", content_type.to_owned());
        let url = put.sign_with_time(OWN_REQUEST_TTL, &Self::now());
        let response = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .send()
            .await
            .map_err(transport("PUT object"))?;
        check_status("PUT object", response).await.map(drop)
    }

    async fn write_file(
        &self,
        object: Object,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(StorageError::Io)?;
        let len = file.metadata().await.map_err(StorageError::Io)?.len();
        let key = object.key();
        let mut put = self.bucket.put_object(Some(&self.credentials), &key);
        put.headers_mut()
            .insert("content-type", content_type.to_owned());
        // Signed for as long as a large body may take to send.
        let url = put.sign_with_time(Duration::from_secs(3600), &Self::now());
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let response = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await
            .map_err(transport("PUT object"))?;
        check_status("PUT object", response).await.map(drop)
    }

    async fn promote(&self, incoming: Object) -> Result<(), StorageError> {
        let size = self.size(incoming).await?;
        let target = incoming.with(Part::Bytes).key();
        let source = format!("/{}/{}", self.bucket.name(), incoming.key());
        let mut copy = self.bucket.put_object(Some(&self.credentials), &target);
        copy.headers_mut()
            .insert("x-amz-copy-source", source.clone());
        let url = copy.sign_with_time(OWN_REQUEST_TTL, &Self::now());
        let response = self
            .http
            .put(url)
            .header("x-amz-copy-source", source)
            .send()
            .await
            .map_err(transport("copy object"))?;
        check_status("copy object", response).await?;
        // A copy can fail after its 200 (an <Error> in the body): the
        // upload is deleted only once the copy is there, whole.
        let copied = self.size(incoming.with(Part::Bytes)).await?;
        if copied.is_none() || copied != size {
            return Err(StorageError::S3(format!(
                "copy object: {copied:?} bytes at the target, {size:?} uploaded"
            )));
        }
        self.delete(incoming).await
    }

    async fn delete(&self, object: Object) -> Result<(), StorageError> {
        let key = object.key();
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &key)
            .sign_with_time(OWN_REQUEST_TTL, &Self::now());
        self.own(reqwest::Method::DELETE, url, "DELETE object")
            .await
            .map(drop)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let url = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign_with_time(OWN_REQUEST_TTL, &Self::now());
        match self.own(reqwest::Method::HEAD, url, "HEAD bucket").await? {
            Some(_) => Ok(()),
            None => Err(StorageError::S3(format!(
                "HEAD bucket: no bucket {:?}",
                self.bucket.name()
            ))),
        }
    }
}
