//! The registry's errors and the one place they become HTTP responses.
//!
//! Every failure a client can see is an [`Error`]; [`Code`] holds the
//! distribution spec's error codes with their HTTP statuses in one table.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::oci::digest::DigestError;
use crate::oci::manifest::ManifestError;
use crate::oci::name::{NameError, ReferenceError, TagError};
use crate::storage::StorageError;

/// The spec's error codes (plus RANGE_INVALID and UNKNOWN, as Distribution has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unknown,
}

impl Code {
    /// The table: code → (wire name, HTTP status).
    pub fn describe(self) -> (&'static str, StatusCode) {
        use Code::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            DigestInvalid => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            ManifestInvalid => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestUnknown => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            NameInvalid => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            SizeInvalid => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
            RangeInvalid => ("RANGE_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            Unauthorized => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            Denied => ("DENIED", StatusCode::FORBIDDEN),
            Unsupported => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            TooManyRequests => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            Unknown => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// What a client is told when a write fails for want of space.
pub const STORAGE_FULL: &str =
    "the registry's storage is full; free space or grow the volume, then retry";

/// What `/readyz` says while the write probe fails.
pub const STORAGE_FULL_OR_UNWRITABLE: &str = "not ready: storage cannot be written (full, read-only, or an object store unreachable or refusing); free space or grow the volume, or see the registry's log for the storage error\n";

/// A request failure: a spec code, a message that says what to do, and
/// optionally a status that overrides the code's default (e.g. 413).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
    pub status: Option<StatusCode>,
    /// Headers a client needs even on failure (e.g. an upload's Location and Range).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Who was refused, for the audit trail (set by auth; never a secret).
    pub refused: Option<Refused>,
}

/// The audit trail's view of an auth refusal.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The user name, service account or robot refused (a claimed user
    /// name when the login itself failed).
    pub subject: String,
    /// The credentials did not authenticate (as opposed to: authenticated,
    /// but without the right).
    pub login_failed: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            status: None,
            headers: Vec::new(),
            refused: None,
        }
    }

    /// Notes who was refused, for the audit trail.
    pub fn refusing(mut self, subject: impl Into<String>, login_failed: bool) -> Self {
        self.refused = Some(Refused {
            subject: subject.into(),
            login_failed,
        });
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.code.describe().1)
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::new(Code::NameInvalid, e.to_string())
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Self {
        Error::new(Code::DigestInvalid, e.to_string())
    }
}

impl From<TagError> for Error {
    fn from(e: TagError) -> Self {
        Error::new(Code::ManifestInvalid, e.to_string())
    }
}

impl From<ReferenceError> for Error {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Digest(d) => d.into(),
            ReferenceError::Tag(t) => t.into(),
        }
    }
}

impl From<ManifestError> for Error {
    fn from(e: ManifestError) -> Self {
        Error::new(Code::ManifestInvalid, e.to_string())
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        if e.is_storage_full() {
            tracing::warn!(error = %e, "storage is full");
            crate::metrics::storage_full();
            // 507 tells clients the request may succeed later, once space
            // is freed; the code stays one every client knows.
            return Error::new(Code::Unknown, STORAGE_FULL)
                .with_status(StatusCode::INSUFFICIENT_STORAGE);
        }
        // The detail goes to the log, not to the client: paths are internal.
        tracing::error!(error = %e, "storage error");
        crate::metrics::storage_error();
        Error::new(
            Code::Unknown,
            "the registry could not read or write its storage; retry, and tell the operator if it persists",
        )
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (code, _) = self.code.describe();
        let status = self.status();
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.message, "detail": null }]
        });
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_error_status() {
        use Code::*;
        for c in [
            BlobUnknown,
            BlobUploadInvalid,
            BlobUploadUnknown,
            DigestInvalid,
            ManifestBlobUnknown,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            RangeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            TooManyRequests,
            Unknown,
        ] {
            let (name, status) = c.describe();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{name}"
            );
            assert_eq!(name, name.to_uppercase());
        }
    }

    #[test]
    fn response_body_is_the_spec_error_envelope() {
        let resp = Error::new(Code::BlobUnknown, "no such blob").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
