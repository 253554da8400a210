//! The node's container runtime: Debian's `containerd` run as a child of
//! the node role ([`containerd`]), reached through CRI v1 ([`cri`]), fed
//! with air-gap image tarballs ([`images`]), and cleaned up after
//! ([`cleanup`]).

pub mod addon_image;
pub mod cleanup;
pub mod containerd;
pub mod cri;
pub mod images;

use std::path::{Path, PathBuf};

/// Errors of the runtime layer; each names the file, command or CRI call
/// that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The runtime cannot be set up as configured.
    #[error("{0}")]
    Config(String),
    /// A CRI call failed; `message` is the runtime's own text.
    #[error("CRI {call}: {message}")]
    Cri {
        /// The CRI method.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// An external command (ctr, a decompressor) failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line, shortened.
        command: String,
        /// Its stderr or exit status.
        message: String,
    },
}

impl RuntimeError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Wraps a gRPC status of `call`.
    pub fn cri(call: &'static str, s: tonic::Status) -> RuntimeError {
        RuntimeError::Cri {
            call,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// True when the CRI said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Cri { code, message, .. }
            if *code == tonic::Code::NotFound || message.contains("not found"))
    }

    /// The runtime's own message (for Pod statuses and events).
    pub fn message(&self) -> String {
        match self {
            RuntimeError::Cri { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}
