//! The statements on leases ([`crate::leases`]): take, renew, check and give up one, by the
//! database's clock (`ferry_now_ms()`), so that servers whose clocks differ still agree on
//! when a lease ends.

use super::Db;
use super::sql::Row;
use crate::error::Result;

/// A lease as held: its name, holder, generation and end (ms since the Unix epoch, by the
/// database's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub generation: i64,
    pub expires_ms: i64,
}

fn lease(r: &Row) -> Result<LeaseRow> {
    Ok(LeaseRow {
        name: r.text(0)?,
        holder: r.text(1)?,
        generation: r.int(2)?,
        expires_ms: r.int(3)?,
    })
}

impl Db {
    /// Take the lease `name` for `holder` for `ttl_ms`: when nobody holds it, when its holder
    /// let it lapse, or when `holder` holds it already (then it is renewed). A new holder gets
    /// the next generation. None when another holder's lease runs.
    pub fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<LeaseRow>> {
        self.write(|c| {
            let now = c
                .query_opt("SELECT ferry_now_ms()", &[])?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            let current = c
                .query_opt(
                    "SELECT name, holder, generation, expires FROM leases WHERE name = $1",
                    &[name.into()],
                )?
                .map(|r| lease(&r))
                .transpose()?;
            let next = match current {
                None => {
                    c.execute(
                        "INSERT INTO leases (name, holder, generation, expires)
                         VALUES ($1, $2, 1, $3)",
                        &[name.into(), holder.into(), (now + ttl_ms).into()],
                    )?;
                    1
                }
                Some(l) if l.holder == holder && l.expires_ms >= now => l.generation,
                Some(l) if l.expires_ms < now => {
                    c.execute(
                        "UPDATE leases SET holder = $2, generation = $3, expires = $4
                         WHERE name = $1",
                        &[
                            name.into(),
                            holder.into(),
                            (l.generation + 1).into(),
                            (now + ttl_ms).into(),
                        ],
                    )?;
                    return Ok(Some(LeaseRow {
                        name: name.into(),
                        holder: holder.into(),
                        generation: l.generation + 1,
                        expires_ms: now + ttl_ms,
                    }));
                }
                Some(_) => return Ok(None),
            };
            c.execute(
                "UPDATE leases SET expires = $2 WHERE name = $1",
                &[name.into(), (now + ttl_ms).into()],
            )?;
            Ok(Some(LeaseRow {
                name: name.into(),
                holder: holder.into(),
                generation: next,
                expires_ms: now + ttl_ms,
            }))
        })
    }

    /// Extend by `ttl_ms` from now every lease of `holder` that has not ended (one
    /// statement, however many): the leases as renewed. A lease of `holder` that is not among
    /// them was lost.
    pub fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<Vec<LeaseRow>> {
        self.write(|c| {
            c.query(
                "UPDATE leases SET expires = ferry_now_ms() + $2
                 WHERE holder = $1 AND expires >= ferry_now_ms()
                 RETURNING name, holder, generation, expires",
                &[holder.into(), ttl_ms.into()],
            )?
            .iter()
            .map(lease)
            .collect()
        })
    }

    /// Whether `held` is still the lease and runs at least `margin_ms` more: what its holder
    /// asks before it publishes or deletes.
    pub fn lease_holds(&self, held: &LeaseRow, margin_ms: i64) -> Result<bool> {
        self.read(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM leases
                 WHERE name = $1 AND holder = $2 AND generation = $3
                   AND expires >= ferry_now_ms() + $4",
                &[
                    held.name.as_str().into(),
                    held.holder.as_str().into(),
                    held.generation.into(),
                    margin_ms.into(),
                ],
            )?
            .is_some())
        })
    }

    /// Give `held` up at once (it ends now; the next holder takes the next generation).
    pub fn release_lease(&self, held: &LeaseRow) -> Result<()> {
        self.write(|c| {
            c.execute(
                "UPDATE leases SET expires = ferry_now_ms() - 1
                 WHERE name = $1 AND holder = $2 AND generation = $3",
                &[
                    held.name.as_str().into(),
                    held.holder.as_str().into(),
                    held.generation.into(),
                ],
            )?;
            Ok(())
        })
    }

    /// End at once every lease whose holder matches the SQL pattern `holder_like`; how many.
    pub fn end_leases_like(&self, holder_like: &str) -> Result<u64> {
        self.write(|c| {
            c.execute(
                "UPDATE leases SET expires = ferry_now_ms() - 1
                 WHERE holder LIKE $1 AND expires >= ferry_now_ms()",
                &[holder_like.into()],
            )
        })
    }

    /// Every lease, by name.
    pub fn leases(&self) -> Result<Vec<LeaseRow>> {
        self.read(|c| {
            c.query(
                "SELECT name, holder, generation, expires FROM leases ORDER BY name",
                &[],
            )?
            .iter()
            .map(lease)
            .collect()
        })
    }
}
