//! Password hashes: the PHC strings `portico hash-password` prints and
//! `[[user]] password` holds.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("the password is empty; type it on standard input, e.g. `echo -n secret | portico hash-password`")]
    Empty,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Hashes `password` with argon2id and the given random `salt`.
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    let salt = SaltString::encode_b64(salt).map_err(|e| HashError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Checks `password` against a PHC string. A malformed hash never matches.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = hash_password("s3cret", &[7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password(&h, b"s3cret"));
        assert!(!verify_password(&h, b"s3creT"));
        assert!(!verify_password("$argon2id$garbage", b"s3cret"));
        assert_eq!(hash_password("", &[0; 16]), Err(HashError::Empty));
    }
}

/// The configured users, with a cache of passwords already verified so that
/// a client that reconnects does not pay argon2 again. The cache holds at
/// most one password per configured user (the last one that verified).
#[derive(Debug, Default)]
pub struct Users {
    users: std::collections::HashMap<String, crate::config::Password>,
    verified: std::collections::HashMap<String, Vec<u8>>,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; the bytes are compared without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Users {
    pub fn new(list: &[crate::config::User]) -> Self {
        Users {
            users: list
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            verified: Default::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` and `password` are a configured user's. A name that
    /// is not valid UTF-8 or holds a NUL never matches.
    pub fn check(&mut self, name: &[u8], password: &[u8]) -> bool {
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        if name.contains('\0') {
            return false;
        }
        let Some(p) = self.users.get(name) else {
            return false;
        };
        if self.verified.get(name).is_some_and(|v| same(v, password)) {
            return true;
        }
        let ok = match p {
            crate::config::Password::Plain(s) => same(s.as_bytes(), password),
            crate::config::Password::Phc(h) => verify_password(h, password),
        };
        if ok {
            self.verified.insert(name.to_string(), password.to_vec());
        }
        ok
    }
}

#[cfg(test)]
mod user_tests {
    use super::*;
    use crate::config::{Password, User};

    #[test]
    fn users_check_and_cache() {
        let h = hash_password("pw", &[1; 16]).unwrap();
        let mut u = Users::new(&[
            User {
                name: "alice".into(),
                password: Password::Plain("secret".into()),
            },
            User {
                name: "bob".into(),
                password: Password::Phc(h),
            },
        ]);
        assert!(u.check(b"alice", b"secret"));
        assert!(!u.check(b"alice", b"secreT"));
        assert!(!u.check(b"alice\0", b"secret"));
        assert!(!u.check(b"carol", b"secret"));
        assert!(u.check(b"bob", b"pw"));
        assert!(u.check(b"bob", b"pw"));
        assert!(!u.check(b"bob", b"pw2"));
        assert!(u.check(b"bob", b"pw"));
    }
}
