//! The domain's single error type.

/// Input that breaks a domain rule. `field` is a JSON-pointer-like path
/// (`items[2].quantity`) so a client can show the message next to the right input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
