//! `loraforge check-dataset <DIR|FILES…>`: the server's dataset check on local files, with a
//! table of per-image results. Exit 0 when the set would be accepted, 1 when not, 2 when the
//! arguments name nothing to check.

use std::path::{Path, PathBuf};

use loraforge_checks::problem::format_bytes;
use loraforge_checks::{DatasetReport, ImageReport, InputImage, check_dataset};
use loraforge_domain::DatasetRules;

use super::{EXIT_ACCEPTED, EXIT_REJECTED, EXIT_USAGE, progress};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Runs the command; returns the exit status.
pub fn run(paths: &[PathBuf], rules: &DatasetRules) -> i32 {
    match load_and_check(paths, rules) {
        Ok((_, report)) => {
            print!("{}", render(&report));
            if report.accepted {
                EXIT_ACCEPTED
            } else {
                EXIT_REJECTED
            }
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            EXIT_USAGE
        }
    }
}

/// Reads the images `paths` name and checks them as the server would. `Err` is a usage error
/// (nothing to check, unreadable file) with its message.
pub(crate) fn load_and_check(
    paths: &[PathBuf],
    rules: &DatasetRules,
) -> Result<(Vec<InputImage>, DatasetReport), String> {
    let files = collect(paths)?;
    let bar = progress(Some(files.len() as u64), "reading");
    let mut inputs = Vec::with_capacity(files.len());
    for (path, name) in &files {
        match std::fs::read(path) {
            Ok(bytes) => inputs.push(InputImage::new(name.clone(), bytes)),
            Err(e) => {
                bar.finish_and_clear();
                return Err(format!("cannot read {}: {e}", path.display()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spinner = progress(None, &format!("checking {} images", inputs.len()));
    let report = check_dataset(&inputs, rules);
    spinner.finish_and_clear();
    Ok((inputs, report))
}

/// Files to check with their display names: a directory contributes its image files (by
/// extension, sorted by name); a file named on the command line is checked whatever its name.
fn collect(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, String> {
    if paths.is_empty() {
        return Err(
            "name a folder of images or image files; see loraforge check-dataset --help".into(),
        );
    }
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && has_image_extension(f))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{} holds no .jpg, .jpeg, .png or .webp files",
                    p.display()
                ));
            }
            found.sort();
            files.extend(found.into_iter().map(|f| {
                let name = f.file_name().map_or_else(
                    || f.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (f, name)
            }));
        } else {
            files.push((p.clone(), p.display().to_string()));
        }
    }
    Ok(files)
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The table and the summary, as printed.
pub fn render(report: &DatasetReport) -> String {
    let header = ["file", "format", "size", "dimensions", "result", "problems"];
    let rows: Vec<[String; 6]> = report.images.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()).take(5) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate().take(5) {
            s.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        s.push_str(cells[5]);
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    out.push('\n');
    for p in &report.errors {
        out.push_str(&format!("error: {}\n", p.message));
    }
    for p in &report.warnings {
        out.push_str(&format!("warning: {}\n", p.message));
    }
    let failed = report.images.iter().filter(|i| !i.ok()).count();
    let n = report.images.len();
    out.push_str(&if report.accepted {
        format!(
            "accepted: {n} images pass every check ({} warnings)\n",
            report.warnings.len()
                + report
                    .images
                    .iter()
                    .map(|i| i.warnings.len())
                    .sum::<usize>()
        )
    } else {
        format!(
            "rejected: {failed} of {n} images failed, {} problems with the set as a whole\n",
            report.errors.len()
        )
    });
    out
}

fn row(i: &ImageReport) -> [String; 6] {
    let dims = match (i.width, i.height) {
        (Some(w), Some(h)) if i.orientation != 1 => format!("{w}×{h} (EXIF {})", i.orientation),
        (Some(w), Some(h)) => format!("{w}×{h}"),
        _ => "-".into(),
    };
    let problems: Vec<&str> = i
        .errors
        .iter()
        .chain(&i.warnings)
        .map(|p| p.message.as_str())
        .collect();
    [
        i.file_name.clone(),
        i.format.map_or("-", |f| f.as_str()).to_owned(),
        format_bytes(i.bytes),
        dims,
        if i.ok() { "ok".into() } else { "FAIL".into() },
        problems.join("; "),
    ]
}
