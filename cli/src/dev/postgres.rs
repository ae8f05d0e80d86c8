//! `steward dev up --postgres [URL]`: the four services as two replicas
//! each on PostgreSQL, one database per service, each service behind a
//! local TCP balancer on its usual port, so replication can be watched on
//! a laptop (kill a replica; the other carries on).
//!
//! Without a URL a throwaway server of the installed PostgreSQL is made
//! under the dev directory (`postgres/`), kept between runs like the
//! SQLite data and removed by `dev reset`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sqlx::Connection as _;

use crate::SERVICES;

/// Replicas of each service.
pub const REPLICAS: usize = 2;

/// Replica `replica` of the service at `index` in [`SERVICES`]: its gRPC
/// port (the balancer has `base + index`).
pub fn grpc_port(base: u16, index: usize, replica: usize) -> u16 {
    base + 20 + offset(index, replica)
}

/// Its probes' port: the usual one for the first replica, 30 above the
/// base for the second.
pub fn ops_port(base: u16, index: usize, replica: usize) -> u16 {
    match replica {
        0 => base + super::OPS_PORT_OFFSET + offset(index, 0),
        _ => base + 30 + offset(index, replica - 1),
    }
}

fn offset(index: usize, replica: usize) -> u16 {
    u16::try_from(replica * SERVICES.len() + index).unwrap_or(u16::MAX)
}

/// The throwaway server's port.
pub fn local_port(base: u16) -> u16 {
    base + 40
}

/// A PostgreSQL server of the dev environment's own.
pub struct LocalServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl LocalServer {
    /// Makes the cluster under `dir` if it is not there, and starts it on
    /// `port` (loopback only, trust authentication: a dev server).
    pub fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = installed().context(
            "no PostgreSQL found (initdb and pg_ctl on PATH or under /usr/lib/postgresql): \
             install it or pass a server's URL to --postgres",
        )?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let server = Self {
            bin,
            dir: dir.to_owned(),
            port,
        };
        if as_root() {
            // PostgreSQL refuses to run as root: the server is postgres's.
            server.checked(Command::new("chown").args(["-R", "postgres"]).arg(dir))?;
        }
        if !dir.join("data").join("PG_VERSION").exists() {
            server.checked(
                server
                    .command("initdb")
                    .args(["-A", "trust", "-U", "postgres", "-D", "data"]),
            )?;
        }
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300"
        );
        server.checked(
            server
                .command("pg_ctl")
                .args(["-D", "data", "-l", "log", "-w", "-o", &options, "start"]),
        )?;
        Ok(server)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: open sessions are ended).
    pub fn stop(&self) {
        let stopped = self
            .command("pg_ctl")
            .args(["-D", "data", "-m", "fast", "-w", "stop"])
            .output();
        if !stopped.is_ok_and(|out| out.status.success()) {
            eprintln!(
                "the dev PostgreSQL server did not stop; see {}",
                self.dir.join("log").display()
            );
        }
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.current_dir(&self.dir);
        command
    }

    fn checked(&self, command: &mut Command) -> anyhow::Result<()> {
        let out = command.output().context("cannot run PostgreSQL's tools")?;
        if !out.status.success() {
            bail!(
                "{:?} failed: {}{}",
                command.get_program(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest
/// under `/usr/lib/postgresql`.
fn installed() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    });
    on_path.or_else(|| {
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .max()
    })
}

fn as_root() -> bool {
    super::effective_uid().is_ok_and(|uid| uid == 0)
}

/// Creates `steward_<service>` for each service on the server `admin_url`
/// names, if missing, and returns each one's URL.
pub async fn databases(admin_url: &str) -> anyhow::Result<BTreeMap<&'static str, String>> {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .context("cannot connect to the PostgreSQL server given to --postgres")?;
    let mut urls = BTreeMap::new();
    for (name, _) in SERVICES {
        let database = format!("steward_{}", name.replace('-', "_"));
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&database)
                .fetch_optional(&mut admin)
                .await?;
        if exists.is_none() {
            // The name is ours, made of [a-z_]: nothing to quote.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .execute(&mut admin)
                .await
                .with_context(|| format!("cannot create database {database}"))?;
        }
        urls.insert(*name, database_url(admin_url, &database)?);
    }
    admin.close().await?;
    Ok(urls)
}

/// `admin_url` with its database replaced by `database`.
fn database_url(admin_url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = admin_url
        .find("://")
        .context("--postgres takes a URL such as postgres://user@host:5432/postgres")?
        + 3;
    let (head, rest) = admin_url.split_at(scheme_end);
    let (authority, tail) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let query = tail.split_once('?').map(|(_, q)| q);
    Ok(match query {
        Some(query) => format!("{head}{authority}/{database}?{query}"),
        None => format!("{head}{authority}/{database}"),
    })
}

/// Where a URL points, without its user or password: for printing.
pub fn shown(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_the_server_and_its_options() {
        assert_eq!(
            database_url(
                "postgres://u:p@db:5432/postgres?sslmode=require",
                "steward_audit"
            )
            .unwrap(),
            "postgres://u:p@db:5432/steward_audit?sslmode=require"
        );
        assert_eq!(
            database_url("postgresql://db", "steward_inventory").unwrap(),
            "postgresql://db/steward_inventory"
        );
        assert!(database_url("db:5432", "x").is_err());
        assert_eq!(shown("postgres://u:secret@db:5432/postgres?x=1"), "db:5432");
    }

    #[test]
    fn replica_ports_never_meet() {
        let base = 50051;
        let mut seen = std::collections::BTreeSet::new();
        for index in 0..SERVICES.len() {
            assert!(seen.insert(base + u16::try_from(index).unwrap()));
            for replica in 0..REPLICAS {
                assert!(seen.insert(grpc_port(base, index, replica)));
                assert!(seen.insert(ops_port(base, index, replica)));
            }
        }
        assert!(seen.insert(local_port(base)));
    }
}
