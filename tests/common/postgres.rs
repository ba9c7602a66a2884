//! A PostgreSQL server of the test's own, for tests that stop and start the database: made
//! with `initdb` in a temporary folder and run with `pg_ctl` on an ephemeral port, as the
//! `postgres` user (both refuse to run as root). Never the machine's shared cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private cluster; stopped when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a cluster with the binaries in `bin` (`initdb`, `pg_ctl`).
    pub fn start(bin: &Path) -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("mailpush-pg-")
            .tempdir()
            .expect("temp dir");
        let owner = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(
            owner.success(),
            "cannot give the cluster's folder to postgres"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let cluster = PrivatePostgres {
            bin: bin.to_owned(),
            dir,
            port,
        };
        cluster.as_postgres(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D"],
            &[cluster.data()],
        );
        cluster.resume();
        cluster
    }

    /// The URL mailpush connects with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`-m immediate`: connections are cut, as in a crash).
    pub fn stop(&self) {
        self.as_postgres(
            "pg_ctl",
            &["-m", "immediate", "-w", "stop", "-D"],
            &[self.data()],
        );
    }

    /// Starts the server (again) and waits until it takes connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.as_postgres(
            "pg_ctl",
            &["-w", "-t", "20", "-o", &options, "-l"],
            &[log, "start".into(), "-D".into(), self.data()],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, tool: &str, args: &[&str], paths: &[PathBuf]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .args(paths)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "stop", "-D"])
            .arg(self.data())
            .output();
    }
}
