//! The cluster's rows (migration 4): a lease per shard in `shards` and the
//! members' heartbeats in `members`, with exactly the rules of
//! [`crate::env::lease`] (the conformance suite holds every storage to
//! them). Expiry is judged by Postgres's clock alone (`clock_timestamp()` in
//! milliseconds since the Unix epoch, read once per statement), never by a
//! server's: a server whose clock is skewed cannot take a lease early.
//!
//! Each call is one statement, so one round trip (an acquisition that is
//! refused reads the lease it lost to with a second): the acquisition is one
//! conditional `UPDATE` whose `WHERE` is [`decide_acquire`]'s rule, so
//! Postgres decides and writes under the row's lock, and racing
//! acquisitions queue on it, each deciding on what the one before it wrote.
//!
//! [`decide_acquire`]: crate::env::lease::decide_acquire

use deadpool_postgres::ClientWrapper;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PostgresStorage, ReadError, io_error};
use crate::env::lease::{
    ClusterView, LeaseAnswer, LeaseRequest, Member, MemberBeat, SHARD_COUNT_MAX, ShardLease,
    check_beat, check_lease_request,
};
use crate::env::storage::StorageError;

/// Postgres's clock, in milliseconds, once for the statement: a CTE calling
/// a volatile function is evaluated once, before any row lock is waited on.
macro_rules! with_now {
    () => {
        "WITH now AS (SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) "
    };
}

/// [`decide_acquire`](crate::env::lease::decide_acquire) as one `UPDATE`:
/// it matches when the shard is free, expired, or held by the same node (any
/// incarnation), and keeps the epoch only when the same incarnation renews
/// a lease it still holds. No row: refused.
const ACQUIRE: &str = concat!(
    with_now!(),
    "UPDATE shards SET epoch = CASE WHEN shards.owner = $2::text \
        AND shards.incarnation = $3::bigint AND shards.expires_ms > now.ms \
        THEN shards.epoch ELSE shards.epoch + 1 END, \
     owner = $2::text, incarnation = $3::bigint, expires_ms = now.ms + $4::bigint \
     FROM now WHERE shards.shard = $1::int AND (shards.owner = $2::text \
        OR shards.owner = '' OR shards.expires_ms <= now.ms) \
     RETURNING shards.shard, shards.owner, shards.incarnation, shards.epoch, \
        shards.expires_ms"
);
/// A shard's lease as stored (after a refused acquisition).
const SELECT_SHARD: &str =
    "SELECT shard, owner, incarnation, epoch, expires_ms FROM shards WHERE shard = $1::int";
/// [`decide_release`](crate::env::lease::decide_release): the holder frees
/// it and bumps the epoch; the update waits for writes holding the shard
/// row `FOR SHARE`, so none of the old holder's lands after it.
const RELEASE: &str = "UPDATE shards SET owner = '', incarnation = 0, expires_ms = 0, epoch = epoch + 1 \
    WHERE shard = $1::int AND owner = $2::text AND incarnation = $3::bigint";
/// The heartbeat's upsert and every member, judged by Postgres's clock, in
/// one statement: the others as the statement's snapshot has them, the
/// beating one as the upsert left it.
const BEAT: &str = concat!(
    with_now!(),
    ", beat AS (INSERT INTO members (node, incarnation, address, expires_ms) \
        SELECT $1::text, $2::bigint, $3::text, now.ms + $4::bigint FROM now \
        ON CONFLICT (node) DO UPDATE SET incarnation = excluded.incarnation, \
            address = excluded.address, expires_ms = excluded.expires_ms \
        RETURNING node, incarnation, address, expires_ms) \
     SELECT m.node, m.incarnation, m.address, m.expires_ms, m.expires_ms > now.ms \
        FROM members m, now WHERE m.node <> $1::text \
     UNION ALL SELECT b.node, b.incarnation, b.address, b.expires_ms, b.expires_ms > now.ms \
        FROM beat b, now \
     ORDER BY 1"
);
/// Every shard (kind 0, by shard), then every member (kind 1, by name),
/// with Postgres's now on each row: one statement, one snapshot.
const VIEW: &str = concat!(
    with_now!(),
    "SELECT 0 AS kind, shard, owner, incarnation, epoch, expires_ms, ''::text AS address, \
        false AS alive, now.ms FROM shards, now \
     UNION ALL SELECT 1, NULL, node, incarnation, NULL, expires_ms, address, \
        expires_ms > now.ms, now.ms FROM members, now \
     ORDER BY kind, shard, owner"
);
/// The shard count and the lowest and highest shard.
const SHARD_COUNT: &str =
    "SELECT count(*), coalesce(min(shard), 0), coalesce(max(shard), -1) FROM shards";

/// A node's incarnation as a BIGINT: any u64 (they are random), its bits
/// kept, so it reads back equal.
fn incarnation_to_stored(incarnation: u64) -> i64 {
    i64::from_ne_bytes(incarnation.to_ne_bytes())
}

fn incarnation_from_stored(stored: i64) -> u64 {
    u64::from_ne_bytes(stored.to_ne_bytes())
}

/// A non-negative BIGINT of the cluster's tables, or `Corrupt` naming it.
fn stored_u64(what: &str, value: i64) -> Result<u64, StorageError> {
    u64::try_from(value)
        .map_err(|_| StorageError::Corrupt(format!("{what} holds negative {value}")))
}

/// A `shards` row: shard, owner, incarnation, epoch, expires_ms from `first`.
fn lease_from_row(row: &Row, first: usize) -> Result<ShardLease, StorageError> {
    let shard: i32 = row.get(first);
    let what = |column: &str| format!("shard {shard}: column {column}");
    let shard = u32::try_from(shard)
        .map_err(|_| StorageError::Corrupt(format!("a shard is numbered {shard}")))?;
    Ok(ShardLease {
        shard,
        owner: row.get(first + 1),
        incarnation: incarnation_from_stored(row.get(first + 2)),
        epoch: stored_u64(&what("epoch"), row.get(first + 3))?,
        expires_ms: stored_u64(&what("expires_ms"), row.get(first + 4))?,
    })
}

/// A member from node, incarnation, address, expires_ms, alive at `first`.
fn member_from_row(row: &Row, first: usize) -> Result<Member, StorageError> {
    let node: String = row.get(first);
    let expires_ms = stored_u64(&format!("member {node:?}: expires_ms"), row.get(first + 3))?;
    Ok(Member {
        incarnation: incarnation_from_stored(row.get(first + 1)),
        address: row.get(first + 2),
        expires_ms,
        alive: row.get(first + 4),
        node,
    })
}

/// A request's numbers as Postgres takes them (checked in range first).
fn request_params(request: &LeaseRequest) -> (i32, i64, i64) {
    let shard = i32::try_from(request.shard).expect("checked below SHARD_COUNT_MAX");
    let lease_ms = i64::try_from(request.lease_ms).expect("checked below LEASE_MS_MAX");
    (shard, incarnation_to_stored(request.incarnation), lease_ms)
}

async fn acquire_on(
    client: &ClientWrapper,
    request: &LeaseRequest,
) -> Result<LeaseAnswer, ReadError> {
    let (shard, incarnation, lease_ms) = request_params(request);
    let statement = client.prepare_cached(ACQUIRE).await?;
    let params: [&(dyn ToSql + Sync); 4] = [&shard, &request.owner, &incarnation, &lease_ms];
    if let Some(row) = client.query_opt(&statement, &params).await? {
        let lease = lease_from_row(&row, 0)?;
        return Ok(LeaseAnswer {
            lease,
            granted: true,
        });
    }
    // Refused: what it lost to, as committed now.
    let statement = client.prepare_cached(SELECT_SHARD).await?;
    let row = client.query_one(&statement, &[&shard]).await?;
    Ok(LeaseAnswer {
        lease: lease_from_row(&row, 0)?,
        granted: false,
    })
}

async fn release_on(client: &ClientWrapper, request: &LeaseRequest) -> Result<bool, ReadError> {
    let (shard, incarnation, _) = request_params(request);
    let statement = client.prepare_cached(RELEASE).await?;
    let params: [&(dyn ToSql + Sync); 3] = [&shard, &request.owner, &incarnation];
    let released = client.execute(&statement, &params).await?;
    assert!(released <= 1, "a shard has one row");
    Ok(released == 1)
}

async fn beat_on(client: &ClientWrapper, beat: &MemberBeat) -> Result<Vec<Member>, ReadError> {
    let incarnation = incarnation_to_stored(beat.incarnation);
    let ttl_ms = i64::try_from(beat.ttl_ms).expect("checked below LEASE_MS_MAX");
    let statement = client.prepare_cached(BEAT).await?;
    let params: [&(dyn ToSql + Sync); 4] = [&beat.node, &incarnation, &beat.address, &ttl_ms];
    let rows = client.query(&statement, &params).await?;
    let mut members = Vec::with_capacity(rows.len());
    for row in &rows {
        members.push(member_from_row(row, 0)?);
    }
    Ok(members)
}

async fn view_on(client: &ClientWrapper) -> Result<ClusterView, ReadError> {
    let statement = client.prepare_cached(VIEW).await?;
    let rows = client.query(&statement, &[]).await?;
    let Some(first) = rows.first() else {
        return Err(StorageError::Corrupt("the schema has no shards".to_string()).into());
    };
    let mut view = ClusterView {
        now_ms: stored_u64("Postgres's clock", first.get(8))?,
        ..ClusterView::default()
    };
    for row in &rows {
        match row.get::<_, i32>(0) {
            0 => view.shards.push(lease_from_row(row, 1)?),
            _ => view.members.push(member_from_row_of_view(row)?),
        }
    }
    Ok(view)
}

/// A member row of [`VIEW`]: node in column 2, incarnation 3, expires_ms 5,
/// address 6, alive 7.
fn member_from_row_of_view(row: &Row) -> Result<Member, StorageError> {
    let node: String = row.get(2);
    let expires_ms = stored_u64(&format!("member {node:?}: expires_ms"), row.get(5))?;
    Ok(Member {
        incarnation: incarnation_from_stored(row.get(3)),
        address: row.get(6),
        expires_ms,
        alive: row.get(7),
        node,
    })
}

impl PostgresStorage {
    /// The schema's shard count, fixed when it was created (the rows of
    /// `shards`).
    pub fn shard_count(&self) -> u32 {
        let count = *self
            .inner
            .shard_count
            .get()
            .expect("read when the storage connected");
        assert!(count > 0 && count <= SHARD_COUNT_MAX);
        count
    }

    /// Reads the shard count, refusing a `shards` table that is not the
    /// shards 0..count.
    pub(super) async fn read_shard_count(&self) -> Result<u32, StorageError> {
        let doing = "cannot read the shards".to_string();
        let (count, min, max): (i64, i32, i32) = self
            .read(doing, async |client| {
                let row = client.query_one(SHARD_COUNT, &[]).await?;
                Ok((row.get(0), row.get(1), row.get(2)))
            })
            .await?;
        let in_range = count > 0 && count <= i64::from(SHARD_COUNT_MAX);
        if !in_range || min != 0 || i64::from(max) != count - 1 {
            let reason = format!(
                "table shards holds {count} rows numbered {min}..={max}; it must hold shards \
                 0..n for some n in 1..={SHARD_COUNT_MAX}"
            );
            return Err(io_error(&self.inner.target, "cannot open", reason));
        }
        let count = u32::try_from(count).expect("checked in range");
        assert!(count > 0);
        Ok(count)
    }

    pub(super) async fn acquire(&self, request: LeaseRequest) -> Result<LeaseAnswer, StorageError> {
        check_lease_request(&request, self.shard_count())?;
        let doing = format!("cannot acquire shard {}", request.shard);
        let answer = self
            .read(doing, async |client| acquire_on(client, &request).await)
            .await?;
        assert_eq!(answer.lease.shard, request.shard);
        let holds =
            answer.lease.owner == request.owner && answer.lease.incarnation == request.incarnation;
        assert!(!answer.granted || holds);
        Ok(answer)
    }

    pub(super) async fn release(&self, request: LeaseRequest) -> Result<bool, StorageError> {
        check_lease_request(&request, self.shard_count())?;
        let doing = format!("cannot release shard {}", request.shard);
        self.read(doing, async |client| release_on(client, &request).await)
            .await
    }

    pub(super) async fn beat_now(&self, beat: MemberBeat) -> Result<Vec<Member>, StorageError> {
        check_beat(&beat)?;
        let doing = format!("cannot record the heartbeat of {:?}", beat.node);
        let members = self
            .read(doing, async |client| beat_on(client, &beat).await)
            .await?;
        assert!(members.iter().any(|m| m.node == beat.node && m.alive));
        Ok(members)
    }

    pub(super) async fn view(&self) -> Result<ClusterView, StorageError> {
        let doing = "cannot read the cluster".to_string();
        let view = self
            .read(doing, async |client| view_on(client).await)
            .await?;
        let ordered = view.shards.iter().zip(0..).all(|(l, i)| l.shard == i);
        assert!(ordered && view.shards.len() == self.shard_count() as usize);
        Ok(view)
    }
}
