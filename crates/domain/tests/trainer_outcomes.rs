//! The trainer's error codes and exit statuses are checked against the one outcome table
//! (`loraforge_domain::outcome`): a code the trainer can report that the control plane does not
//! know, or an exit status that means something else on each side, fails here.

use std::path::Path;

use loraforge_domain::outcome::{self, Origin, exit};

fn trainer_sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../trainer/loraforge_trainer");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("the trainer's sources")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() > 5,
        "found {} trainer sources in {}",
        files.len(),
        dir.display()
    );
    files
}

/// The string literals of the first argument after each `marker` (up to the first top-level
/// comma or closing parenthesis).
fn first_arguments(source: &str, marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in source.match_indices(marker) {
        let rest = &source[at + marker.len()..];
        let end = rest.find([',', ')']).unwrap_or(rest.len());
        let arg = &rest[..end];
        let mut parts = arg.split('"');
        parts.next();
        while let (Some(lit), rest) = (parts.next(), parts.next()) {
            found.push(lit.to_owned());
            if rest.is_none() {
                break;
            }
        }
    }
    found
}

#[test]
fn every_code_the_trainer_reports_is_in_the_outcome_table() {
    let mut codes = Vec::new();
    for (name, source) in trainer_sources() {
        for marker in [
            "TrainerError(",
            "super().__init__(",
            "emit(\"error\", code=",
        ] {
            for code in first_arguments(&source, marker) {
                if outcome::is_valid_code(&code) {
                    codes.push((name.clone(), code));
                }
            }
        }
    }
    for must in [
        "bad_spec",
        "non_finite_loss",
        "out_of_memory",
        "validation_failed",
        "model_unavailable",
        "internal",
    ] {
        assert!(
            codes.iter().any(|(_, c)| c == must),
            "the scan missed {must}: {codes:?}"
        );
    }
    for (file, code) in &codes {
        let spec = outcome::spec(code)
            .unwrap_or_else(|| panic!("{file} reports `{code}`, which the outcome table lacks"));
        assert_eq!(
            spec.origin,
            Origin::Trainer,
            "{file}: `{code}` is the trainer's"
        );
    }
}

#[test]
fn the_trainers_exit_statuses_are_the_tables() {
    let (_, errors) = trainer_sources()
        .into_iter()
        .find(|(n, _)| n == "errors.py")
        .expect("errors.py");
    let value = |name: &str| -> i32 {
        let line = errors
            .lines()
            .find(|l| l.starts_with(&format!("{name} = ")))
            .unwrap_or_else(|| panic!("{name} in errors.py"));
        line.split('=').nth(1).unwrap().trim().parse().unwrap()
    };
    for (name, status) in [
        ("EXIT_OK", exit::OK),
        ("EXIT_INTERNAL", exit::INTERNAL),
        ("EXIT_BAD_INPUT", exit::BAD_INPUT),
        ("EXIT_NON_FINITE", exit::NON_FINITE),
        ("EXIT_OOM", exit::OUT_OF_MEMORY),
        ("EXIT_VALIDATION", exit::VALIDATION),
        ("EXIT_STOPPED", exit::STOPPED),
    ] {
        assert_eq!(value(name), status, "{name}");
    }
}
