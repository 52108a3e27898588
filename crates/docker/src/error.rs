//! Docker's errors as the engine decides on them.

use bollard::errors::Error;
use loraforge_engine::BackendError;

/// Words in Docker's (and the NVIDIA runtime's) messages when the host cannot give a container
/// the GPUs it asked for.
const NO_GPU: &[&str] = &[
    "could not select device driver",
    "no such device",
    "unknown device",
    "nvidia-container-cli",
    "gpu unavailable",
];

/// Whether Docker's message says the GPUs asked for are not there.
pub(crate) fn is_gpu_unavailable(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    NO_GPU.iter().any(|w| lower.contains(w))
}

/// The HTTP status of a Docker error answer, if it was one.
pub(crate) fn status_of(e: &Error) -> Option<u16> {
    match e {
        Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// `e`, from doing `what`, as a [`BackendError`].
pub fn backend_error(what: &str, e: Error) -> BackendError {
    let message = format!("Docker {what}: {e}");
    match &e {
        Error::DockerResponseServerError {
            message: text,
            status_code,
        } => {
            if is_gpu_unavailable(text) {
                BackendError::NoCapacity(format!("{message} (LORAFORGE_DOCKER_GPUS)"))
            } else if *status_code >= 500 || *status_code == 429 || *status_code == 408 {
                BackendError::Transient(message)
            } else {
                BackendError::Permanent(message)
            }
        }
        // The connection failed or broke, or the daemon was too slow: worth another try.
        Error::RequestTimeoutError
        | Error::HyperResponseError { .. }
        | Error::HyperLegacyError { .. }
        | Error::IOError { .. }
        | Error::JsonDataError { .. }
        | Error::JsonSerdeError { .. } => BackendError::Transient(message),
        Error::SocketNotFoundError(_) => BackendError::Transient(format!(
            "{message}; is Docker running? (LORAFORGE_DOCKER_HOST)"
        )),
        _ => BackendError::Permanent(message),
    }
}

/// A call that ran past its limit.
pub(crate) fn timed_out(what: &str, limit: std::time::Duration) -> BackendError {
    BackendError::Transient(format!(
        "Docker {what}: no answer within {} s",
        limit.as_secs_f32()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> Error {
        Error::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn statuses_and_messages_map_to_what_the_engine_does_next() {
        assert!(matches!(
            backend_error(
                "x",
                server(
                    500,
                    "could not select device driver \"nvidia\" with capabilities: [[gpu]]"
                )
            ),
            BackendError::NoCapacity(_)
        ));
        assert!(matches!(
            backend_error("x", server(503, "busy")),
            BackendError::Transient(_)
        ));
        assert!(matches!(
            backend_error("x", server(400, "bad")),
            BackendError::Permanent(_)
        ));
        assert!(matches!(
            backend_error("x", server(404, "No such image: w")),
            BackendError::Permanent(_)
        ));
        assert!(matches!(
            backend_error("x", Error::RequestTimeoutError),
            BackendError::Transient(_)
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            backend_error("x", Error::IOError { err: io }),
            BackendError::Transient(_)
        ));
    }
}
