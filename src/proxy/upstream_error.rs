//! Pingora's proxy errors, in the contract's terms.

use crate::api::error::ApiError;
use pingora::{Error, ErrorSource, ErrorType};

/// Which contract error a proxy failure is.
pub fn classify(e: &Error) -> ApiError {
    use ErrorType::*;
    if let Some(kind) = super::watchdog::TimeoutKind::from_error(e) {
        return ApiError::upstream_timeout(kind.message());
    }
    match e.etype() {
        ConnectTimedout => ApiError::upstream_timeout("the provider did not accept a connection in time"),
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            ApiError::upstream_timeout("the provider did not answer in time")
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => {
            // The provider cannot be reached at all: no route can serve the model right now.
            ApiError::provider_unavailable(format!("cannot connect to the provider ({})", e.etype().as_str()))
        }
        HTTPStatus(code) if (400..500).contains(code) => {
            ApiError::new(*code, "invalid_request", "the request could not be read")
        }
        _ => match e.esource() {
            ErrorSource::Upstream => ApiError::upstream_error(format!(
                "the provider failed: {}",
                e.etype().as_str()
            )),
            ErrorSource::Downstream => ApiError::invalid_request("the client request failed"),
            _ => ApiError::internal("the gateway failed to proxy the request"),
        },
    }
}
