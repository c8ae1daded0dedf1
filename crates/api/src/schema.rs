//! The request side of the contract: OpenAPI schemas built from the domain's
//! rules (the same [`TextRule`], [`IntRule`] and [`CountRule`] values the
//! validation runs, so a limit changed there changes here), and decoding
//! that accepts everything those schemas call valid.
//!
//! Each `fn` below is named by a `#[schema(schema_with = …)]` attribute on a
//! request field; a description that only restates the rule is generated
//! from it, so the words cannot drift from the check either.

use orderflow_core::services::auth::REFRESH_TOKEN;
use orderflow_core::services::orders::IDEMPOTENCY_KEY;
use orderflow_domain::rules::{CountRule, IntRule, TextRule};
use orderflow_domain::{money, order, product, user};
use serde::Deserializer;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};

/// A string schema for `rule`, described as `what` plus the rule in words.
pub fn text(rule: &TextRule, what: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(rule.min_chars))
        .max_length(Some(rule.max_chars))
        .pattern(rule.pattern)
        .description(Some(format!("{what}: {}.", rule.describe())))
}

/// An integer schema for `rule`. Numbers with a zero fraction (`5.0`) are
/// integers to JSON Schema, and [`whole_number`] accepts them too.
pub fn integer(rule: IntRule, what: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(rule.min))
        .maximum(Some(rule.max))
        .description(Some(format!(
            "{what}: a whole number from {} to {} (a zero fraction such as 5.0 is accepted).",
            rule.min, rule.max
        )))
}

/// An array of `item` (a component name) bounded by `rule`.
pub fn list(item: &str, rule: CountRule, what: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .items(RefOr::<Schema>::Ref(Ref::from_schema_name(item)))
        .min_items(Some(rule.min_items))
        .max_items(Some(rule.max_items))
        .description(Some(format!(
            "{what}: {} to {} entries.",
            rule.min_items, rule.max_items
        )))
}

/// `schema` that may also be `null` (an optional field sent as null).
fn nullable(schema: ObjectBuilder) -> ObjectBuilder {
    schema.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

pub fn email() -> ObjectBuilder {
    text(&user::EMAIL, "E-mail address, stored lower-cased")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
}

pub fn password() -> ObjectBuilder {
    text(
        &user::PASSWORD,
        "Password (one of ~600 common passwords is refused too: 422 validation, field `password`)",
    )
}

pub fn user_name() -> ObjectBuilder {
    text(&user::NAME, "Display name, stored trimmed")
}

pub fn login_email() -> ObjectBuilder {
    text(&user::LOGIN_EMAIL, "The account's e-mail, any case")
}

pub fn login_password() -> ObjectBuilder {
    text(&user::LOGIN_PASSWORD, "The account's password")
}

pub fn device() -> ObjectBuilder {
    nullable(text(
        &user::DEVICE,
        "A name for this device's session, e.g. \"phone\"",
    ))
}

pub fn refresh_token() -> ObjectBuilder {
    text(&REFRESH_TOKEN, "The refresh token of the last pair")
}

pub fn sku() -> ObjectBuilder {
    text(&product::SKU, "Stock-keeping unit, unique")
}

pub fn product_name() -> ObjectBuilder {
    text(&product::PRODUCT_NAME, "Product name, stored trimmed")
}

pub fn currency() -> ObjectBuilder {
    text(&money::CURRENCY, "Currency")
}

pub fn price_cents() -> ObjectBuilder {
    integer(product::PRICE_CENTS, "Price in minor units (cents)")
}

pub fn description() -> ObjectBuilder {
    text(
        &product::DESCRIPTION,
        "What the shop says about the product, stored trimmed; default empty",
    )
}

pub fn category() -> ObjectBuilder {
    nullable(text(
        &product::CATEGORY,
        "The category's name, e.g. \"Kitchen\", stored trimmed; absent or null files the product nowhere",
    ))
}

pub fn stock() -> ObjectBuilder {
    integer(product::STOCK, "Units that can be reserved")
}

pub fn quantity() -> ObjectBuilder {
    integer(
        order::QUANTITY,
        "Units of the product (lines of the same product are merged, and their sum must stay within the same bounds)",
    )
}

pub fn cart_quantity() -> ObjectBuilder {
    integer(
        IntRule {
            min: 0,
            max: order::QUANTITY.max,
        },
        "Units of the product in the cart; 0 removes it",
    )
}

pub fn cart_lines() -> ArrayBuilder {
    list(
        "OrderLineInput",
        CountRule {
            min_items: 0,
            max_items: order::LINES.max_items,
        },
        "Every line of the cart; none empties it",
    )
}

pub fn order_lines() -> ArrayBuilder {
    list("OrderLineInput", order::LINES, "Order lines")
}

pub fn idempotency_key() -> ObjectBuilder {
    text(
        &IDEMPOTENCY_KEY,
        "Makes a retry safe (the same key and body get the first answer again; the same key with another body gets 422 idempotency-key-reused)",
    )
}

/// Decodes a JSON integer, or a number with a zero fraction (`4736682.0`,
/// `1e2`), into an `i64`: JSON Schema's `integer` is a mathematical
/// property, not a token shape, so a client's serializer may send either.
/// A fraction, or a value beyond `i64`, is refused (422 `malformed-body`).
pub fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Whole;

    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // -2^63 is exact in f64; 2^63 is the first value past i64::MAX.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                Ok(v as i64)
            } else {
                Err(E::custom(format!("expected a whole number, found {v}")))
            }
        }
    }

    deserializer.deserialize_any(Whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(deserialize_with = "whole_number")]
        n: i64,
    }

    fn decode(json: &str) -> Result<i64, String> {
        serde_json::from_str::<Line>(json)
            .map(|l| l.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_with_a_zero_fraction_are_whole_numbers() {
        assert_eq!(decode(r#"{"n": 5}"#), Ok(5));
        assert_eq!(decode(r#"{"n": -13332}"#), Ok(-13332));
        assert_eq!(decode(r#"{"n": 4736682.0}"#), Ok(4_736_682));
        assert_eq!(decode(r#"{"n": 1e2}"#), Ok(100));
        assert_eq!(decode(r#"{"n": -0.0}"#), Ok(0));
        assert!(decode(r#"{"n": 1.5}"#).is_err());
        assert!(decode(r#"{"n": 1e19}"#).is_err());
        assert!(decode(r#"{"n": 18446744073709551615}"#).is_err());
        assert!(decode(r#"{"n": "5"}"#).is_err());
    }

    #[test]
    fn schemas_carry_the_rules_bounds() {
        let json = serde_json::to_value(Schema::Object(quantity().build())).unwrap();
        assert_eq!(json["minimum"], 1);
        assert_eq!(json["maximum"], order::MAX_QUANTITY);
        let json = serde_json::to_value(Schema::Object(email().build())).unwrap();
        assert_eq!(json["format"], "email");
        assert_eq!(json["maxLength"], user::MAX_EMAIL_CHARS);
        assert_eq!(json["pattern"], user::EMAIL.pattern.unwrap());
    }
}
