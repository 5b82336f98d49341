//! Baton's command line (the `baton` binary runs [`main`]).

use std::path::PathBuf;

use crate::config::ServerConfig;
use crate::tools::inspect;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a coordination service speaking the ZooKeeper protocol",
    long_about = "Without a subcommand, runs a single Baton server (by default on 127.0.0.1:2181 with its data in ./baton-data).\n\n--config FILE reads settings from a TOML file whose keys are the flag names (client_addr = \"127.0.0.1:2181\", tick_ms = 2000, four_letter_words = [\"ruok\", \"mntr\"], disable_ttl = true, ...); flags given on the command line override it.",
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerConfig,
    /// TOML file of settings (keys are the flag names); command-line flags override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Check the settings (the flags and the --config file) and exit: prints them and exits
    /// 0 when they are valid, names the setting and its value and exits 2 when not.
    #[arg(long)]
    check_config: bool,
    /// Log lines on stderr as `text` (colours only on a terminal) or `json` (one object per
    /// line, for log shippers).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local ensemble on 127.0.0.1 (three voters by default: clients on ports
    /// 2181-2183, data under ./baton-dev), stopping all of it on Ctrl-C.
    Dev(crate::tools::dev::DevConfig),
    /// Inspect a write-ahead log directory.
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
    /// Inspect a snapshot directory.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand)]
enum WalAction {
    /// Verify every record's length and checksum; report a torn tail or corruption (with
    /// file and offset). Exits non-zero on corruption. Never modifies the files.
    Verify { dir: PathBuf },
    /// Print the records, decoded.
    Dump {
        dir: PathBuf,
        /// Only records above this zxid (decimal or 0x-hex).
        #[arg(long, default_value = "0")]
        after: String,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// List snapshots and say which one recovery would load.
    List { dir: PathBuf },
}

fn parse_zxid(text: &str) -> anyhow::Result<baton_engine::Zxid> {
    let value = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .with_context(|| format!("not a zxid: {text}"))?;
    Ok(baton_engine::Zxid(value))
}

/// Parses the command line and runs it: a server by default, or an inspection tool.
pub fn main() -> anyhow::Result<()> {
    let (args, file) = with_config_file(std::env::args().collect())?;
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(file) = &file {
                if let Some(key) = file.key_of(&e) {
                    eprintln!("baton: config file {}: key {key}:", file.path);
                }
            }
            e.exit()
        }
    };
    if cli.check_config {
        return check_config(&cli);
    }
    // Every line names its server when it runs in an ensemble (several servers' logs often
    // end up in one place); colours only on a terminal.
    let tag =
        (cli.command.is_none() && !cli.server.peers.is_empty()).then(|| format!("server {}", cli.server.server_id));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,glommio=warn"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .event_format(Tagged { tag, inner: tracing_subscriber::fmt::format() })
            .with_writer(std::io::stderr)
            .init(),
        // No prefix, which would break the JSON: shippers label lines by where they came from.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .init(),
    }
    let out = match cli.command {
        None => return serve(cli.server),
        Some(Command::Dev(dev)) => return crate::tools::dev::run(dev),
        Some(Command::Wal { action: WalAction::Verify { dir } }) => inspect::verify_wal(&dir)?,
        Some(Command::Wal { action: WalAction::Dump { dir, after, limit } }) => {
            inspect::dump_wal(&dir, parse_zxid(&after)?, limit)?
        }
        Some(Command::Snapshot { action: SnapshotAction::List { dir } }) => inspect::list_snapshots(&dir)?,
    };
    print!("{out}");
    Ok(())
}

/// `--check-config`: the settings are parsed by now (a bad value already stopped the
/// command, naming it); checks how they fit together and prints them.
fn check_config(cli: &Cli) -> anyhow::Result<()> {
    if let Err(why) = cli.server.validate() {
        eprintln!("baton: invalid configuration: {why}");
        std::process::exit(2);
    }
    println!("baton: the configuration is valid");
    println!("{:#?}", cli.server);
    Ok(())
}

/// The settings a `--config` file gave, to name the key a refused flag came from.
struct ConfigFile {
    path: String,
    /// (key, the flag it became) for each key of the file.
    keys: Vec<(String, String)>,
}

impl ConfigFile {
    /// The file's key behind the argument clap refused, if it came from the file.
    fn key_of(&self, error: &clap::Error) -> Option<String> {
        let arg = error.get(clap::error::ContextKind::InvalidArg)?.to_string();
        let flag = arg.split([' ', '=']).next().unwrap_or_default();
        let value = error.get(clap::error::ContextKind::InvalidValue).map(|v| v.to_string());
        let (key, _) = self.keys.iter().find(|(_, f)| f == flag)?;
        Some(match value {
            Some(v) => format!("{key} = {v:?}"),
            None => key.clone(),
        })
    }
}

/// Expands `--config FILE` into flags placed before the command line's own, so that flags
/// given explicitly win (the command allows an argument to override itself).
fn with_config_file(args: Vec<String>) -> anyhow::Result<(Vec<String>, Option<ConfigFile>)> {
    let position = args.iter().position(|a| a == "--config" || a.starts_with("--config="));
    let Some(i) = position else { return Ok((args, None)) };
    let path = match args[i].strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None => args.get(i + 1).cloned().context("--config needs a file")?,
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing config file {path}"))?;
    let mut flags = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        keys.push((key.clone(), flag.clone()));
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => flags.extend([flag, s]),
            toml::Value::Integer(n) => flags.extend([flag, n.to_string()]),
            toml::Value::Array(items) => {
                // The flag once per item (list flags take repeats), so that an item may hold
                // a comma (a SASL password); an empty list is the flag with an empty value
                // (`four_letter_words = []` turns every word off).
                if items.is_empty() {
                    flags.extend([flag.clone(), String::new()]);
                }
                for item in items {
                    flags.extend([flag.clone(), item.as_str().map(str::to_string).unwrap_or_else(|| item.to_string())]);
                }
            }
            other => anyhow::bail!("config key {key}: unsupported value {other}"),
        }
    }
    let mut out = vec![args.first().cloned().unwrap_or_else(|| "baton".into())];
    out.extend(flags);
    out.extend(args.into_iter().skip(1));
    Ok((out, Some(ConfigFile { path, keys })))
}

fn serve(config: ServerConfig) -> anyhow::Result<()> {
    config.validate().map_err(|e| anyhow::anyhow!("bad ensemble settings: {e}"))?;
    let memlock = baton_engine::sys::raise_memlock_limit();
    tracing::debug!(memlock, "RLIMIT_MEMLOCK");
    // Fail-stop: a panic on any shard ends the process (recovery then starts from what is
    // durable) instead of leaving a server whose other shards still accept clients.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("baton: a thread panicked; stopping the whole process");
        std::process::abort();
    }));
    let data_dir = config.data_dir.clone();
    let ensemble = (!config.peers.is_empty()).then(|| {
        let role = if config.is_observer() { "observer" } else { "voter" };
        format!("{} ({role}) of an ensemble of {}", config.server_id, config.peers.len())
    });
    let shards = crate::startup::shard_count(config.cores);
    let in_ensemble = config.peers.len() > 1;
    let secure = config.secure_client_addr.0.is_some();
    crate::startup::run(config, move |addr| {
        // With the plain port off, the TLS port's line (printed before) says where.
        let on = match addr {
            Some(a) => a.to_string(),
            None if secure => "the TLS port alone".to_string(),
            None => "no port (--client-addr off)".to_string(),
        };
        match &ensemble {
            Some(e) => {
                println!("baton: server {e}; serving ZooKeeper clients on {on} (while it has a leader) with {shards} shards, data in {}", data_dir.display())
            }
            None => {
                println!("baton: serving ZooKeeper clients on {on} with {shards} shards, data in {}", data_dir.display())
            }
        }
        tracing::info!(addr = %on, "ready");
    })
    .map_err(|e| match e {
        e @ crate::startup::ServeError::Executor(_) => {
            anyhow::Error::new(e).context("baton stopped (glommio needs io_uring; see README on `ulimit -l`)")
        }
        e if in_ensemble && e.damaged_data() => anyhow::Error::new(e).context(
            "baton stopped: its data is damaged. Start it with --resync to move its log and snapshots aside \
             and be synchronised from the leader (the other servers must make a quorum)",
        ),
        e => anyhow::Error::new(e).context("baton stopped"),
    })?;
    Ok(())
}

/// Log lines prefixed with the server they come from.
struct Tagged<F> {
    tag: Option<String>,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Tagged<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if let Some(tag) = &self.tag {
            write!(writer, "[{tag}] ")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_becomes_flags_before_the_command_lines_own() {
        let path = std::env::temp_dir().join(format!("baton-config-{}.toml", std::process::id()));
        let text =
            "tick_ms = 2000\nfour_letter_words = []\nsasl_users = [\"bob:pa,ss\", \"eve:x\"]\nread_only_mode = true\n";
        std::fs::write(&path, text).expect("write the file");
        let args =
            vec!["baton".to_string(), "--config".into(), path.display().to_string(), "--tick-ms".into(), "500".into()];
        let (flags, file) = with_config_file(args).expect("expands");
        let file = file.expect("a file was given");
        let refused = Cli::try_parse_from(["baton", "--tick-ms", "soon"]).err().expect("not a number");
        assert_eq!(file.key_of(&refused).as_deref(), Some("tick_ms = \"soon\""), "{refused}");
        let _ = std::fs::remove_file(&path);
        let joined = flags.join(" ");
        for expected in
            ["--four-letter-words  ", "--sasl-users bob:pa,ss --sasl-users eve:x", "--read-only-mode", "--tick-ms 2000"]
        {
            assert!(joined.contains(expected), "{expected:?} in {joined:?}");
        }
        assert!(joined.ends_with("--tick-ms 500"), "the command line comes last and wins: {joined}");
    }
}
