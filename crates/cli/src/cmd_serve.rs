//! `arlrr serve`: the reward service for distributed RL engines (OpenRLHF, verl, TRL). Parses
//! the flags, builds the judge and the data, and hands them to the `server` crate.

use anyhow::{Context, Result};
use arl::{ObjectiveKind, SelectorKind, Weights};
use schedule::PhaseConfig;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Rubric data whose prompts the trainer samples (HealthBench, native or WritingBench JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Judge config (TOML); without a `cache` in it, the verdict cache is
    /// `<state-dir>/judge-cache.sqlite`, so a restarted service never pays a verdict twice.
    #[arg(long)]
    judge: PathBuf,
    /// What the scalar reward is: `alternating` (ARL-RR: the active class), `scalarized`
    /// (fixed weights) or `gdpo` (per-class group normalization, summed).
    #[arg(long, value_parser = parse_objective, default_value = "alternating")]
    objective: ObjectiveKind,
    /// `scalarized` weights: `points` (the HealthBench overall score), `equal`, or
    /// `class=weight,...` (missing classes weigh 0).
    #[arg(long, value_parser = parse_weights, default_value = "points")]
    weights: Weights,
    /// Selector of the next class (alternating): round_robin, shuffled, fixed, deficit, ucb,
    /// lookahead.
    #[arg(long, value_parser = parse_selector, default_value = "round_robin")]
    selector: SelectorKind,
    /// Training steps per phase.
    #[arg(long, default_value_t = 5)]
    phase_steps: u64,
    /// `fixed`: the class trained throughout.
    #[arg(long)]
    fixed_class: Option<String>,
    /// `lookahead`: probe steps per candidate the trainer should run (reported in the status).
    #[arg(long, default_value_t = 2)]
    probe_steps: u64,
    /// `lookahead`: probe only the top-m classes by deficit (0 = all).
    #[arg(long, default_value_t = 0)]
    top_m: usize,
    /// `ucb`: exploration constant.
    #[arg(long, default_value_t = 0.5)]
    ucb_c: f64,
    /// Count every N completions graded as one training step (for engines that cannot report
    /// steps; OpenRLHF: rollout_batch_size x n_samples_per_prompt). 0 = steps only from
    /// `POST /v1/schedule/report`.
    #[arg(long, default_value_t = 0)]
    completions_per_step: u64,
    /// Criteria graded per completion: `all`, or `active` (alternating only: the active
    /// class's criteria alone, the judge saving ARL-RR offers; the other classes and the
    /// overall score are answered as not graded).
    #[arg(long, value_parser = parse_grade, default_value = "all")]
    grade: server::GradeScope,
    /// Meta-classes: `axis` (default), `cluster`, `theme`, or a TOML mapping file.
    #[arg(long, default_value = "axis")]
    classes: String,
    /// Class for criteria no rule claims.
    #[arg(long)]
    catch_all: Option<String>,
    /// Folder of the schedule state (and the default judge cache); a restart resumes from it.
    #[arg(long, default_value = "arlrr-serve")]
    state_dir: PathBuf,
    /// Address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Environment variable holding a bearer token every endpoint but /healthz requires
    /// (the token is never taken on the command line, where `ps` shows it).
    #[arg(long)]
    token_env: Option<String>,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 170.0)]
    request_timeout_secs: f64,
    /// Most completions in one request.
    #[arg(long, default_value_t = 8192)]
    max_completions: usize,
    /// Seconds a client may take to send a request's headers; the connection is closed after
    /// (idle keep-alive connections too).
    #[arg(long, default_value_t = 30.0)]
    header_timeout_secs: f64,
    /// Most connections open at once (more wait until one closes); keep it under `ulimit -n`.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a write may wait for the client to read its answer; the connection is closed
    /// after (clients that pipeline requests and never read cannot hold a connection).
    #[arg(long, default_value_t = 30.0)]
    write_timeout_secs: f64,
    /// Seconds a connection with no request being answered may move no byte before it is
    /// closed.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout_secs: f64,
    /// `gdpo`: completions per prompt that form one group, collected across OpenRLHF requests
    /// (OpenRLHF 0.9.1 and later send one completion per request: n_samples_per_prompt).
    /// 0 = a group is a prompt's completions within one request.
    #[arg(long, default_value_t = 0)]
    group_size: usize,
    /// `gdpo` with --group-size: seconds a group waits for its last completion; a group still
    /// short then is normalized as it is.
    #[arg(long, default_value_t = 120.0)]
    group_window_secs: f64,
}

fn parse_objective(s: &str) -> Result<ObjectiveKind, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: use alternating, scalarized or gdpo"))
}

fn parse_grade(s: &str) -> Result<server::GradeScope, String> {
    match s {
        "all" => Ok(server::GradeScope::All),
        "active" => Ok(server::GradeScope::Active),
        _ => Err(format!("`{s}`: use all or active")),
    }
}

fn parse_selector(s: &str) -> Result<SelectorKind, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
        format!(
            "`{s}`: use round_robin, shuffled, fixed, deficit, ucb or lookahead (gradient needs the trainer)"
        )
    })
}

fn parse_weights(s: &str) -> Result<Weights, String> {
    match s {
        "points" => Ok(Weights::Points),
        "equal" => Ok(Weights::Equal),
        table => table
            .split(',')
            .map(|pair| {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}`: expected class=weight"))?;
                let w: f64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{pair}`: the weight is not a number"))?;
                Ok((k.trim().to_string(), w))
            })
            .collect::<Result<_, String>>()
            .map(Weights::Custom),
    }
}

fn class_spec(scheme: &str, catch_all: Option<String>) -> rubric::ClassSpec {
    use rubric::ClassScheme;
    let scheme = match scheme {
        "axis" => ClassScheme::Axis,
        "cluster" => ClassScheme::Cluster,
        "theme" => ClassScheme::Theme,
        file => ClassScheme::Mapping(PathBuf::from(file)),
    };
    rubric::ClassSpec { scheme, catch_all }
}

/// The soft limit on open files (Linux `/proc/self/limits`); `None` where unknown or unlimited.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn run(args: Args) -> Result<()> {
    let data = rubric::load(&args.data)?;
    let mut judge_config = judge::JudgeConfig::load(&args.judge)?;
    if judge_config.cache.is_none() {
        judge_config.cache = Some(args.state_dir.join("judge-cache.sqlite"));
    }
    let judge = judge::from_config(&judge_config)?;
    let token = args.token_env.as_deref().map(server_token).transpose()?;
    let secs =
        |flag: &str, v: f64| rubric::limits::duration_secs(flag, v).map_err(anyhow::Error::msg);
    let limits = server::Limits {
        max_body_bytes: body_bytes(args.max_body_mib)?,
        request_timeout: secs("--request-timeout-secs", args.request_timeout_secs)?,
        max_completions: args.max_completions,
        header_timeout: secs("--header-timeout-secs", args.header_timeout_secs)?,
        max_connections: args.max_connections,
        write_timeout: secs("--write-timeout-secs", args.write_timeout_secs)?,
        idle_timeout: secs("--idle-timeout-secs", args.idle_timeout_secs)?,
    };
    let group_window = secs("--group-window-secs", args.group_window_secs)?;
    anyhow::ensure!(
        (1..=MAX_CONNECTIONS).contains(&args.max_connections),
        "--max-connections must be in 1..={MAX_CONNECTIONS}, got {}",
        args.max_connections
    );
    anyhow::ensure!(
        args.max_completions > 0,
        "--max-completions must be at least 1"
    );
    // the listener, the judge cache and the runtime keep a few descriptors of their own
    let reserved = 64;
    if let Some(fds) = open_files_limit().filter(|&n| args.max_connections as u64 + reserved > n) {
        eprintln!(
            "arlrr serve: warning: --max-connections {} does not fit `ulimit -n` {fds}: past \
             about {} connections new ones fail until some close; raise `ulimit -n` or lower \
             --max-connections",
            args.max_connections,
            fds.saturating_sub(reserved)
        );
    }
    let service = server::Service::new(server::ServiceConfig {
        data,
        classes: class_spec(&args.classes, args.catch_all),
        judge: Arc::from(judge),
        judge_cached: true,
        retries: judge_config.retries(),
        objective: args.objective,
        weights: args.weights,
        schedule: server::ScheduleSettings {
            objective: args.objective,
            phases: PhaseConfig {
                length: args.phase_steps,
                selector: args.selector,
                fixed_class: args.fixed_class,
                probe_steps: args.probe_steps,
                top_m: args.top_m,
                ucb_c: args.ucb_c,
                ..PhaseConfig::default()
            },
            completions_per_step: args.completions_per_step,
        },
        state_dir: args.state_dir.clone(),
        token,
        limits,
        grade: args.grade,
        groups: server::GroupSettings {
            size: args.group_size,
            window: group_window,
        },
    })?;
    let status = service.status();
    eprintln!(
        "arlrr serve: {} examples, classes [{}], objective {:?}{}; state in {}; auth {}",
        service.data().len(),
        service.class_names().join(", "),
        status.objective,
        status
            .active_class
            .as_deref()
            .map(|c| format!(", step {}, active class `{c}`", status.step))
            .unwrap_or_default(),
        args.state_dir.display(),
        if args.token_env.is_some() {
            "bearer token"
        } else {
            "none"
        },
    );
    crate::serve_http(
        &args.host,
        args.port,
        |addr| format!("arlrr serve: listening on http://{addr}"),
        |listener| async move {
            let stop = stop_signal()?;
            server::conn::serve(listener, service, stop).await?;
            eprintln!("arlrr serve: stopped");
            Ok(())
        },
    )
}

/// Most connections `--max-connections` may allow (each needs a file descriptor).
const MAX_CONNECTIONS: usize = 1 << 20;

/// Largest body `--max-body-mib` may allow: 4 GiB, far above any batch of rewards.
const MAX_BODY_MIB: usize = 4096;

/// `--max-body-mib` in bytes, in range (a huge value must not wrap to 0 and refuse everything).
fn body_bytes(mib: usize) -> Result<usize> {
    anyhow::ensure!(
        (1..=MAX_BODY_MIB).contains(&mib),
        "--max-body-mib must be in 1..={MAX_BODY_MIB}, got {mib}"
    );
    Ok(mib << 20)
}

/// The bearer token from the environment variable `var`, without surrounding whitespace (a
/// token written with `echo` keeps its newline; the client's is trimmed the same way).
fn server_token(var: &str) -> Result<String> {
    let value = std::env::var(var)
        .with_context(|| format!("--token-env {var}: the variable is unset or not UTF-8"))?;
    let token = value.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "--token-env {var}: the variable is empty"
    );
    anyhow::ensure!(
        token.chars().all(|c| c.is_ascii_graphic()),
        "--token-env {var}: the token holds a space, a control character or a non-ASCII \
         character, which an `Authorization: Bearer` header cannot carry"
    );
    Ok(token.to_string())
}

/// Resolves at the first SIGTERM or SIGINT: the service then stops accepting connections and
/// answers the requests in flight before it exits.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("arlrr serve: stopping: no new connections; answering the requests in flight");
    })
}
