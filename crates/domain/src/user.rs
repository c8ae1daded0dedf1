//! Users: registration rules and roles.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// What a user may do. Catalog writes, the DLQ and key rotation need `Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Shopper,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Shopper => "shopper",
            Role::Admin => "admin",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "shopper" => Some(Role::Shopper),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_CHARS: usize = 256;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_EMAIL_CHARS: usize = 254;

/// A few hundred passwords (10+ characters, so they pass the length rule)
/// from the top of public breach corpora, bundled with the binary: checked
/// in memory, never sent anywhere.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

/// True when `password` (any case) is on the bundled list.
pub fn is_common_password(password: &str) -> bool {
    let lowered = password.to_lowercase();
    COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .any(|common| common == lowered)
}

/// Normalizes and checks an e-mail address: trimmed, lower-cased, one `@`
/// with something on both sides and a dot in the domain.
pub fn normalize_email(raw: &str) -> Result<String, ValidationError> {
    let email = raw.trim().to_lowercase();
    let bad = || ValidationError::new("email", "must be an e-mail address like name@example.com");
    if email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@');
    if local.is_empty() || !domain_ok || email.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(email)
}

/// The password policy: length bounds and not one of the most common passwords.
pub fn check_password(password: &str) -> Result<(), ValidationError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ValidationError::new(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(ValidationError::new(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    if is_common_password(password) {
        return Err(ValidationError::new(
            "password",
            "is one of the most common passwords; choose another",
        ));
    }
    Ok(())
}

/// Display names: trimmed, 1..=100 characters, no control characters.
pub fn normalize_name(raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@.com",
        ] {
            let err = normalize_email(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?} must be refused");
        }
    }

    #[test]
    fn weak_passwords_are_refused_naming_the_field() {
        assert_eq!(check_password("short").unwrap_err().field, "password");
        assert_eq!(check_password("Password123").unwrap_err().field, "password");
        assert!(check_password("correct horse battery staple").is_ok());
    }

    #[test]
    fn the_bundled_list_is_a_few_hundred_long_enough_passwords() {
        let entries: Vec<&str> = COMMON_PASSWORDS
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        assert!(entries.len() >= 300, "{} entries", entries.len());
        for entry in &entries {
            assert!(entry.chars().count() >= MIN_PASSWORD_CHARS, "{entry:?}");
            assert_eq!(*entry, entry.to_lowercase(), "{entry:?} is lower case");
        }
        for common in [
            "Qwertyuiop123",
            "liverpool2024",
            "SUNSHINE123!",
            "iloveyou2025",
        ] {
            assert!(is_common_password(common), "{common}");
            assert_eq!(check_password(common).unwrap_err().field, "password");
        }
        assert!(!is_common_password("a long enough password"));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(normalize_name("  Ann ").unwrap(), "Ann");
        assert!(normalize_name("   ").is_err());
        assert!(normalize_name(&"x".repeat(101)).is_err());
        assert!(normalize_name("a\u{0}b").is_err());
    }
}
