//! Why a request is refused, decided below the HTTP layer: the client's mistake, with a stable
//! code and a message for the developer. The HTTP layer maps each kind to its status (400, 403,
//! 404, 409, 413, 415); nothing here knows about HTTP.

/// What kind of mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Malformed or out-of-range input (400).
    Invalid,
    /// The sender may not do this (403): e.g. a web app posting a mobile install.
    Forbidden,
    /// The thing named does not exist (404).
    NotFound,
    /// The request contradicts what is stored (409).
    Conflict,
    /// The input is larger than a limit (413).
    TooLarge,
    /// An encoding the server does not read (415).
    Unsupported,
}

/// A refused request: its kind, a stable machine-readable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, code: &'static str, message: impl Into<String>) -> Self {
        Refusal { kind, code, message: message.into() }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Invalid, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Forbidden, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Conflict, code, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::TooLarge, "payload_too_large", message)
    }
}
