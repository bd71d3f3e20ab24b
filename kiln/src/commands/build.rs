//! `kiln build` and `kiln debug graph`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_builder::image::Format;
use kiln_builder::progress::Progress;
use kiln_builder::remote::Remote;
use kiln_builder::run::Sandbox;
use kiln_builder::{BuildRequest, Engine, Error, Output, OutputSpec, Result};
use kiln_cache::{Compression, Store};
use kiln_frontend::lint::Scope;
use kiln_registry::Reference;

use super::values::{self, parse_size};
use crate::bail;
use crate::cli::{BuildArgs, DockerfileArgs};
use crate::progress::{Display, Mode};
use kiln_builder::progress::human_size;

/// The library's view of the Dockerfile options.
fn dockerfile_args(args: &DockerfileArgs) -> kiln_builder::dockerfile::DockerfileArgs {
    kiln_builder::dockerfile::DockerfileArgs {
        context: args.context.clone(),
        file: args.file.clone(),
        target: args.target.clone(),
        build_args: args.build_args.clone(),
        platform: args.platform.clone(),
        network: None,
        ..Default::default()
    }
}

/// `kiln debug graph`: the build graph the Dockerfile lowers to, as JSON on
/// standard output.
pub fn graph(store: &Store, args: &DockerfileArgs) -> Result<()> {
    let mut images = kiln_builder::base_images::StoreOrUnknownImages { store };
    let progress = Progress::new(Arc::new(Display::new(Mode::Plain)));
    let plan =
        kiln_builder::dockerfile::load(&dockerfile_args(args), &[], &[], &mut images, &progress)?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &plan.graph)?;
    writeln!(stdout)?;
    Ok(())
}

/// `kiln build`: the request the flags make, the build, its digest on
/// standard output (standard error when an archive is written there), and
/// garbage collection when asked. Returns the exit code: 1 when
/// `--call=check` finds something.
pub fn build(
    store: &Store,
    remote: &Remote,
    runtime: Option<PathBuf>,
    args: &BuildArgs,
) -> Result<u8> {
    let call = if args.check {
        parse_call("check")?
    } else {
        parse_call(&args.call)?
    };
    if let Some(query) = call {
        // The Dockerfile of a remote or archived context is read where
        // kiln fetched or unpacked it, as the build would.
        let request = build_request(args)?;
        let mut dockerfile = request.dockerfile.clone();
        let _fetched = kiln_builder::contexts::resolve_main_context(
            &mut dockerfile,
            store,
            remote,
            &request.secrets,
        )?;
        return match query {
            Query::Targets { json } => targets(&dockerfile, json).map(|()| 0),
            Query::Check { json } => check(store, &dockerfile, json),
            Query::Outline { json } => outline(&dockerfile, json).map(|()| 0),
        };
    }
    let limit = args
        .gc_keep_storage
        .as_deref()
        .map(parse_size)
        .transpose()?;
    let request = build_request(args)?;
    let mode = if args.quiet {
        Mode::Quiet
    } else {
        Mode::parse(&args.progress)?
    };
    let display = Arc::new(Display::new(mode));
    let progress = Arc::new(Progress::new(display.clone()));
    if !rustix::process::geteuid().is_root() {
        bail!(
            "kiln build must run as root: layers record the owner of every file, and only \
             root can create files owned by others (run it with sudo)"
        );
    }
    let interrupt = crate::signals::install()?;
    let sandbox = Sandbox::new(store, runtime);
    let engine = Engine {
        store,
        remote,
        sandbox: &sandbox,
        interrupt: &interrupt,
        progress: &progress,
    };
    let built = kiln_builder::build(&engine, &request);
    display.finish();
    let built = built?;
    if mode != Mode::Quiet {
        summarize_warnings(&built.warnings);
    }
    if let Some(digest) = built.image {
        if built.on_stdout {
            eprintln!("{digest}");
        } else {
            println!("{digest}");
        }
    }
    if let Some(limit) = limit {
        // After the build has let go of the store: a collection waits for
        // no one and never removes what the build was still naming.
        if let Err(e) = collect_garbage(store, limit) {
            eprintln!("warning: garbage collection failed: {e}");
        }
    }
    Ok(0)
}

/// What `--call` asks for instead of a build.
enum Query {
    Targets { json: bool },
    Check { json: bool },
    Outline { json: bool },
}

/// `--call`: a build (`None`) or what else it asks for.
fn parse_call(spec: &str) -> Result<Option<Query>> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or_default();
    let mut json = false;
    for option in parts {
        match option {
            "format=json" => json = true,
            "format=text" => json = false,
            other => bail!("invalid --call option {other:?}: format=json or format=text"),
        }
    }
    match name {
        "build" if !json => Ok(None),
        "build" => {
            bail!("--call=build takes no format (format= is for targets, check and outline)")
        }
        "targets" => Ok(Some(Query::Targets { json })),
        "check" => Ok(Some(Query::Check { json })),
        "outline" => Ok(Some(Query::Outline { json })),
        other => bail!("invalid --call {other:?}: build, check, outline or targets"),
    }
}

/// `--call=targets`: the Dockerfile's stages, as BuildKit lists them.
fn targets(args: &kiln_builder::dockerfile::DockerfileArgs, json: bool) -> Result<()> {
    let targets = kiln_builder::dockerfile::targets(args)?;
    let mut stdout = std::io::stdout().lock();
    if json {
        /// BuildKit's JSON of a target list (a `json!` value would sort
        /// each target's fields).
        #[derive(serde::Serialize)]
        struct List<'a> {
            targets: &'a [kiln_frontend::targets::Target],
        }
        serde_json::to_writer_pretty(&mut stdout, &List { targets: &targets })?;
        writeln!(stdout)?;
        writeln!(stdout)?;
        return Ok(());
    }
    let names: Vec<String> = targets
        .iter()
        .map(|target| match (target.name.as_str(), target.default) {
            ("", true) => "(default)".to_string(),
            (name, true) => format!("{name} (default)"),
            (name, false) => name.to_string(),
        })
        .collect();
    let width = names
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("TARGET".len());
    writeln!(stdout, "{:<width$} DESCRIPTION", "TARGET")?;
    for (name, target) in names.iter().zip(&targets) {
        let line = format!("{name:<width$} {}", target.description);
        writeln!(stdout, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `--call=outline`: the target's build arguments, secrets and SSH
/// sockets, as buildx prints them.
fn outline(args: &kiln_builder::dockerfile::DockerfileArgs, json: bool) -> Result<()> {
    let outline = kiln_builder::dockerfile::outline(args)?;
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &outline)?;
        writeln!(stdout)?;
        return Ok(());
    }
    // An unnamed target without a description has no header, as in buildx.
    if !outline.name.is_empty() || !outline.description.is_empty() {
        let target = if outline.name.is_empty() {
            "(default)"
        } else {
            &outline.name
        };
        let mut header = vec![vec!["TARGET:".to_string(), target.to_string()]];
        if !outline.description.is_empty() {
            header.push(vec![
                "DESCRIPTION:".to_string(),
                outline.description.clone(),
            ]);
        }
        write_table(&mut stdout, &header, 1)?;
        writeln!(stdout)?;
    }
    if !outline.args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".into(),
            "VALUE".into(),
            "DESCRIPTION".into(),
        ]];
        rows.extend(
            outline
                .args
                .iter()
                .map(|arg| vec![arg.name.clone(), arg.value.clone(), arg.description.clone()]),
        );
        write_table(&mut stdout, &rows, 3)?;
        writeln!(stdout)?;
    }
    for (title, mounted) in [("SECRET", &outline.secrets), ("SSH", &outline.ssh)] {
        if mounted.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_string(), "REQUIRED".to_string()]];
        rows.extend(mounted.iter().map(|m| {
            let required = if m.required { "true" } else { "" };
            vec![m.name.clone(), required.to_string()]
        }));
        write_table(&mut stdout, &rows, 3)?;
        writeln!(stdout)?;
    }
    Ok(())
}

/// Rows in columns as wide as their widest cell plus `gap` spaces, with
/// no trailing space.
fn write_table(out: &mut dyn Write, rows: &[Vec<String>], gap: usize) -> Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            line.push_str(cell);
            let padding = widths[column] - cell.chars().count() + gap;
            line.push_str(&" ".repeat(padding));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `--call=check`: the build checks of every stage, printed with the
/// lines they are about; exit code 1 when they find something, an error
/// when `error=true` says findings fail or the Dockerfile cannot be built.
fn check(store: &Store, args: &kiln_builder::dockerfile::DockerfileArgs, json: bool) -> Result<u8> {
    let checked = kiln_builder::dockerfile::check(args, store, Scope::AllStages)?;
    let findings = &checked.report.findings;
    let mut stdout = std::io::stdout().lock();
    if json {
        let warnings: Vec<serde_json::Value> = findings
            .iter()
            .map(|finding| {
                let line = serde_json::json!({ "line": finding.line });
                serde_json::json!({
                    "ruleName": finding.rule.name(),
                    "description": finding.rule.description(),
                    "detail": finding.message,
                    "location": { "ranges": [{ "start": line, "end": line }] },
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut stdout, &serde_json::json!({ "warnings": warnings }))?;
        writeln!(stdout)?;
    } else {
        for finding in findings {
            write!(stdout, "{}", describe_finding(finding, &checked.source))?;
        }
    }
    stdout.flush()?;
    if let Some(violation) = checked.report.violation(&checked.source) {
        return Err(violation.into());
    }
    if let Some(error) = checked.error {
        return Err(error);
    }
    if !findings.is_empty() {
        return Ok(1);
    }
    if !json {
        writeln!(stdout, "Check complete, no warnings found.")?;
    }
    Ok(0)
}

/// After a build, the build checks' findings shown before its first step,
/// summed up as buildx does.
fn summarize_warnings(findings: &[String]) {
    match findings.len() {
        0 => return,
        1 => eprintln!("1 warning found:"),
        count => eprintln!("{count} warnings found:"),
    }
    for finding in findings {
        eprintln!(" - {finding}");
    }
}

/// A finding as `--call=check` prints it: the rule and what it asks, then
/// the file, line and message, and the line itself.
fn describe_finding(
    finding: &kiln_frontend::lint::Finding,
    source: &kiln_frontend::ast::Source,
) -> String {
    let number = finding.line.to_string();
    let gutter = " ".repeat(number.len());
    format!(
        "WARNING: {} - {}\n{}:{}: {}\n{gutter} |\n{number} | {}\n{gutter} |\n\n",
        finding.rule.name(),
        finding.rule.description(),
        source.name(),
        finding.line,
        finding.message,
        source.line(finding.line).replace('\t', " "),
    )
}

/// The compression `--compression` and `-o compression=,compression-level=`
/// ask for together (the output's fields win).
fn compression(flag: &str, output: &OutputSpec) -> String {
    let flag_name = flag.split(':').next().unwrap_or(flag);
    match (&output.compression, &output.compression_level) {
        (None, None) => flag.to_string(),
        (Some(name), None) => name.clone(),
        (name, Some(level)) => format!("{}:{level}", name.as_deref().unwrap_or(flag_name)),
    }
}

fn build_request(args: &BuildArgs) -> Result<BuildRequest> {
    let mut request = BuildRequest::new(dockerfile_args(&args.dockerfile));
    request.labels = args.labels.clone();
    request.allow = args.allow.clone();
    let output = OutputSpec::parse(args.output.as_deref())?;
    request.tags = args
        .tags
        .iter()
        .chain(&output.names)
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    request.format = match (args.format.as_deref(), output.oci_mediatypes) {
        (Some(format), _) => Some(Format::parse(format)?),
        (None, Some(true)) => Some(Format::Oci),
        (None, Some(false)) => Some(Format::Docker),
        (None, None) => None,
    };
    request.compression =
        Compression::parse(&compression(&args.compression, &output)).map_err(Error::Invalid)?;
    request.force_compression = output.force_compression;
    request.push = args.push || output.push;
    request.output = output.output;
    request.pull = args.pull;
    request.metadata_file = args.metadata_file.clone();
    request.iidfile = args.iidfile.clone();
    request.cache_to = args
        .cache_to
        .iter()
        .map(|spec| kiln_builder::cache_io::parse_cache_to(spec))
        .collect::<Result<Vec<_>>>()?;
    request.cache_from = args
        .cache_from
        .iter()
        .map(|spec| kiln_builder::cache_io::parse_cache_from(spec))
        .collect::<Result<Vec<_>>>()?;
    match args.jobs {
        Some(0) => bail!("--jobs must be at least 1"),
        Some(jobs) => request.jobs = jobs,
        None => {}
    }
    request.explain = args.explain;
    request.no_cache = args.no_cache;
    request.no_cache_stages = args
        .no_cache_filter
        .iter()
        .flat_map(|names| names.split(','))
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    request.source_date_epoch = args.source_date_epoch.clone();
    request.dockerfile.network = args
        .network
        .as_deref()
        .map(values::parse_network)
        .transpose()?;
    for spec in &args.add_hosts {
        request
            .resources
            .extra_hosts
            .push(values::parse_host(spec)?);
    }
    for spec in &args.ulimits {
        request.resources.ulimits.push(values::parse_ulimit(spec)?);
    }
    request.resources.shm_size = args
        .shm_size
        .as_deref()
        .map(values::parse_memory)
        .transpose()?;
    if args.load && request.output != Output::Store {
        bail!("--load puts the image in the store: leave out --output, or --load");
    }
    for spec in &args.secrets {
        let (id, source) = kiln_builder::secrets::parse_secret(spec)?;
        request.secrets.secrets.insert(id, source);
    }
    for spec in &args.build_contexts {
        request
            .named_contexts
            .push(kiln_builder::contexts::NamedContextSpec::parse(spec)?);
    }
    for spec in &args.ssh {
        let (id, socket) = kiln_builder::secrets::parse_ssh(spec)?;
        request.secrets.ssh.insert(id, socket);
    }
    Ok(request)
}

/// The automatic policy of `--gc-keep-storage`: after a build, when the
/// build cache (layers only the cache keeps, and cache mounts) has grown past
/// the limit and no other process uses the store, the least recently used
/// of it goes until it fits.
fn collect_garbage(store: &Store, limit: u64) -> Result<()> {
    let usage = store.disk_usage()?;
    if usage.cache_blobs + usage.cache_snapshots + usage.cache_mounts <= limit {
        return Ok(());
    }
    let pruned = store.prune_if_idle(&kiln_cache::PrunePolicy {
        all: false,
        unused_for: None,
        keep_storage: Some(limit),
    })?;
    report_collected(pruned);
    Ok(())
}

fn report_collected(pruned: Option<kiln_cache::Pruned>) {
    if let Some(pruned) = pruned.filter(|p| p.freed > 0) {
        eprintln!(
            "garbage collection (--gc-keep-storage): freed {}",
            human_size(pruned.freed)
        );
    }
}
