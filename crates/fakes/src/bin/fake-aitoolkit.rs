//! A standalone fake ai-toolkit web UI (`loraforge_fakes::aitoolkit`), for trying the
//! `aitoolkit` backend by hand or in benchmarks.
//!
//! `fake-aitoolkit --port 8675 --root /tmp/aitk --auth TOKEN --python ~/.cache/loraforge/venv-trainer/bin/python --trainer-path trainer`
//! prints `AITOOLKIT_URL=…`, then serves until Ctrl-C or SIGTERM. Jobs run
//! `<python> -m loraforge_trainer train …` with `PYTHONPATH=<trainer-path>`.

use std::path::PathBuf;

use clap::Parser;
use loraforge_fakes::aitoolkit::{FakeAiToolkit, ToolkitConfig, ToolkitTrainer};

#[derive(Parser)]
#[command(about = "A local fake of ostris/ai-toolkit's web UI API that runs loraforge's trainer")]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 8675)]
    port: u16,
    /// Holds datasets/ and output/.
    #[arg(long)]
    root: PathBuf,
    /// AI_TOOLKIT_AUTH: when set, /api/* (but /api/img/* and /api/files/*) needs this token.
    #[arg(long, env = "AI_TOOLKIT_AUTH")]
    auth: Option<String>,
    /// The trainer's Python; without it every job ends `error`.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Folder holding the `loraforge_trainer` package (PYTHONPATH).
    #[arg(long, default_value = "trainer")]
    trainer_path: PathBuf,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut config = ToolkitConfig::new(args.root);
    config.auth = args.auth;
    config.trainer = args.python.map(|program| ToolkitTrainer {
        program,
        args: vec!["-m".to_owned(), "loraforge_trainer".to_owned()],
        env: vec![
            (
                "PYTHONPATH".to_owned(),
                args.trainer_path.display().to_string(),
            ),
            ("HF_HUB_OFFLINE".to_owned(), "1".to_owned()),
        ],
    });
    let fake = FakeAiToolkit::start(config, args.port).await?;
    println!("AITOOLKIT_URL={}", fake.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
