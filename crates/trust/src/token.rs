//! Join tokens: `K10<sha256-hex of the server CA PEM>::<user>:<password>`.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::TrustError;

/// Prefix of a full (secure) token.
pub const TOKEN_PREFIX: &str = "K10";
/// Supervisor user allowed to bootstrap servers.
pub const SERVER_USER: &str = "server";
/// Supervisor user allowed only to register agents.
pub const NODE_USER: &str = "node";

/// A parsed join token.
///
/// `ca_hash` and `user` are `None` for a bare password token (no `K10`
/// prefix); such a token does not authenticate the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Lowercase hex SHA-256 of the server CA PEM bytes (64 chars).
    pub ca_hash: Option<String>,
    /// Supervisor user (`server` or `node`).
    pub user: Option<String>,
    /// The password.
    pub password: String,
}

// Never print the password in debug output.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("ca_hash", &self.ca_hash)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Token {
    /// Parse a token given by a user or read from a token file.
    ///
    /// Accepts `K10<64 hex>::<user>:<password>` and a bare password (any
    /// string not starting with `K10`). Surrounding whitespace (a trailing
    /// newline from a file) is ignored.
    pub fn parse(s: &str) -> Result<Token, TrustError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TrustError::Token("token must not be empty".into()));
        }
        let Some(rest) = s.strip_prefix(TOKEN_PREFIX) else {
            return Ok(Token {
                ca_hash: None,
                user: None,
                password: s.to_string(),
            });
        };
        let Some((hash, creds)) = rest.split_once("::") else {
            return Err(TrustError::Token(
                "a token starting with K10 must have the form K10<ca-hash>::<user>:<password> (missing '::')"
                    .into(),
            ));
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TrustError::Token(format!(
                "CA hash must be 64 hex characters (sha256), got {} characters",
                hash.len()
            )));
        }
        let Some((user, password)) = creds.split_once(':') else {
            return Err(TrustError::Token(
                "missing ':' between user and password after '::'".into(),
            ));
        };
        if user.is_empty() {
            return Err(TrustError::Token("user must not be empty".into()));
        }
        if password.is_empty() {
            return Err(TrustError::Token("password must not be empty".into()));
        }
        Ok(Token {
            ca_hash: Some(hash.to_ascii_lowercase()),
            user: Some(user.to_string()),
            password: password.to_string(),
        })
    }

    /// Full server token `K10<hash>::server:<password>` (the hash as
    /// [`crate::bundle_hash`] computes it for the CA file).
    pub fn server(ca_pem: &[u8], password: &str) -> Token {
        Token {
            ca_hash: Some(crate::bundle_hash(ca_pem)),
            user: Some(SERVER_USER.to_string()),
            password: password.to_string(),
        }
    }

    /// Agent-only token `K10<hash>::node:<password>`.
    pub fn agent(ca_pem: &[u8], password: &str) -> Token {
        Token {
            ca_hash: Some(crate::bundle_hash(ca_pem)),
            user: Some(NODE_USER.to_string()),
            password: password.to_string(),
        }
    }

    /// True when the token pins the server CA (full `K10` form).
    pub fn is_secure(&self) -> bool {
        self.ca_hash.is_some()
    }

    /// Check CA bytes fetched from `/cacerts` against the pinned hash
    /// (see [`crate::ca_hash_matches`]: the bytes, or after a CA rotation
    /// the new root or a CA the bundle chains to). Returns `true` for a
    /// bare token (nothing to check against).
    pub fn ca_matches(&self, ca_pem: &[u8]) -> bool {
        match &self.ca_hash {
            None => true,
            Some(h) => crate::ca_hash_matches(ca_pem, h),
        }
    }
}

/// `K10<hash>::<user>:<password>` when the token has a CA hash (user
/// defaults to `server`), else the bare password.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_hash {
            Some(h) => write!(
                f,
                "{TOKEN_PREFIX}{h}::{}:{}",
                self.user.as_deref().unwrap_or(SERVER_USER),
                self.password
            ),
            None => f.write_str(&self.password),
        }
    }
}

impl std::str::FromStr for Token {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::parse(s)
    }
}

/// Lowercase hex SHA-256 of exactly these bytes (same as `sha256sum`).
pub fn ca_hash(pem: &[u8]) -> String {
    hex::encode(Sha256::digest(pem))
}

/// A fresh random password: 32 lowercase hex characters (128 bits).
pub fn generate_password() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Compare two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn full_token_round_trip() {
        let s = format!("K10{H}::server:abc:def");
        let t = Token::parse(&s).unwrap();
        assert_eq!(t.ca_hash.as_deref(), Some(H));
        assert_eq!(t.user.as_deref(), Some("server"));
        assert_eq!(t.password, "abc:def");
        assert_eq!(t.to_string(), s);
        assert!(t.is_secure());
        assert_eq!(Token::parse(&format!("{s}\n")).unwrap(), t);
    }

    #[test]
    fn bare_password() {
        let t = Token::parse("mysecret").unwrap();
        assert_eq!(t.ca_hash, None);
        assert_eq!(t.user, None);
        assert_eq!(t.password, "mysecret");
        assert_eq!(t.to_string(), "mysecret");
        assert!(!t.is_secure());
        assert!(t.ca_matches(b"anything"));
    }

    #[test]
    fn malformed() {
        assert!(Token::parse("").is_err());
        assert!(
            Token::parse(&format!("K10{H}server:pw")).is_err(),
            "missing ::"
        );
        assert!(Token::parse("K10abcd::server:pw").is_err(), "short hash");
        assert!(
            Token::parse(&format!("K10{H}0::server:pw")).is_err(),
            "long hash"
        );
        let bad_hex = "z".repeat(64);
        assert!(Token::parse(&format!("K10{bad_hex}::server:pw")).is_err());
        assert!(
            Token::parse(&format!("K10{H}::serverpw")).is_err(),
            "no user sep"
        );
        assert!(
            Token::parse(&format!("K10{H}::server:")).is_err(),
            "empty pw"
        );
        assert!(Token::parse(&format!("K10{H}:::pw")).is_err(), "empty user");
    }

    #[test]
    fn ca_hash_is_sha256sum() {
        // sha256sum of the empty input and of "abc\n".
        assert_eq!(ca_hash(b""), H);
        assert_eq!(
            ca_hash(b"abc\n"),
            "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"
        );
    }

    #[test]
    fn helpers() {
        let pw = generate_password();
        assert_eq!(pw.len(), 32);
        assert!(pw.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(pw, generate_password());
        let ca = b"-----BEGIN CERTIFICATE-----\n...";
        let s = Token::server(ca, &pw);
        assert_eq!(s.to_string(), format!("K10{}::server:{pw}", ca_hash(ca)));
        assert!(s.ca_matches(ca));
        assert!(!s.ca_matches(b"other"));
        let a = Token::agent(ca, "p");
        assert_eq!(a.to_string(), format!("K10{}::node:p", ca_hash(ca)));
        assert_eq!(Token::parse(&a.to_string()).unwrap(), a);
    }
}
