//! Error type of the trust crate.

use std::path::PathBuf;

/// Everything that can go wrong while handling trust material.
///
/// Variants carry the path involved (when there is one) and the step that
/// failed, so a message such as
/// `write certificate /var/lib/rancher/rke2/server/tls/server-ca.crt: Permission denied`
/// tells the operator exactly what to look at.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A filesystem operation failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be generated, parsed or checked.
    #[error("{step} {}: {message}", path.display())]
    Cert {
        step: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A join token is malformed.
    #[error("invalid token: {0}")]
    Token(String),
    /// A value given by the user is invalid (e.g. a file mode).
    #[error("invalid value: {0}")]
    Invalid(String),
    /// A TLS configuration could not be built.
    #[error("{step}: {message}")]
    Tls { step: &'static str, message: String },
}

impl TrustError {
    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrustError::Io {
            step,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn cert(
        step: &'static str,
        path: impl Into<PathBuf>,
        message: impl std::fmt::Display,
    ) -> Self {
        TrustError::Cert {
            step,
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn tls(step: &'static str, message: impl std::fmt::Display) -> Self {
        TrustError::Tls {
            step,
            message: message.to_string(),
        }
    }
}
