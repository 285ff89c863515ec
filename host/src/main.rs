//! The `drover` binary.

use clap::{Parser, Subcommand};
use drover::config::{LogFormat, ServeArgs};
use drover::plugins::device_type::{delivery_name, kind_name};
use drover::plugins::{Described, Limits, LoadOptions, Manifest, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "drover", version, about = "Device-management server with WebAssembly device-type plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Print a component's manifest, imports and what its describe() says.
    Inspect {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Plugin { command: PluginCommand::Inspect { file, json } } => inspect(file, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    init_tracing(config.log_format);
    tracing::info!(data_dir = %config.data_dir.display(), database = %config.database_url, "starting drover {}", env!("CARGO_PKG_VERSION"));
    let server = drover::server::Server::start(&config).await?;
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn inspect(file: PathBuf, json: bool) -> anyhow::Result<()> {
    let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let manifest = Manifest::from_component(&bytes)?;
    // Inspection grants what the manifest asks for, so describe() can run; installing
    // on a server is where an admin decides grants.
    let runtime = Runtime::new(Limits::default(), None)?;
    let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
    let plugin = runtime.load(&bytes, options).await?;
    let describe = match &plugin.described {
        Described::DeviceType(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description,
            "delivery": i.delivery.iter().map(|d| delivery_name(*d)).collect::<Vec<_>>(),
            "content_types": i.content_types,
            "max_operations_per_message": i.max_operations_per_message,
            "operations": i.operations.iter().map(|o| serde_json::json!({
                "code": o.code, "kind": kind_name(o.kind), "description": o.description,
                "payload_schema": o.payload_schema.as_deref().and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
            })).collect::<Vec<_>>(),
        }),
        Described::Transport(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description, "hosts": i.hosts,
        }),
        Described::PolicyRule(i) => serde_json::json!({
            "name": i.name, "version": i.version, "description": i.description,
            "params_schema": i.params_schema.as_deref().and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
        }),
    };
    if json {
        let out = serde_json::json!({
            "file": file, "sha256": plugin.sha256, "size": plugin.size, "manifest": plugin.manifest,
            "imports": plugin.imports, "describe": describe,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let m = &plugin.manifest;
    println!("{} {} ({}), publisher {}", m.name, m.version, m.kind, m.publisher);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("file      {} ({} bytes)", file.display(), plugin.size);
    println!("sha256    {}", plugin.sha256);
    println!("contract  drover:plugin@{}", m.contract);
    let caps: Vec<String> = m.capabilities.iter().map(|c| c.to_string()).collect();
    println!("requests  {}", if caps.is_empty() { "no capabilities".into() } else { caps.join(", ") });
    println!("imports   {}", plugin.imports.join(", "));
    if let Described::DeviceType(i) = &plugin.described {
        println!(
            "delivery  {}",
            describe["delivery"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
        println!("content   {}", i.content_types.join(", "));
        println!("operations:");
        for o in &i.operations {
            let payload = if o.payload_schema.is_some() { "payload" } else { "-" };
            println!("  {:<24} {:<8} {:<8} {}", o.code, kind_name(o.kind), payload, o.description);
        }
    } else {
        println!("describe  {}", serde_json::to_string(&describe)?);
    }
    Ok(())
}
