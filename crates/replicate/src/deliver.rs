//! A succeeded training's outputs brought home: `output.weights` downloaded (streamed, bounded)
//! into a scratch folder, unpacked safely (regular files and folders only, no absolute paths,
//! no `..`, bounded in total), and handed to [`RemoteAttempt::deliver`], which uploads the files
//! to the job's links and posts the result as a worker would. The tar is what `cog/train.py`
//! writes: `train/model.safetensors`, `train/model.kohya.safetensors`,
//! `train/validation/{i}.png`, `events.jsonl` and `timing.json`.

use std::io::Read;
use std::path::{Component, Path};

use loraforge_worker::remote::{RemoteAttempt, RemoteError};
use tokio::io::AsyncWriteExt;

/// Why bringing the outputs home failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliverError {
    /// A download or upload that broke off; tried again on a later observe.
    Transient(String),
    /// The outputs are unusable (missing, too big, an unsafe tar, no `done` line).
    Permanent(String),
    /// The job no longer wants this attempt.
    NotActive,
}

impl From<RemoteError> for DeliverError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Transient(m) => Self::Transient(m),
            RemoteError::Permanent(m) => Self::Permanent(m),
            RemoteError::NotActive => Self::NotActive,
        }
    }
}

/// Downloads `weights_url` into `scratch`, unpacks it and delivers it for `remote`.
pub(crate) async fn deliver(
    http: &reqwest::Client,
    remote: &RemoteAttempt,
    weights_url: &str,
    scratch: &Path,
    max_bytes: u64,
) -> Result<(), DeliverError> {
    let dir = tempfile::Builder::new()
        .prefix("replicate-")
        .tempdir_in(scratch)
        .map_err(|e| DeliverError::Transient(format!("cannot make a scratch folder: {e}")))?;
    let tar = dir.path().join("weights.tar");
    download(http, weights_url, &tar, max_bytes).await?;
    let out = dir.path().join("out");
    let unpacked = {
        let (tar, out) = (tar.clone(), out.clone());
        tokio::task::spawn_blocking(move || unpack(&tar, &out, max_bytes))
            .await
            .map_err(|e| DeliverError::Transient(format!("unpacking stopped: {e}")))?
    };
    unpacked.map_err(DeliverError::Permanent)?;
    let events = std::fs::read_to_string(out.join("events.jsonl")).map_err(|e| {
        DeliverError::Permanent(format!("the weights tar has no readable events.jsonl: {e}"))
    })?;
    let trainer_seconds = std::fs::read(out.join("timing.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("trainer_seconds").and_then(serde_json::Value::as_f64))
        .unwrap_or(0.0);
    remote.deliver(&out, &events, trainer_seconds).await?;
    // `dir` (tar and outputs) is deleted here: the control plane has the files now.
    Ok(())
}

async fn download(
    http: &reqwest::Client,
    url: &str,
    to: &Path,
    max_bytes: u64,
) -> Result<(), DeliverError> {
    let failed = |e: reqwest::Error| {
        DeliverError::Transient(format!(
            "downloading the weights failed: {}",
            e.without_url()
        ))
    };
    let mut response = http.get(url).send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let why = format!("downloading the weights: HTTP {}", status.as_u16());
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            DeliverError::Transient(why)
        } else {
            DeliverError::Permanent(why)
        });
    }
    if response.content_length().is_some_and(|n| n > max_bytes) {
        return Err(DeliverError::Permanent(format!(
            "the weights are larger than {max_bytes} bytes"
        )));
    }
    let io = |e: std::io::Error| DeliverError::Transient(format!("saving the weights: {e}"));
    let mut file = tokio::fs::File::create(to).await.map_err(io)?;
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(DeliverError::Permanent(format!(
                "the weights are larger than {max_bytes} bytes"
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)
}

/// Unpacks `tar` into `out`: only folders and regular files, each path relative and free of
/// `..`, at most `max_bytes` in all. Anything else refuses the whole tar.
pub(crate) fn unpack(tar: &Path, out: &Path, max_bytes: u64) -> Result<(), String> {
    let file = std::fs::File::open(tar).map_err(|e| format!("cannot open the weights: {e}"))?;
    let mut archive = tar::Archive::new(file);
    std::fs::create_dir_all(out).map_err(|e| format!("cannot make {}: {e}", out.display()))?;
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("the weights are not a tar: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the weights tar is damaged: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a tar entry has an unreadable path: {e}"))?
            .into_owned();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe || path.as_os_str().is_empty() {
            return Err(format!("the weights tar holds an unsafe path {path:?}"));
        }
        let target = out.join(&path);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("unpacking {path:?}: {e}"))?;
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "the weights tar holds {path:?}, which is not a regular file"
            ));
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(format!("the weights unpack to more than {max_bytes} bytes"));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("unpacking {path:?}: {e}"))?;
        }
        let mut to =
            std::fs::File::create(&target).map_err(|e| format!("unpacking {path:?}: {e}"))?;
        // `take` bounds what is written even if the header lied about the size.
        let mut limited = (&mut entry).take(max_bytes);
        std::io::copy(&mut limited, &mut to).map_err(|e| format!("unpacking {path:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unpack;

    fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses `..`; write the name raw to build a hostile tar.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_the_cog_layout_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.tar");
        std::fs::write(
            &good,
            tar_with(&[("train/model.safetensors", b"m"), ("events.jsonl", b"{}\n")]),
        )
        .unwrap();
        let out = dir.path().join("out");
        unpack(&good, &out, 1 << 20).unwrap();
        assert_eq!(
            std::fs::read(out.join("train/model.safetensors")).unwrap(),
            b"m"
        );

        for bad in ["../evil", "/etc/evil", "train/../../evil"] {
            let path = dir.path().join("bad.tar");
            std::fs::write(&path, tar_with(&[(bad, b"x")])).unwrap();
            let err = unpack(&path, &dir.path().join("o2"), 1 << 20).unwrap_err();
            assert!(err.contains("unsafe path"), "{bad}: {err}");
        }
        assert!(!dir.path().join("evil").exists());

        let big = dir.path().join("big.tar");
        std::fs::write(&big, tar_with(&[("a", &[0u8; 600]), ("b", &[0u8; 600])])).unwrap();
        let err = unpack(&big, &dir.path().join("o3"), 1000).unwrap_err();
        assert!(err.contains("more than 1000 bytes"), "{err}");
    }
}
