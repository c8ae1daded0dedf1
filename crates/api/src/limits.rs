//! Rate-limit policies per route group, from a compact spec.
//!
//! `ORDERFLOW_RATE_LIMITS` holds `;`-separated entries
//! `GROUP=SCOPE:ALGORITHM:NUMBERS`:
//!
//! ```text
//! login=ip:fixed:10/1m; catalog=ip:bucket:100/s,burst=200; orders=user:leaky:5/s,queue=10
//! ```
//!
//! - `GROUP`: `login` (POST /auth/login), `auth` (the other /auth routes),
//!   `catalog` (/products, /leaderboard), `orders`, `me`, `admin`.
//! - `SCOPE`: `ip` (the client address) or `user` (the caller's user id when
//!   the request carries a valid token; its address otherwise, so anonymous
//!   floods are still counted).
//! - `ALGORITHM:NUMBERS`:
//!   - `fixed:LIMIT/WINDOW`: at most LIMIT per window (`WINDOW` like `60s`,
//!     `1m`, `500ms`, `1h`);
//!   - `bucket:RATE,burst=N`: token bucket refilled at RATE (`5/s`, `100/m`),
//!     bursts up to N (default: one second's worth, at least 1);
//!   - `leaky:RATE,queue=N`: leaky bucket leaking at RATE; up to N requests
//!     over the rate wait their turn (default 0: none wait).
//! - `GROUP=off` switches a group's policy off; the whole value `off` (or an
//!   empty one) switches every group policy off.
//!
//! The per-IP limits of `ORDERFLOW_AUTH_RATE_PER_SEC` and
//! `ORDERFLOW_RATE_PER_SEC` apply in addition; a request passes only when
//! every policy that applies to it lets it.

use std::time::Duration;

use axum::http::HeaderValue;
use orderflow_core::ports::rate_limit::{Algorithm, RatePolicy};
use smallvec::SmallVec;

/// The default group policies: strict on login, generous on the catalog,
/// smoothing per user on orders.
pub const DEFAULT_SPEC: &str =
    "login=ip:fixed:20/1m;catalog=ip:bucket:100/s,burst=200;orders=user:leaky:10/s,queue=20";

/// The route groups a policy can be given to.
pub const GROUPS: &[&str] = &["login", "auth", "catalog", "orders", "me", "admin"];

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    User,
}

/// One group's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub group: &'static str,
    pub scope: Scope,
    /// Named after the group, so headers and metrics say which limit it is.
    pub policy: RatePolicy,
}

/// Every rate limit of the process: the per-IP ones and the groups', with
/// what applies to each group worked out once ([`GroupPlan`]), not per
/// request. A request must pass every policy that applies to it.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// One plan per entry of [`GROUPS`], then one for requests of no group.
    plans: Vec<GroupPlan>,
}

/// What the rate limits ask of the requests of one route group.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    /// The checks, in the order the `RateLimit` headers list them: the
    /// per-IP policy (auth or general), then the group's own.
    pub checks: Vec<PlannedCheck>,
    /// The `RateLimit-Policy` value of these checks, the same on every
    /// answer of the group (`None` when no policy applies).
    pub policy_header: Option<HeaderValue>,
}

/// One policy a request is checked against, and whose budget it spends.
#[derive(Debug, Clone)]
pub struct PlannedCheck {
    pub policy: RatePolicy,
    pub scope: Scope,
}

impl Default for RateLimits {
    /// No limits at all.
    fn default() -> Self {
        Self::new(None, None, Vec::new())
    }
}

impl RateLimits {
    /// `auth`: per client IP on the `login` and `auth` groups (the routes
    /// passwords are guessed on); `general`: per client IP on every other
    /// request; `routes`: per group ([`parse_spec`]). `None` switches a limit off.
    pub fn new(
        auth: Option<RatePolicy>,
        general: Option<RatePolicy>,
        routes: Vec<RoutePolicy>,
    ) -> Self {
        let plan = |group: Option<&str>| {
            let per_ip = match group {
                Some("login" | "auth") => auth.as_ref(),
                _ => general.as_ref(),
            };
            let checks: Vec<PlannedCheck> = per_ip
                .map(|policy| PlannedCheck {
                    policy: policy.clone(),
                    scope: Scope::Ip,
                })
                .into_iter()
                .chain(
                    routes
                        .iter()
                        .filter(|route| Some(route.group) == group)
                        .map(|route| PlannedCheck {
                            policy: route.policy.clone(),
                            scope: route.scope,
                        }),
                )
                .collect();
            let mut policies = ListValue::new();
            for check in &checks {
                let (limit, window) = check.policy.quota();
                push_list_item(
                    &mut policies,
                    &check.policy.name,
                    [("q", u64::from(limit)), ("w", window.as_secs().max(1))],
                );
            }
            let policy_header = (!checks.is_empty())
                .then(|| HeaderValue::from_bytes(&policies).ok())
                .flatten();
            GroupPlan {
                checks,
                policy_header,
            }
        };
        let plans = GROUPS
            .iter()
            .map(|group| plan(Some(group)))
            .chain([plan(None)])
            .collect();
        Self { plans }
    }

    /// What applies to a request of `group` ([`group_of`]).
    pub fn plan(&self, group: Option<&str>) -> &GroupPlan {
        let index = group
            .and_then(|group| GROUPS.iter().position(|g| *g == group))
            .unwrap_or(GROUPS.len());
        &self.plans[index]
    }
}

/// A `RateLimit-Policy` or `RateLimit` value being written: on the stack
/// for the one or two items a request has.
pub(crate) type ListValue = SmallVec<[u8; 128]>;

/// Appends one item of a `RateLimit-Policy` or `RateLimit` list,
/// `"name";q=10;w=60`, with `itoa`: `write!` went through `core::fmt` and
/// cost a rate-limited read about 3% of its CPU.
pub(crate) fn push_list_item(list: &mut ListValue, name: &str, parameters: [(&str, u64); 2]) {
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.push(b'"');
    list.extend_from_slice(name.as_bytes());
    list.push(b'"');
    let mut digits = itoa::Buffer::new();
    for (key, value) in parameters {
        list.push(b';');
        list.extend_from_slice(key.as_bytes());
        list.push(b'=');
        list.extend_from_slice(digits.format(value).as_bytes());
    }
}

/// The group of a request path, if it has one.
pub fn group_of(method: &axum::http::Method, path: &str) -> Option<&'static str> {
    // The browser front's forms: signing in is a login like the API's.
    if method == axum::http::Method::POST && (path == "/login" || path == "/register") {
        return Some("login");
    }
    let rest = path.strip_prefix("/api/v1/")?;
    let first = rest.split('/').next().unwrap_or_default();
    match first {
        "auth" if rest == "auth/login" && method == axum::http::Method::POST => Some("login"),
        "auth" => Some("auth"),
        "products" | "categories" | "leaderboard" => Some("catalog"),
        "orders" | "cart" => Some("orders"),
        "me" => Some("me"),
        "admin" => Some("admin"),
        _ => None,
    }
}

/// Parses a spec (see the module docs). Errors say which entry is wrong and why.
pub fn parse_spec(spec: &str) -> Result<Vec<RoutePolicy>, String> {
    let spec = spec.trim();
    if spec.is_empty() || spec.eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    let mut policies: Vec<RoutePolicy> = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |why: String| format!("rate-limit entry {entry:?}: {why}");
        let (group, rule) = entry
            .split_once('=')
            .ok_or_else(|| fail("expected GROUP=SCOPE:ALGORITHM:NUMBERS".into()))?;
        let group = GROUPS
            .iter()
            .copied()
            .find(|g| *g == group.trim())
            .ok_or_else(|| fail(format!("unknown group (one of {})", GROUPS.join(", "))))?;
        policies.retain(|p| p.group != group);
        if rule.trim().eq_ignore_ascii_case("off") {
            continue;
        }
        let mut parts = rule.trim().splitn(3, ':');
        let (Some(scope), Some(algorithm), Some(numbers)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("expected SCOPE:ALGORITHM:NUMBERS".into()));
        };
        let scope = match scope.trim() {
            "ip" => Scope::Ip,
            "user" => Scope::User,
            other => return Err(fail(format!("scope {other:?} is not ip or user"))),
        };
        let algorithm = parse_algorithm(algorithm.trim(), numbers.trim()).map_err(fail)?;
        policies.push(RoutePolicy {
            group,
            scope,
            policy: RatePolicy {
                name: group.to_owned(),
                algorithm,
            },
        });
    }
    Ok(policies)
}

fn parse_algorithm(name: &str, numbers: &str) -> Result<Algorithm, String> {
    let mut fields = numbers.split(',').map(str::trim);
    let main = fields.next().unwrap_or_default();
    let mut option = |key: &str| -> Result<Option<u32>, String> {
        match fields.next() {
            None => Ok(None),
            Some(field) => {
                let value = field
                    .strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .ok_or_else(|| format!("expected {key}=N after the rate, got {field:?}"))?;
                value
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{key} {value:?} is not a whole number"))
            }
        }
    };
    match name {
        "fixed" => {
            let (limit, window) = main
                .split_once('/')
                .ok_or_else(|| format!("expected LIMIT/WINDOW like 10/1m, got {main:?}"))?;
            let limit = limit
                .parse()
                .map_err(|_| format!("limit {limit:?} is not a whole number"))?;
            let window = parse_duration(window)?;
            Ok(Algorithm::FixedWindow { limit, window })
        }
        "bucket" => {
            let rate = parse_rate(main)?;
            let capacity = option("burst")?.unwrap_or_else(|| rate.ceil().max(1.0) as u32);
            if capacity == 0 {
                return Err("burst must be at least 1".into());
            }
            Ok(Algorithm::TokenBucket {
                capacity,
                refill_per_second: rate,
            })
        }
        "leaky" => {
            let rate = parse_rate(main)?;
            let queue = option("queue")?.unwrap_or(0);
            Ok(Algorithm::LeakyBucket {
                rate_per_second: rate,
                queue,
            })
        }
        other => Err(format!("algorithm {other:?} is not fixed, bucket or leaky")),
    }
}

/// `5/s`, `100/m`, `1000/h`, or `2/30s` → per second.
fn parse_rate(rate: &str) -> Result<f64, String> {
    let (count, per) = rate
        .split_once('/')
        .ok_or_else(|| format!("expected a rate like 5/s, got {rate:?}"))?;
    let count: f64 = count
        .parse()
        .map_err(|_| format!("rate {count:?} is not a number"))?;
    let per = match per {
        "s" | "m" | "h" => parse_duration(&format!("1{per}"))?,
        other => parse_duration(other)?,
    };
    let rate = count / per.as_secs_f64();
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err(format!("rate {count}/{per:?} must be above zero"))
    }
}

/// `500ms`, `30s`, `1m`, `2h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        other => return Err(format!("unit {other:?} is not ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spec_parses() {
        let policies = parse_spec(DEFAULT_SPEC).unwrap();
        assert_eq!(policies.len(), 3);
        assert_eq!(
            policies[0].policy.algorithm,
            Algorithm::FixedWindow {
                limit: 20,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(policies[2].scope, Scope::User);
    }

    #[test]
    fn every_algorithm_and_unit_parses() {
        let policies = parse_spec(
            " login = ip:fixed:5/30s ; me=user:bucket:120/m,burst=10; orders=user:leaky:2/s,queue=4;admin=ip:leaky:1/500ms",
        )
        .unwrap();
        assert_eq!(
            policies[1].policy.algorithm,
            Algorithm::TokenBucket {
                capacity: 10,
                refill_per_second: 2.0
            }
        );
        assert_eq!(
            policies[2].policy.algorithm,
            Algorithm::LeakyBucket {
                rate_per_second: 2.0,
                queue: 4
            }
        );
        assert_eq!(
            policies[3].policy.algorithm,
            Algorithm::LeakyBucket {
                rate_per_second: 2.0,
                queue: 0
            }
        );
    }

    #[test]
    fn off_switches_groups_off_and_later_entries_win() {
        assert!(parse_spec("off").unwrap().is_empty());
        assert!(parse_spec("").unwrap().is_empty());
        let policies = parse_spec("login=ip:fixed:1/1s;login=off;catalog=ip:bucket:1/s").unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].group, "catalog");
    }

    #[test]
    fn mistakes_are_named() {
        for (spec, hint) in [
            ("nope=ip:fixed:1/1s", "unknown group"),
            ("login=world:fixed:1/1s", "scope"),
            ("login=ip:sliding:1/1s", "algorithm"),
            ("login=ip:fixed:1/1", "unit"),
            ("login=ip:bucket:0/s", "above zero"),
            ("login=ip:leaky:1/s,burst=3", "queue="),
            ("login", "GROUP="),
        ] {
            let error = parse_spec(spec).unwrap_err();
            assert!(error.contains(hint), "{spec}: {error}");
        }
    }

    fn per_ip(name: &str, per_sec: f64) -> RatePolicy {
        RatePolicy {
            name: name.to_owned(),
            algorithm: Algorithm::TokenBucket {
                capacity: 10,
                refill_per_second: per_sec,
            },
        }
    }

    #[test]
    fn each_group_is_planned_with_its_per_ip_limit_first() {
        let limits = RateLimits::new(
            Some(per_ip("auth", 5.0)),
            Some(per_ip("general", 1.0)),
            parse_spec(DEFAULT_SPEC).unwrap(),
        );
        let names = |group: Option<&str>| -> Vec<String> {
            limits
                .plan(group)
                .checks
                .iter()
                .map(|check| check.policy.name.clone())
                .collect()
        };
        assert_eq!(names(Some("login")), ["auth", "login"]);
        assert_eq!(names(Some("auth")), ["auth"]);
        assert_eq!(names(Some("catalog")), ["general", "catalog"]);
        assert_eq!(names(Some("orders")), ["general", "orders"]);
        assert_eq!(names(Some("admin")), ["general"]);
        assert_eq!(names(None), ["general"]);
        assert_eq!(limits.plan(Some("orders")).checks[1].scope, Scope::User);
        assert_eq!(
            limits.plan(Some("catalog")).policy_header.as_ref().unwrap(),
            "\"general\";q=10;w=10, \"catalog\";q=200;w=2"
        );
    }

    #[test]
    fn a_group_without_limits_has_no_checks_and_no_header() {
        let limits = RateLimits::new(None, None, parse_spec("catalog=ip:fixed:5/1m").unwrap());
        assert!(limits.plan(Some("orders")).checks.is_empty());
        assert_eq!(limits.plan(Some("orders")).policy_header, None);
        assert_eq!(
            limits.plan(Some("catalog")).policy_header.as_ref().unwrap(),
            "\"catalog\";q=5;w=60"
        );
        let none = RateLimits::default();
        assert!(GROUPS.iter().all(|g| none.plan(Some(g)).checks.is_empty()));
        assert!(none.plan(None).checks.is_empty());
    }

    #[test]
    fn paths_map_to_groups() {
        use axum::http::Method;
        assert_eq!(group_of(&Method::POST, "/api/v1/auth/login"), Some("login"));
        assert_eq!(
            group_of(&Method::POST, "/api/v1/auth/refresh"),
            Some("auth")
        );
        assert_eq!(
            group_of(&Method::GET, "/api/v1/products/x"),
            Some("catalog")
        );
        assert_eq!(
            group_of(&Method::GET, "/api/v1/leaderboard"),
            Some("catalog")
        );
        assert_eq!(group_of(&Method::POST, "/api/v1/orders"), Some("orders"));
        assert_eq!(group_of(&Method::GET, "/api/v1/me/sessions"), Some("me"));
        assert_eq!(group_of(&Method::GET, "/healthz"), None);
    }
}
