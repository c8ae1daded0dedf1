//! [`Carts`] on Redis: one hash per shopper, `cart:{user}`, with a field per
//! line (`p:{product}` = `{quantity}:{added, unix µs}`) and the cart's
//! `token`; the key lives [`CART_LIFETIME`] after its last use (a read
//! counts).
//! An empty cart is no key at all.
//!
//! Every operation is one Lua script: the change, the new token and the
//! renewed life in one atomic step, one round trip, one key (so one slot on
//! a cluster). The checkout's compare-and-clear is a script too, rather
//! than `WATCH`/`MULTI`: WATCH needs a connection of its own per checkout
//! (this handle multiplexes one connection for everything) and a retry loop
//! when the watched key changes, where a script checks the token and
//! deletes in one step that nothing can come between.

use async_trait::async_trait;
use orderflow_core::ports::carts::{CART_LIFETIME, CartError, CartResult, Carts};
use orderflow_domain::cart::{Cart, CartLine, new_token};
use orderflow_domain::{ProductId, UserId};
use redis::RedisError;

use super::connection::RedisConnection;

/// The cart's new token, its renewed life, and the cart as it is now (none
/// at all when no line is left). Appended to the scripts that change lines:
/// KEYS[1] = the cart, ARGV[1] = ttl ms, ARGV[2] = the new token.
const FINISH: &str = r"
redis.call('HSET', KEYS[1], 'token', ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
if #all <= 2 then
  redis.call('DEL', KEYS[1])
  return {}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return all
";

/// ARGV[3] = the line's field, ARGV[4] = quantity (0 removes), ARGV[5] =
/// now; an existing line keeps its place.
const SET_LINE: &str = r"
if tonumber(ARGV[4]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[3])
else
  local added = ARGV[5]
  local old = redis.call('HGET', KEYS[1], ARGV[3])
  if old then
    added = string.match(old, ':(%d+)$') or added
  end
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4] .. ':' .. added)
end
";

/// ARGV[6] = the token the change was decided on ('' for an empty cart):
/// put before [`SET_LINE`], the change is made only while the cart still
/// has it, else the script answers nil.
const IF_TOKEN: &str = r"
if (redis.call('HGET', KEYS[1], 'token') or '') ~= ARGV[6] then
  return nil
end
";

/// ARGV[3..] = field, value, field, value, …
const REPLACE: &str = r"
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
";

/// KEYS[1] = the cart, ARGV[1] = ttl ms.
const READ: &str = r"
local all = redis.call('HGETALL', KEYS[1])
if #all > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return all
";

/// KEYS[1] = the cart, ARGV[1] = the token the checkout read.
const CLEAR_IF: &str = r"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

pub struct RedisCarts {
    conn: RedisConnection,
    set_line: redis::Script,
    set_line_if: redis::Script,
    replace: redis::Script,
    read: redis::Script,
    clear_if: redis::Script,
}

impl std::fmt::Debug for RedisCarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCarts")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl RedisCarts {
    pub fn new(conn: RedisConnection) -> Self {
        Self {
            conn,
            set_line: redis::Script::new(&format!("{SET_LINE}{FINISH}")),
            set_line_if: redis::Script::new(&format!("{IF_TOKEN}{SET_LINE}{FINISH}")),
            replace: redis::Script::new(&format!("{REPLACE}{FINISH}")),
            read: redis::Script::new(READ),
            clear_if: redis::Script::new(CLEAR_IF),
        }
    }

    fn key(&self, user: UserId) -> String {
        self.conn.key(&format!("cart:{user}"))
    }
}

fn ttl_ms() -> u64 {
    CART_LIFETIME.as_millis() as u64
}

fn field(product: ProductId) -> String {
    format!("p:{product}")
}

fn unavailable(error: RedisError) -> CartError {
    CartError::Unavailable(error.to_string())
}

/// A cart from `HGETALL`'s flat list of fields and values.
fn decode(all: Vec<String>) -> CartResult<Cart> {
    let mut token = None;
    let mut lines = Vec::new();
    for pair in all.chunks(2) {
        let [name, value] = pair else {
            return Err(CartError::Corrupt("an odd HGETALL answer".into()));
        };
        if name == "token" {
            token = Some(value.clone());
            continue;
        }
        let corrupt = || CartError::Corrupt(format!("cart field {name}={value}"));
        let product: ProductId = name
            .strip_prefix("p:")
            .and_then(|id| id.parse().ok())
            .ok_or_else(corrupt)?;
        let (quantity, added) = value.split_once(':').ok_or_else(corrupt)?;
        let quantity: u32 = quantity.parse().map_err(|_| corrupt())?;
        let added: i64 = added.parse().map_err(|_| corrupt())?;
        lines.push((
            added,
            CartLine {
                product_id: product,
                quantity,
            },
        ));
    }
    lines.sort_by_key(|(added, line)| (*added, line.product_id));
    Ok(Cart {
        lines: lines.into_iter().map(|(_, line)| line).collect(),
        token,
    })
}

/// [`SET_LINE`]'s and [`FINISH`]'s ARGV[1..=5].
fn line_args(invocation: &mut redis::ScriptInvocation<'_>, product: ProductId, quantity: u32) {
    invocation
        .arg(ttl_ms())
        .arg(new_token())
        .arg(field(product))
        .arg(quantity)
        .arg(now_micros());
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[async_trait]
impl Carts for RedisCarts {
    async fn cart(&self, user: UserId) -> CartResult<Cart> {
        let all: Vec<String> = self
            .conn
            .invoke(self.read.key(self.key(user)).arg(ttl_ms()))
            .await
            .map_err(unavailable)?;
        decode(all)
    }

    async fn set_quantity(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
    ) -> CartResult<Cart> {
        let mut invocation = self.set_line.key(self.key(user));
        line_args(&mut invocation, product, quantity);
        let all: Vec<String> = self.conn.invoke(&invocation).await.map_err(unavailable)?;
        decode(all)
    }

    async fn set_quantity_if(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
        seen: Option<&str>,
    ) -> CartResult<Option<Cart>> {
        let mut invocation = self.set_line_if.key(self.key(user));
        line_args(&mut invocation, product, quantity);
        invocation.arg(seen.unwrap_or(""));
        let all: Option<Vec<String>> = self.conn.invoke(&invocation).await.map_err(unavailable)?;
        all.map(decode).transpose()
    }

    async fn replace(&self, user: UserId, lines: &[CartLine]) -> CartResult<Cart> {
        let mut invocation = self.replace.key(self.key(user));
        invocation.arg(ttl_ms()).arg(new_token());
        let start = now_micros();
        for (index, line) in lines.iter().enumerate() {
            // One microsecond apart: the lines keep the order they came in.
            invocation.arg(field(line.product_id)).arg(format!(
                "{}:{}",
                line.quantity,
                start + index as i64
            ));
        }
        let all: Vec<String> = self.conn.invoke(&invocation).await.map_err(unavailable)?;
        decode(all)
    }

    async fn clear_if(&self, user: UserId, token: &str) -> CartResult<bool> {
        let cleared: i64 = self
            .conn
            .invoke(self.clear_if.key(self.key(user)).arg(token))
            .await
            .map_err(unavailable)?;
        Ok(cleared == 1)
    }
}
