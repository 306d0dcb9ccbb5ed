//! What upload requests are checked against, and how a file is named in
//! a download.

use super::*;

pub(super) fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::InvalidRequest("name: must not be empty".to_owned()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidRequest(format!(
            "name: longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidRequest(
            "name: must not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

/// A MIME type: `type/subtype` with optional parameters, in ASCII.
pub(super) fn check_content_type(value: &str) -> Result<String, Error> {
    let essence = value.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    let ok = value.len() <= 255
        && value.is_ascii()
        && !value.chars().any(|c| c.is_ascii_control())
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    if ok {
        Ok(value.trim().to_ascii_lowercase())
    } else {
        Err(Error::InvalidRequest(format!(
            "content_type: {value:?} is not a MIME type such as image/png"
        )))
    }
}

pub(super) fn check_sha256(value: &str) -> Result<String, Error> {
    if value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(Error::InvalidRequest(
            "sha256: must be 64 hexadecimal digits".to_owned(),
        ))
    }
}

/// How a file's object is served: its `Content-Type` and
/// `Content-Disposition` (the bytes as an attachment under the file's name,
/// the preview inline).
pub(super) fn presentation(file: &FileRecord, part: Part) -> (String, String) {
    match part {
        Part::Preview => (
            "image/jpeg".to_owned(),
            content_disposition("inline", &format!("{}.preview.jpg", file.name)),
        ),
        Part::Bytes | Part::Incoming => (
            file.content_type.clone(),
            content_disposition("attachment", &file.name),
        ),
    }
}

/// A `Content-Disposition` value for a name in any script (RFC 6266): an
/// ASCII `filename` for old clients (other characters become `_`) and the
/// exact name as UTF-8 in `filename*` (RFC 8187).
#[must_use]
pub fn content_disposition(kind: &str, name: &str) -> String {
    /// Everything but RFC 8187's attr-char is percent-encoded.
    const NOT_ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' && c != '/' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, NOT_ATTR_CHAR);
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}
