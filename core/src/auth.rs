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
