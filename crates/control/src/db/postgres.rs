//! The state database beyond one machine: PostgreSQL, through `tokio-postgres`.
//!
//! The statements are synchronous to their callers, as SQLite's are: the connection's I/O runs
//! on a small runtime of its own, and a caller waits for its answer (off the async workers,
//! [`ferry_types::blocking::off_worker`]) with a deadline. A connection that broke or timed
//! out is dropped and made again at the next statement.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, GenericClient, NoTls, Statement};

use super::sql::{Conn, Row, Value};
use crate::error::{ControlError, Result};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// How long one statement, or making the connection, may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The advisory lock every writing transaction holds, so that transactions of every server on
/// the database run one after another, as SQLite's do: what one reads is what it changes.
const WRITE_LOCK: i64 = 0x6665_7272_7900; // "ferry"
/// The advisory lock held while the schema is brought up to date, by one server at a time.
const MIGRATE_LOCK: i64 = 0x6665_7272_7901;

pub(super) struct Postgres {
    config: tokio_postgres::Config,
    /// Where the database is, for messages: host, port and name, never the credentials.
    shown: String,
    /// Runs the connections' I/O (one thread); shut down when the database is dropped.
    rt: Option<tokio::runtime::Runtime>,
    client: Option<Client>,
    /// Statements prepared on `client`, by text.
    prepared: HashMap<String, Statement>,
}

impl Postgres {
    /// Connect to the database at `url` and bring its schema to this version.
    pub(super) fn open(url: &str) -> Result<Postgres> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            ControlError::Invalid(format!(
                "--database: not a PostgreSQL URL ({e}); give postgres://USER@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config
            .keepalives_idle(Duration::from_secs(10))
            .application_name("ferry-server");
        let shown = shown(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-postgres")
            .enable_all()
            .build()
            .map_err(|e| ControlError::Internal(format!("start the database runtime: {e}")))?;
        let mut pg = Postgres {
            config,
            shown,
            rt: Some(rt),
            client: None,
            prepared: HashMap::new(),
        };
        pg.migrate()?;
        Ok(pg)
    }

    /// Host, port and database name, never the credentials.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the database")
    }

    fn migrate(&mut self) -> Result<()> {
        self.connect()?;
        let (client, rt, shown) = (
            self.client.as_mut().expect("connected"),
            self.rt
                .as_ref()
                .expect("the runtime lives as long as the database"),
            &self.shown,
        );
        wait(rt, shown, async {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                .await
        })?;
        let _g = rt.enter();
        let report = futures::executor::block_on(tokio::time::timeout(
            DEADLINE * 4,
            embedded::migrations::runner()
                .set_grouped(true)
                .run_async(client),
        ));
        let unlock = wait(rt, shown, async {
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
                .await
        });
        match report {
            Ok(Ok(_)) => unlock.map(|_| ()),
            Ok(Err(e)) => Err(ControlError::Internal(format!(
                "state database {shown}: the schema cannot be brought to this version: {e}"
            ))),
            Err(_) => Err(ControlError::Internal(format!(
                "state database {shown}: bringing the schema to this version took over {} s",
                (DEADLINE * 4).as_secs()
            ))),
        }
    }

    /// Make the connection if there is none or it broke (forgetting what was prepared on
    /// the old one).
    fn connect(&mut self) -> Result<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        self.prepared.clear();
        let config = self.config.clone();
        let shown = self.shown.clone();
        let connect = self.rt().spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(database = %shown, error = %e, "the state database connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = futures::executor::block_on(connect)
            .map_err(|e| ControlError::Internal(format!("connect to the state database: {e}")))?
            .map_err(|e| {
                ControlError::Unavailable(format!(
                    "state database {} cannot be reached: {e}; check that PostgreSQL runs and \
                     that --database names it",
                    self.shown
                ))
            })?;
        self.client = Some(client);
        Ok(())
    }

    /// Run `f` on the connection, outside a transaction. A failure drops the connection.
    pub(super) fn run<R>(&mut self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.connect()?;
        let out = {
            let mut conn = Pg {
                client: self.client.as_ref().expect("connected"),
                rt: self
                    .rt
                    .as_ref()
                    .expect("the runtime lives as long as the database"),
                shown: &self.shown,
                prepared: &mut self.prepared,
            };
            f(&mut conn)
        };
        self.settle(out)
    }

    /// Run `f` in one transaction that holds the write lock; it commits when `f` succeeds.
    pub(super) fn transact<R>(&mut self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.connect()?;
        let out = (|| {
            let rt = self
                .rt
                .as_ref()
                .expect("the runtime lives as long as the database");
            let client = self.client.as_mut().expect("connected");
            let tx = wait(rt, &self.shown, client.transaction())?;
            let out = {
                let mut conn = Pg {
                    client: &tx,
                    rt,
                    shown: &self.shown,
                    prepared: &mut self.prepared,
                };
                conn.execute("SELECT pg_advisory_xact_lock($1)", &[WRITE_LOCK.into()])?;
                f(&mut conn)?
            };
            wait(rt, &self.shown, tx.commit())?;
            Ok(out)
        })();
        self.settle(out)
    }

    /// After a statement failed on the connection itself (not on what it asked), forget the
    /// connection: the next statement makes a new one. After any failure, prepare again.
    fn settle<R>(&mut self, out: Result<R>) -> Result<R> {
        if out.is_err() {
            self.prepared.clear();
        }
        if matches!(out, Err(ControlError::Unavailable(_))) {
            self.client = None;
        }
        out
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Dropping a runtime may block, which an async caller must not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Host, port and database name of `config`, without user or password.
fn shown(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// Wait for `f` on the calling thread, which may be inside an async runtime (off its workers):
/// the connection's I/O runs on `rt`, whose timer also gives the deadline.
fn wait<T>(
    rt: &tokio::runtime::Runtime,
    shown: &str,
    f: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let _g = rt.enter();
    match futures::executor::block_on(tokio::time::timeout(DEADLINE, f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.as_db_error().is_some() => Err(ControlError::Internal(format!(
            "state database {shown}: {e}",
            e = e.as_db_error().expect("checked")
        ))),
        Ok(Err(e)) => Err(ControlError::Unavailable(format!(
            "state database {shown}: {e}; the statement is not known to have run"
        ))),
        Err(_) => Err(ControlError::Unavailable(format!(
            "state database {shown} did not answer within {} s",
            DEADLINE.as_secs()
        ))),
    }
}

/// A connection or transaction, with the statements prepared on its connection.
struct Pg<'a, C> {
    client: &'a C,
    rt: &'a tokio::runtime::Runtime,
    shown: &'a str,
    prepared: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient + Sync> Pg<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = wait(self.rt, self.shown, self.client.prepare(sql))?;
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl<C: GenericClient + Sync> Conn for Pg<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        wait(self.rt, self.shown, self.client.execute(&stmt, &params))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = wait(self.rt, self.shown, self.client.query(&stmt, &params))?;
        rows.iter().map(read).collect()
    }
}

fn read(row: &tokio_postgres::Row) -> Result<Row> {
    let bad = |i: usize, e: tokio_postgres::Error| {
        ControlError::Internal(format!("state database: read column {i}: {e}"))
    };
    let mut out = Vec::with_capacity(row.len());
    for (i, c) in row.columns().iter().enumerate() {
        let t = c.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map(Value::from)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(i64::from).into())
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(i64::from).into())
        } else if *t == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i).map(Value::from)
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(i64::from).into())
        } else if *t == Type::VOID {
            Ok(Value::Null)
        } else {
            row.try_get::<_, Option<String>>(i).map(Value::from)
        };
        out.push(v.map_err(|e| bad(i, e))?);
    }
    Ok(Row(out))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::FLOAT8 => (*v as f64).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Real(v) => v.to_sql(ty, out),
            Value::Text(v) => v.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A new, empty database on the test cluster `scripts/test` starts (`FERRY_TEST_POSTGRES_URL`),
/// as a URL. Without the cluster this fails, saying what to run: a test never skips PostgreSQL.
#[cfg(test)]
pub(crate) fn fresh_test_database() -> String {
    let base = match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "FERRY_TEST_POSTGRES_URL is not set: this test runs against PostgreSQL. Run it with \
             scripts/test, or `source .ci/postgres.sh` first"
        ),
    };
    println!("peer: postgres");
    let name = format!("ferry_test_{}", uuid::Uuid::new_v4().simple());
    let create = format!("CREATE DATABASE {name}");
    let admin = base.clone();
    // Its own thread and runtime: the caller may be inside a runtime already.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
            tokio::spawn(connection);
            client.execute(&create, &[]).await.unwrap();
        })
    })
    .join()
    .expect("create a test database");
    let mut url = url::Url::parse(&base).expect("FERRY_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    url.to_string()
}
