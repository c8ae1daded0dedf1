//! Users: registration rules and roles.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::rules::{NO_CONTROL, PRINTABLE_TEXT, TextRule, control_class};

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

/// An e-mail address: one `@` with something on both sides, a domain of
/// dot-separated labels (at least two), no white space or control
/// characters anywhere (so no surrounding spaces either).
pub static EMAIL: TextRule = TextRule::new(
    5,
    MAX_EMAIL_CHARS,
    Some(concat!(
        "^[^@\\s",
        control_class!(),
        "]+@[^@.\\s",
        control_class!(),
        "]+(\\.[^@.\\s",
        control_class!(),
        "]+)+$"
    )),
    "characters of an e-mail address like name@example.com",
);

/// The password's length; [`check_password`] also refuses common passwords,
/// which no schema can say.
pub static PASSWORD: TextRule =
    TextRule::new(MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS, None, "characters");

/// A display name: stored trimmed, limited as sent.
pub static NAME: TextRule = TextRule::new(
    1,
    MAX_NAME_CHARS,
    Some(PRINTABLE_TEXT),
    "characters without control characters, not all blank",
);

/// The e-mail typed at login: only bounded (a malformed one simply matches
/// no account, answered like a wrong password).
pub static LOGIN_EMAIL: TextRule = TextRule::new(0, MAX_EMAIL_CHARS, None, "characters");

/// The password typed at login: only bounded, like [`LOGIN_EMAIL`].
pub static LOGIN_PASSWORD: TextRule = TextRule::new(0, MAX_PASSWORD_CHARS, None, "characters");

/// The device name given at login; an empty or blank one is stored as "unknown".
pub static DEVICE: TextRule = TextRule::new(
    0,
    MAX_NAME_CHARS,
    Some(NO_CONTROL),
    "characters without control characters",
);

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

/// Checks an e-mail address against [`EMAIL`] and lower-cases it.
pub fn normalize_email(raw: &str) -> Result<String, ValidationError> {
    Ok(EMAIL.check("email", raw)?.to_lowercase())
}

/// The password policy: [`PASSWORD`]'s length bounds and not one of the
/// most common passwords.
pub fn check_password(password: &str) -> Result<(), ValidationError> {
    PASSWORD.check("password", password)?;
    if is_common_password(password) {
        return Err(ValidationError::new(
            "password",
            "is one of the most common passwords; choose another",
        ));
    }
    Ok(())
}

/// Checks a display name against [`NAME`] and trims it.
pub fn normalize_name(raw: &str) -> Result<String, ValidationError> {
    Ok(NAME.check("name", raw)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("Ann@Example.COM").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            " ann@example.com",
            "ann@example..com",
            "ann@@example.com",
            "a\u{1}@example.com",
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
        assert!(
            normalize_name(&format!(" {}", "x".repeat(100))).is_err(),
            "the limit applies to what was sent"
        );
        assert!(normalize_name("a\u{0}b").is_err());
    }
}
