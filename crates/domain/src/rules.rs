//! Input rules, each written once: the validation below runs them, and the
//! HTTP layer builds the OpenAPI schema of every request field from the very
//! same value (`orderflow-api`'s `contract` module), so the document cannot
//! promise less or more than the server checks.
//!
//! A rule applies to the value exactly as the client sent it (lengths are
//! counted before any trimming), because that is what a JSON Schema
//! validator sees. Normalization (lower-casing an e-mail, trimming a name)
//! happens only after a value passed its rule.
//!
//! Patterns are written in the subset that ECMA-262 (JSON Schema's dialect),
//! Rust's `regex` and Python's `re` (what schemathesis and most validators
//! run) read the same way: character classes, `\s`, `\xHH`, anchors,
//! repetition. No `\p{…}`, look-around or back-references.

use std::sync::OnceLock;

use regex::Regex;

use crate::ValidationError;

/// A rule on a text value: length in characters (Unicode scalar values, as
/// JSON Schema's `minLength`/`maxLength` count them) and an optional pattern.
#[derive(Debug)]
pub struct TextRule {
    pub min_chars: usize,
    pub max_chars: usize,
    /// An anchored regular expression the whole value must match.
    pub pattern: Option<&'static str>,
    /// What the pattern allows, in words: the end of the error message
    /// ("must be 1 to 100 {hint}") and of the schema's description.
    pub hint: &'static str,
    compiled: OnceLock<Regex>,
}

impl TextRule {
    pub const fn new(
        min_chars: usize,
        max_chars: usize,
        pattern: Option<&'static str>,
        hint: &'static str,
    ) -> Self {
        Self {
            min_chars,
            max_chars,
            pattern,
            hint,
            compiled: OnceLock::new(),
        }
    }

    /// True when `value` satisfies the rule.
    pub fn admits(&self, value: &str) -> bool {
        let chars = value.chars().count();
        (self.min_chars..=self.max_chars).contains(&chars)
            && self.pattern.is_none_or(|pattern| {
                self.compiled
                    .get_or_init(|| Regex::new(pattern).expect("rule patterns are valid"))
                    .is_match(value)
            })
    }

    /// What a valid value looks like, e.g. "1 to 100 printable characters".
    pub fn describe(&self) -> String {
        if self.min_chars == self.max_chars {
            format!("exactly {} {}", self.min_chars, self.hint)
        } else {
            format!("{} to {} {}", self.min_chars, self.max_chars, self.hint)
        }
    }

    /// The value, or a [`ValidationError`] naming `field`.
    pub fn check<'a>(&self, field: &str, value: &'a str) -> Result<&'a str, ValidationError> {
        if self.admits(value) {
            Ok(value)
        } else {
            Err(ValidationError::new(
                field,
                format!("must be {}", self.describe()),
            ))
        }
    }
}

/// A rule on a whole number: an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRule {
    pub min: i64,
    pub max: i64,
}

impl IntRule {
    pub fn check(&self, field: &str, value: i64) -> Result<i64, ValidationError> {
        within(field, value, self.min..=self.max, || {
            format!("must be between {} and {}", self.min, self.max)
        })
    }
}

/// A rule on the number of items of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRule {
    pub min_items: usize,
    pub max_items: usize,
}

impl CountRule {
    pub fn check(&self, field: &str, count: usize) -> Result<usize, ValidationError> {
        within(field, count, self.min_items..=self.max_items, || {
            format!(
                "must contain {} to {} entries",
                self.min_items, self.max_items
            )
        })
    }
}

/// `value` when `range` holds it, else a [`ValidationError`] naming `field`.
fn within<T: PartialOrd>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    message: impl FnOnce() -> String,
) -> Result<T, ValidationError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::new(field, message()))
    }
}

/// Control characters (Unicode category Cc, what `char::is_control` finds),
/// as a character-class body; a macro so the patterns below can `concat!` it.
macro_rules! control_class {
    () => {
        r"\x00-\x1F\x7F-\x9F"
    };
}
pub(crate) use control_class;

/// [`control_class!`] as a constant, for code outside this module.
pub const CONTROL: &str = control_class!();

/// Free text a person reads (names): no control characters and at least one
/// character that is not white space.
pub const PRINTABLE_TEXT: &str = concat!(
    "^[^",
    control_class!(),
    "]*[^\\s",
    control_class!(),
    "][^",
    control_class!(),
    "]*$"
);

/// Text with no control characters (may be empty or blank).
pub const NO_CONTROL: &str = concat!("^[^", control_class!(), "]*$");

#[cfg(test)]
mod tests {
    use super::*;

    static NAME: TextRule = TextRule::new(1, 5, Some(PRINTABLE_TEXT), "printable characters");

    #[test]
    fn text_rules_count_characters_and_match_the_whole_value() {
        assert!(NAME.admits("Ann"));
        assert!(NAME.admits(" Ann "), "inner and outer spaces are allowed");
        assert!(NAME.admits("Zoë🙂"), "characters, not bytes");
        assert!(!NAME.admits(""));
        assert!(!NAME.admits("   "), "blank");
        assert!(!NAME.admits("a\u{0}b"), "control character");
        assert!(!NAME.admits("a\u{85}b"), "C1 control character");
        assert!(!NAME.admits("abcdef"), "too long");
        assert_eq!(
            NAME.check("name", "").unwrap_err().message,
            "must be 1 to 5 printable characters"
        );
    }

    #[test]
    fn the_control_class_is_what_rust_calls_control() {
        let class = Regex::new(&format!("^[{CONTROL}]$")).unwrap();
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(
                class.is_match(c.encode_utf8(&mut [0; 4])),
                c.is_control(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn int_and_count_rules_are_inclusive() {
        let rule = IntRule { min: 1, max: 100 };
        assert!(rule.check("q", 1).is_ok() && rule.check("q", 100).is_ok());
        assert!(rule.check("q", 0).is_err() && rule.check("q", 101).is_err());
        let lines = CountRule {
            min_items: 1,
            max_items: 2,
        };
        assert!(lines.check("items", 0).is_err());
        assert!(lines.check("items", 2).is_ok());
        assert!(lines.check("items", 3).is_err());
    }
}
