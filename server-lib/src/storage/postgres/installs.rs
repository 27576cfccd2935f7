//! The PostgreSQL store's installs: the lookups a new install needs, the install with its
//! touchpoint, fraud alert and postbacks, and the burst baseline.

use std::sync::LazyLock;

use deadpool_postgres::Pool;
use futures_util::future::try_join_all;
use tokio::sync::{mpsc, oneshot};

use super::conversions::insert_postback;
use super::{PostgresStorage, json, pool_error};
use crate::storage::sql::{self, INSTALL_COLUMNS};
use crate::storage::{
    AdIdUpdate, DeviceKeys, FraudAlert, InstallCount, InstallLookup, InstallRecord, InstallStore, PostbackRecord,
    StorageError, StorageFuture, TestDevice, Touchpoint, backend,
};

impl InstallStore for PostgresStorage {
    fn install_by_event(&self, app_id: Option<String>, event_id: String) -> StorageFuture<'_, Option<InstallRecord>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            install_by_event(&client, app_id.as_deref(), &event_id).await
        })
    }

    fn last_install(&self, app_id: String, keys: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            last_install(&client, &app_id, &keys).await
        })
    }

    fn install_lookup(&self, app_id: String, event_id: String, keys: DeviceKeys) -> StorageFuture<'_, InstallLookup> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            // Both queries sent at once on the one connection (pipelined: one round trip); the
            // device's last install is dropped when the request turns out to be a retry.
            let (done, last) = tokio::try_join!(
                install_by_event(&client, Some(&app_id), &event_id),
                last_install(&client, &app_id, &keys)
            )?;
            Ok(match done {
                Some(done) => InstallLookup { existing: Some(done), last_install: None },
                None => InstallLookup { existing: None, last_install: last },
            })
        })
    }

    fn save_install(
        &self,
        i: InstallRecord,
        touchpoint: Option<Touchpoint>,
        alert: Option<FraudAlert>,
        postbacks: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>> {
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            let job = InstallJob::Save(Box::new(SaveJob { install: i, touchpoint, alert, postbacks, done }));
            // A full queue is answered at once (503, the SDK retries), as a full click queue is.
            self.installs.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!("trailmark_writer_busy_total").increment(1);
                    StorageError::Busy
                }
                mpsc::error::TrySendError::Closed(_) => backend("the install writer has stopped"),
            })?;
            // The sender is dropped unanswered only if the batch's task panicked.
            answer.await.map_err(|_| backend("the install writer failed on this batch"))?
        })
    }

    fn save_test_device(&self, d: TestDevice) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let existed: bool = client
                .query_one("SELECT EXISTS (SELECT 1 FROM test_devices WHERE device_id = $1)", &[&d.device_id])
                .await
                .map_err(backend)?
                .get(0);
            client
                .execute(sql::SAVE_TEST_DEVICE, &[&d.device_id, &d.label, &d.device_enc, &d.created_at])
                .await
                .map_err(backend)?;
            Ok(!existed)
        })
    }

    fn remove_test_device(&self, device_id: String) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            Ok(client.execute(sql::REMOVE_TEST_DEVICE, &[&device_id]).await.map_err(backend)? == 1)
        })
    }

    fn test_devices(&self) -> StorageFuture<'_, Vec<TestDevice>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client.query(sql::TEST_DEVICES, &[]).await.map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| TestDevice {
                    device_id: r.get(0),
                    label: r.get(1),
                    device_enc: r.get(2),
                    created_at: r.get(3),
                })
                .collect())
        })
    }

    fn attach_advertising_id(&self, u: AdIdUpdate) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let sql = sql::attach_advertising_id(u.column);
            client.execute(&sql, &[&u.app_id, &u.anonymous_id, &u.value]).await.map_err(backend)
        })
    }

    fn install_counts(&self, since: i64) -> StorageFuture<'_, Vec<InstallCount>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let hour = crate::domain::attribution::HOUR;
            let rows = client
                .query(
                    "SELECT campaign_id, (install_ts / $2) * $2 AS hour, COUNT(*) FROM installs
                      WHERE campaign_id IS NOT NULL AND install_ts >= $1 AND kind = 'install' AND NOT rejected
                      GROUP BY campaign_id, hour ORDER BY hour",
                    &[&since, &hour],
                )
                .await
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| InstallCount { campaign_id: r.get(0), hour: r.get(1), installs: r.get::<_, i64>(2) as u32 })
                .collect())
        })
    }
}

/// What the install writer is asked.
pub(super) enum InstallJob {
    Save(Box<SaveJob>),
    /// Answered once every install queued before it is committed (or has failed).
    Barrier(oneshot::Sender<()>),
}

/// An install waiting for the install writer, with where its answer goes.
pub(super) struct SaveJob {
    install: InstallRecord,
    touchpoint: Option<Touchpoint>,
    alert: Option<FraudAlert>,
    postbacks: Vec<PostbackRecord>,
    done: oneshot::Sender<Result<Option<Vec<i64>>, StorageError>>,
}

/// Most installs committed together.
const INSTALL_BATCH: usize = 64;

/// Why a batch, or an install, was not stored.
enum Failure {
    /// No connection, or it broke at `BEGIN` or `COMMIT`: every install waiting fails with it
    /// (no one-by-one retry against a database that cannot be reached).
    Unavailable(StorageError),
    /// PostgreSQL refused a statement (a deadlock, one install's bad value): worth trying the
    /// installs one by one.
    Refused(StorageError),
}

/// Stores installs as they come, the ones waiting together in one transaction (as SQLite's
/// writer does): one commit, one WAL flush for all of them, the installs in one statement and
/// their touchpoints in another; alerts and postbacks (few) follow, pipelined. If PostgreSQL
/// refuses the shared transaction, each install of the batch is stored again in a transaction
/// of its own, so one install's failure is its own. A batch runs
/// in a task of its own: were it to panic, its callers get an error and the writer goes on.
pub(super) async fn install_writer(pool: Pool, mut queue: mpsc::Receiver<InstallJob>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < INSTALL_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut saves = Vec::with_capacity(jobs.len());
        let mut barriers = Vec::new();
        for job in jobs {
            match job {
                InstallJob::Save(save) => saves.push(*save),
                InstallJob::Barrier(done) => barriers.push(done),
            }
        }
        if !saves.is_empty() && tokio::spawn(store_batch(pool.clone(), saves)).await.is_err() {
            metrics::counter!("trailmark_install_writer_panics_total").increment(1);
            tracing::error!("an install batch panicked: its installs were answered with an error");
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

async fn store_batch(pool: Pool, saves: Vec<SaveJob>) {
    // A second save of an install already in the batch (a retry racing the first, or another
    // device's install with the same event id) waits for the batch: then it finds the first
    // stored, as it would have in a commit of its own.
    let mut seen = std::collections::HashSet::new();
    let (mut firsts, again): (Vec<SaveJob>, Vec<SaveJob>) =
        saves.into_iter().partition(|j| seen.insert((j.install.app_id.clone(), j.install.event_id.clone())));
    // One order for the rows every batch locks (its devices' dim_users rows): two batches, or
    // a batch and the report refresh, wait for each other instead of deadlocking as often.
    firsts.sort_by(|a, b| {
        (&a.install.app_id, &a.install.anonymous_id).cmp(&(&b.install.app_id, &b.install.anonymous_id))
    });
    let mut unavailable = None;
    if firsts.len() > 1 {
        match save_together(&pool, &firsts).await {
            Ok(answers) => {
                for (job, answer) in firsts.drain(..).zip(answers) {
                    let _ = job.done.send(Ok(answer));
                }
            }
            Err(Failure::Unavailable(e)) => unavailable = Some(e),
            Err(Failure::Refused(e)) => {
                tracing::warn!(error = %e, installs = firsts.len(), "shared install commit refused: one by one")
            }
        }
    }
    for job in firsts.into_iter().chain(again) {
        let answer = match &unavailable {
            Some(e) => Err(Clone::clone(e)),
            None => match save_alone(&pool, &job).await {
                Ok(answer) => Ok(answer),
                Err(Failure::Refused(e)) => Err(e),
                Err(Failure::Unavailable(e)) => {
                    unavailable = Some(e.clone());
                    Err(e)
                }
            },
        };
        let _ = job.done.send(answer);
    }
}

/// A batch's installs in one statement (one array per column, unnested); answers the keys of
/// those written (an install another instance stored first is not).
const INSERT_INSTALLS: &str = "INSERT INTO installs (app_id, event_id, anonymous_id, platform, idfa, idfv, gaid,
         android_id, install_ts, received_at, kind, match_type, campaign_id, link_id, click_id, network, rejected,
         result, audit, ip_enc, ids_enc)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
         $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
         $16::text[], $17::boolean[], $18::text[], $19::text[], $20::bytea[], $21::bytea[])
     ON CONFLICT (app_id, event_id) DO NOTHING
     RETURNING app_id, event_id";

/// The touchpoints of a batch's written installs in one statement.
const INSERT_TOUCHPOINTS: &str = "INSERT INTO touchpoints (app_id, anonymous_id, ts, click_id, link_id, campaign_id,
         network, kind, source_event_id)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
         $8::text[], $9::text[])
     ON CONFLICT (app_id, anonymous_id, click_id, kind) DO NOTHING";

/// A batch (no event id twice; one install or more) in one transaction: the installs in one
/// statement, the written ones' touchpoints in another, their alerts and postbacks (few) each in its own, pipelined.
async fn save_together(pool: &Pool, jobs: &[SaveJob]) -> Result<Vec<Option<Vec<i64>>>, Failure> {
    fn unavailable(e: impl std::fmt::Display) -> Failure {
        Failure::Unavailable(backend(e))
    }
    fn refused(e: impl std::fmt::Display) -> Failure {
        Failure::Refused(backend(e))
    }
    let mut client = pool.get().await.map_err(|e| Failure::Unavailable(pool_error(e)))?;
    let tx = client.transaction().await.map_err(unavailable)?;
    // Prepared before the futures below run, not by each of them at once on a new connection.
    let mut statements = Vec::with_capacity(4);
    for statement in [INSERT_INSTALLS, INSERT_TOUCHPOINTS, sql::INSERT_POSTBACK, sql::INSERT_FRAUD_ALERT] {
        statements.push(tx.prepare_cached(statement).await.map_err(unavailable)?);
    }

    let installs: Vec<&InstallRecord> = jobs.iter().map(|j| &j.install).collect();
    let text = |f: fn(&InstallRecord) -> Option<String>| installs.iter().map(|i| f(i)).collect::<Vec<_>>();
    let credited: Vec<[Option<String>; 4]> = installs.iter().map(|i| i.credited()).collect();
    let credit = |k: usize| credited.iter().map(|c| c[k].clone()).collect::<Vec<_>>();
    let mut results = Vec::with_capacity(installs.len());
    for i in &installs {
        results.push(Some(serde_json::to_string(&i.result).map_err(refused)?));
    }
    let rows = tx
        .query(
            &statements[0],
            &[
                &text(|i| Some(i.app_id.clone())),
                &text(|i| Some(i.event_id.clone())),
                &text(|i| Some(i.anonymous_id.clone())),
                &text(|i| Some(i.platform.clone())),
                &text(|i| i.idfa.clone()),
                &text(|i| i.idfv.clone()),
                &text(|i| i.gaid.clone()),
                &text(|i| i.android_id.clone()),
                &installs.iter().map(|i| i.install_ts).collect::<Vec<i64>>(),
                &installs.iter().map(|i| i.received_at).collect::<Vec<i64>>(),
                &text(|i| Some(i.kind.clone())),
                &text(|i| Some(i.result.match_type.as_str().to_owned())),
                &credit(0),
                &credit(1),
                &credit(2),
                &credit(3),
                &installs.iter().map(|i| i.result.fraud.rejected).collect::<Vec<bool>>(),
                &results,
                &text(|i| Some(i.audit.to_string())),
                &installs.iter().map(|i| i.ip_enc.clone()).collect::<Vec<Option<Vec<u8>>>>(),
                &installs.iter().map(|i| i.ids_enc.clone()).collect::<Vec<Option<Vec<u8>>>>(),
            ],
        )
        .await
        .map_err(refused)?;
    let written: std::collections::HashSet<(String, String)> =
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect();
    let is_written = |j: &SaveJob| written.contains(&(j.install.app_id.clone(), j.install.event_id.clone()));

    let touches: Vec<&Touchpoint> =
        jobs.iter().filter(|j| is_written(j)).filter_map(|j| j.touchpoint.as_ref()).collect();
    if !touches.is_empty() {
        let col = |f: fn(&Touchpoint) -> String| touches.iter().map(|t| f(t)).collect::<Vec<String>>();
        tx.execute(
            &statements[1],
            &[
                &col(|t| t.app_id.clone()),
                &col(|t| t.anonymous_id.clone()),
                &touches.iter().map(|t| t.ts).collect::<Vec<i64>>(),
                &col(|t| t.click_id.clone()),
                &col(|t| t.link_id.clone()),
                &col(|t| t.campaign_id.clone()),
                &col(|t| t.network.clone()),
                &col(|t| t.kind.clone()),
                &col(|t| t.source_event_id.clone()),
            ],
        )
        .await
        .map_err(refused)?;
    }
    // Alerts and postbacks of the written installs, sent at once (pipelined).
    let answers = try_join_all(jobs.iter().map(|j| async {
        if !is_written(j) {
            return Ok(None);
        }
        if let Some(a) = &j.alert {
            tx.execute(&statements[3], &[&a.rule, &a.app_id, &a.campaign_id, &a.at, &a.detail.to_string()])
                .await
                .map_err(backend)?;
        }
        let mut ids = Vec::with_capacity(j.postbacks.len());
        for p in &j.postbacks {
            ids.push(insert_postback(&tx, p).await?);
        }
        Ok::<_, StorageError>(Some(ids))
    }))
    .await
    .map_err(Failure::Refused)?;
    tx.commit().await.map_err(unavailable)?;
    Ok(answers)
}

/// One install in a transaction of its own (a batch of one, or an install of a refused batch,
/// of a duplicate's): the batch's statements with one row.
async fn save_alone(pool: &Pool, job: &SaveJob) -> Result<Option<Vec<i64>>, Failure> {
    Ok(save_together(pool, std::slice::from_ref(job)).await?.pop().flatten())
}

fn install_row(r: &tokio_postgres::Row) -> Result<InstallRecord, StorageError> {
    Ok(InstallRecord {
        app_id: r.get(0),
        event_id: r.get(1),
        anonymous_id: r.get(2),
        platform: r.get(3),
        idfa: r.get(4),
        idfv: r.get(5),
        gaid: r.get(6),
        android_id: r.get(7),
        install_ts: r.get(8),
        received_at: r.get(9),
        kind: r.get(10),
        result: serde_json::from_str(r.get(11)).map_err(backend)?,
        audit: json(r.get(12))?,
        ip_enc: r.get(13),
        ids_enc: r.get(14),
        rejected_credit: None,
    })
}

async fn install_by_event(
    client: &deadpool_postgres::Client,
    app_id: Option<&str>,
    event_id: &str,
) -> Result<Option<InstallRecord>, StorageError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {INSTALL_COLUMNS} FROM installs WHERE event_id = $1 AND ($2::text IS NULL OR app_id = $2)
              ORDER BY received_at LIMIT 1"
        ))
        .await
        .map_err(backend)?;
    let row = client.query_opt(&stmt, &[&event_id, &app_id]).await.map_err(backend)?;
    row.as_ref().map(install_row).transpose()
}

/// The device's latest install that counted as new (`kind = 'install'`), by any of its keys.
/// Ordered by `install_ts + 0` so that no plan walks `installs_time (app_id, install_ts)`, every
/// install of the app newest first, instead of the keys' own indexes.
///
/// Planned afresh with its values on every call (an unnamed statement, still one round trip):
/// a statement prepared once per connection soon runs with a generic plan, made without the
/// values, and until the table's first `ANALYZE` PostgreSQL cannot tell `installs_time` from the
/// keys' indexes for `app_id = $1`. Such a plan, made in the first seconds of a new table, read
/// every install of the app for each install until autovacuum analysed the table (issue 24's
/// profile: 3.2 ms and 512 buffers per lookup after 3,400 installs). With the values, an absent
/// key's arm (`= NULL`) is dropped and the key's index wins as soon as the table has a few
/// pages. `tests/postgres_installs.rs` asserts the plan.
pub static LAST_INSTALL_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {INSTALL_COLUMNS} FROM installs WHERE app_id = $1 AND kind = 'install'
            AND (anonymous_id = $2 OR idfa = $3 OR idfv = $4 OR gaid = $5 OR android_id = $6)
          ORDER BY install_ts + 0 DESC LIMIT 1"
    )
});

async fn last_install(
    client: &deadpool_postgres::Client,
    app_id: &str,
    keys: &DeviceKeys,
) -> Result<Option<InstallRecord>, StorageError> {
    let text = tokio_postgres::types::Type::TEXT;
    let row = client
        .query_typed_opt(
            &LAST_INSTALL_SQL,
            &[
                (&app_id, text.clone()),
                (&keys.anonymous_id, text.clone()),
                (&keys.idfa, text.clone()),
                (&keys.idfv, text.clone()),
                (&keys.gaid, text.clone()),
                (&keys.android_id, text),
            ],
        )
        .await
        .map_err(backend)?;
    row.as_ref().map(install_row).transpose()
}
