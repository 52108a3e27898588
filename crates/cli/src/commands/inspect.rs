//! `loraforge inspect <FILE.safetensors> [--json]`: the publish-time LoRA check on a local file,
//! memory-mapped so a 200 MB file is scanned without being copied. Exit 0 when the file passes,
//! 1 when it is rejected or malformed, 2 when it cannot be opened.

use std::fs::File;
use std::path::Path;

use loraforge_checks::problem::format_bytes;
use loraforge_checks::{AlphaSource, LoraFormat, LoraReport, LoraRules, inspect_lora};
use serde_json::json;

use super::{EXIT_ACCEPTED, EXIT_REJECTED, EXIT_USAGE, progress};

pub fn run(path: &Path, json_out: bool, rules: &LoraRules) -> i32 {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // SAFETY: the map is read-only and private to this process; if another process truncates
    // the file while we read it the OS may raise SIGBUS, which for a CLI tool is an acceptable
    // crash mode (there is no unsafety toward our own memory). A zero-length file cannot be
    // mapped and is handed over as an empty slice.
    let map = if len == 0 {
        None
    } else {
        // SAFETY: the map is read-only and lives only while the file is inspected; a file
        // changed underneath by another process can at worst make the check report garbage.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return EXIT_USAGE;
            }
        }
    };
    let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
    let spinner = progress(
        None,
        &format!(
            "checking {} ({})",
            path.display(),
            format_bytes(bytes.len() as u64)
        ),
    );
    let result = inspect_lora(bytes, rules);
    spinner.finish_and_clear();
    let shown = path.display().to_string();
    match result {
        Ok(report) => {
            if json_out {
                println!("{}", json!({"file": shown, "ok": true, "report": report}));
            } else {
                print!("{}", render(&shown, &report));
            }
            EXIT_ACCEPTED
        }
        Err(e) => {
            if json_out {
                println!(
                    "{}",
                    json!({"file": shown, "ok": false, "error": {"code": e.code(), "message": e.to_string()}})
                );
            } else {
                println!("{shown}: rejected ({}): {e}", e.code());
            }
            EXIT_REJECTED
        }
    }
}

/// The human-readable report.
pub fn render(file: &str, r: &LoraReport) -> String {
    let mut out = format!("{file}: OK\n");
    let mut field = |k: &str, v: String| out.push_str(&format!("  {k:<10} {v}\n"));
    field("format", format_name(r.format));
    field("modules", r.modules.to_string());
    field("rank", r.rank.to_string());
    let alpha = match (r.alpha, r.alpha_source) {
        (Some(a), AlphaSource::Tensors) => format!("{a} (from .alpha tensors)"),
        (Some(a), _) => format!("{a} (from lora_adapter_metadata)"),
        (None, AlphaSource::Mixed) => format!("mixed: {:?}", r.alphas),
        (None, _) => "unknown".into(),
    };
    field("alpha", alpha);
    field(
        "dtypes",
        r.dtypes
            .iter()
            .map(|(d, n)| format!("{d} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    field(
        "size",
        format!(
            "{} ({} header, {} tensors, {} parameters)",
            format_bytes(r.total_bytes),
            format_bytes(r.header_bytes),
            r.tensors,
            r.parameters
        ),
    );
    if r.other_tensors > 0 {
        field(
            "other",
            format!(
                "{} tensors that are not down/up/alpha (kept)",
                r.other_tensors
            ),
        );
    }
    field(
        "base",
        r.base_model_hint
            .clone()
            .unwrap_or_else(|| "unknown".into()),
    );
    field(
        "trainer",
        r.trainer_hint.clone().unwrap_or_else(|| "unknown".into()),
    );
    field(
        "NaN/Inf",
        if r.values_scanned {
            "none (every float value scanned)".into()
        } else {
            "not scanned".into()
        },
    );
    if r.metadata.is_empty() {
        field("metadata", "none".into());
    } else {
        field("metadata", format!("{} entries", r.metadata.len()));
        for (k, v) in &r.metadata {
            let v: String = v.chars().filter(|c| !c.is_control()).take(120).collect();
            out.push_str(&format!("    {k} = {v}\n"));
        }
    }
    out
}

/// `kohya`, `peft`, `diffusers`: the convention's name as in the JSON output.
fn format_name(f: LoraFormat) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{f:?}"))
}
