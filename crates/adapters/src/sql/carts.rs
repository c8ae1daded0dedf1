//! [`Carts`] in the database (the embedded setup, or a deployment without
//! Redis): `carts` holds each shopper's token, `cart_lines` the lines. A
//! change and the token it replaces are one transaction, and so are
//! [`Carts::clear_if`]'s and [`Carts::set_quantity_if`]'s compare and
//! change. The compare is the write itself (an `UPDATE … WHERE token = …`,
//! or an `INSERT … ON CONFLICT DO NOTHING` for an empty cart): on
//! PostgreSQL a racing transaction waits on that row and then finds the
//! token changed, with no `SELECT … FOR UPDATE` (an empty cart has no row
//! to lock); SQLite's one writer orders them anyway.

use async_trait::async_trait;
use orderflow_core::ports::carts::{CartResult, Carts};
use orderflow_domain::cart::{Cart, CartLine, new_token};
use orderflow_domain::{ProductId, Timestamp, UserId};

use super::{Engine, Exec, SqlRow, SqlStore, Stmt, WritePriority, WriteTx, stmt};

/// The cart as `conn` sees it.
async fn read_cart<C: Exec + ?Sized>(conn: &mut C, user: UserId) -> CartResult<Cart> {
    let token = conn
        .query_opt(stmt(
            "cart_token",
            "SELECT token FROM carts WHERE user_id = $1",
            (user,),
        ))
        .await?
        .map(|row| row.text("token"))
        .transpose()?;
    let lines = conn
        .query_all(stmt(
            "cart_lines",
            "SELECT product_id, quantity FROM cart_lines WHERE user_id = $1
                 ORDER BY added_at, product_id",
            (user,),
        ))
        .await?
        .iter()
        .map(|row| {
            Ok(CartLine {
                product_id: row.uuid("product_id")?,
                quantity: u32::try_from(row.int("quantity")?)
                    .map_err(|_| super::rows::corrupt("a cart line's quantity"))?,
            })
        })
        .collect::<Result<Vec<_>, orderflow_core::ports::store::StoreError>>()?;
    Ok(Cart { lines, token })
}

/// Sets a line's quantity; a new line is `added_at`, an existing one keeps
/// its place.
fn set_line(user: UserId, product: ProductId, quantity: u32, added_at: Timestamp) -> Stmt {
    stmt(
        "cart_set_line",
        "INSERT INTO cart_lines (user_id, product_id, quantity, added_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = excluded.quantity",
        (user, product, i64::from(quantity), added_at),
    )
}

/// After a change of `user`'s lines: a new token, or no cart row at all
/// when no line is left; then the cart as it is now.
async fn changed<C: Exec + ?Sized>(conn: &mut C, user: UserId) -> CartResult<Cart> {
    let now = chrono::Utc::now();
    conn.exec(stmt(
        "cart_touch",
        "INSERT INTO carts (user_id, token, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET token = excluded.token,
                 updated_at = excluded.updated_at",
        (user, new_token(), now),
    ))
    .await?;
    conn.exec(stmt(
        "cart_drop_empty",
        "DELETE FROM carts WHERE user_id = $1
             AND NOT EXISTS (SELECT 1 FROM cart_lines WHERE user_id = $1)",
        (user,),
    ))
    .await?;
    read_cart(conn, user).await
}

/// Sets (0: removes) one line, then [`changed`].
async fn change_line<C: Exec + ?Sized>(
    conn: &mut C,
    user: UserId,
    product: ProductId,
    quantity: u32,
) -> CartResult<Cart> {
    if quantity == 0 {
        conn.exec(stmt(
            "cart_remove_line",
            "DELETE FROM cart_lines WHERE user_id = $1 AND product_id = $2",
            (user, product),
        ))
        .await?;
    } else {
        conn.exec(set_line(user, product, quantity, chrono::Utc::now()))
            .await?;
    }
    changed(conn, user).await
}

#[async_trait]
impl<E: Engine> Carts for SqlStore<E> {
    async fn cart(&self, user: UserId) -> CartResult<Cart> {
        let mut conn = self.engine.read().await?;
        read_cart(&mut *conn, user).await
    }

    async fn set_quantity(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
    ) -> CartResult<Cart> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        let cart = change_line(&mut *w, user, product, quantity).await?;
        w.commit().await?;
        Ok(cart)
    }

    async fn set_quantity_if(
        &self,
        user: UserId,
        product: ProductId,
        quantity: u32,
        seen: Option<&str>,
    ) -> CartResult<Option<Cart>> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        let now = chrono::Utc::now();
        let claim = match seen {
            Some(token) => stmt(
                "cart_claim",
                "UPDATE carts SET updated_at = $3 WHERE user_id = $1 AND token = $2",
                (user, token, now),
            ),
            None => stmt(
                "cart_claim_empty",
                "INSERT INTO carts (user_id, token, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO NOTHING",
                (user, new_token(), now),
            ),
        };
        if w.exec(claim).await? != 1 {
            // Changed since `seen`: dropped uncommitted, so nothing changes.
            return Ok(None);
        }
        let cart = change_line(&mut *w, user, product, quantity).await?;
        w.commit().await?;
        Ok(Some(cart))
    }

    async fn replace(&self, user: UserId, lines: &[CartLine]) -> CartResult<Cart> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        w.exec(stmt(
            "cart_clear_lines",
            "DELETE FROM cart_lines WHERE user_id = $1",
            (user,),
        ))
        .await?;
        let start = chrono::Utc::now();
        for (index, line) in lines.iter().enumerate() {
            // One microsecond apart: the lines keep the order they came in.
            let added_at = start + chrono::Duration::microseconds(index as i64);
            w.exec(set_line(user, line.product_id, line.quantity, added_at))
                .await?;
        }
        let cart = changed(&mut *w, user).await?;
        w.commit().await?;
        Ok(cart)
    }

    async fn clear_if(&self, user: UserId, token: &str) -> CartResult<bool> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        let cleared = w
            .exec(stmt(
                "cart_clear_if",
                "DELETE FROM carts WHERE user_id = $1 AND token = $2",
                (user, token),
            ))
            .await?
            == 1;
        if cleared {
            w.exec(stmt(
                "cart_clear_lines",
                "DELETE FROM cart_lines WHERE user_id = $1",
                (user,),
            ))
            .await?;
        }
        w.commit().await?;
        Ok(cleared)
    }
}
