//! Limits on hostile JSON that the body-size limit alone does not stop.
//!
//! A 64 KiB body can still nest ten thousand arrays (deep recursion in every
//! parser and serializer it reaches) or carry one 60 000-character "name"
//! that ends up in the database, in e-mails and in logs. [`check_json`]
//! scans the raw bytes once, before anything is deserialized, and names the
//! limit that was crossed. It does not validate JSON: the parser that runs
//! next does, with its own precise error.

/// Which limit a body crossed, for the 422 problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLimit {
    TooDeep { max: usize },
    StringTooLong { max: usize },
}

impl std::fmt::Display for JsonLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonLimit::TooDeep { max } => {
                write!(
                    f,
                    "the JSON body nests arrays or objects deeper than {max} levels"
                )
            }
            JsonLimit::StringTooLong { max } => {
                write!(
                    f,
                    "a string in the JSON body is longer than {max} characters"
                )
            }
        }
    }
}

/// Checks nesting depth and string lengths (in characters, escapes counted as
/// the character they stand for, approximately) of a JSON text.
pub fn check_json(
    bytes: &[u8],
    max_depth: usize,
    max_string_chars: usize,
) -> Result<(), JsonLimit> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = 0usize;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
                continue;
            }
            match byte {
                b'\\' => {
                    escaped = true;
                    chars += 1;
                }
                b'"' => in_string = false,
                // Continuation bytes of a UTF-8 sequence are not new characters.
                b if b & 0xC0 == 0x80 => {}
                _ => chars += 1,
            }
            if chars > max_string_chars {
                return Err(JsonLimit::StringTooLong {
                    max: max_string_chars,
                });
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                chars = 0;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(JsonLimit::TooDeep { max: max_depth });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_bodies_pass() {
        let body =
            br#"{"items":[{"product_id":"x","quantity":1}],"name":"\"quoted\" [not nested]"}"#;
        assert_eq!(check_json(body, 3, 100), Ok(()));
    }

    #[test]
    fn depth_counts_only_structure_outside_strings() {
        assert_eq!(check_json(b"[[[1]]]", 3, 10), Ok(()));
        assert_eq!(
            check_json(b"[[[[1]]]]", 3, 10),
            Err(JsonLimit::TooDeep { max: 3 })
        );
        assert_eq!(check_json(br#"["[[[[[[["]"#, 1, 10), Ok(()));
    }

    #[test]
    fn string_length_is_in_characters() {
        // Ten two-byte characters are ten characters, not twenty bytes.
        let body = format!(r#"{{"name":"{}"}}"#, "ü".repeat(10));
        assert_eq!(check_json(body.as_bytes(), 5, 10), Ok(()));
        let body = format!(r#"{{"name":"{}"}}"#, "ü".repeat(11));
        assert_eq!(
            check_json(body.as_bytes(), 5, 10),
            Err(JsonLimit::StringTooLong { max: 10 })
        );
        // An escaped quote does not end the string.
        assert_eq!(
            check_json(br#"{"a":"\"\"\"\"\""}"#, 5, 4),
            Err(JsonLimit::StringTooLong { max: 4 })
        );
    }
}
