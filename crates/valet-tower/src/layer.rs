//! The tower [`Layer`] and [`Service`] that admit or reject each request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tower_layer::Layer;
use tower_service::Service;

use crate::Valet;
use crate::credential::{self, Credential};
use crate::identity::Identity;
use crate::rejection::Rejection;

/// RFC 8594 header announcing when a resource, here the caller's key, stops working.
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// Admits requests that carry a valid Valet credential with every required scope.
///
/// Made by [`Valet::layer`] or [`Valet::require`]; apply one per route to require
/// different scopes on different routes.
#[derive(Clone)]
pub struct ValetAuthLayer {
    guard: Arc<Guard>,
}

/// What one layer checks.
struct Guard {
    valet: Valet,
    required: Vec<String>,
    query_parameter: Option<String>,
}

impl ValetAuthLayer {
    pub(crate) fn new(valet: Valet, required: Vec<String>) -> Self {
        Self {
            guard: Arc::new(Guard {
                valet,
                required,
                query_parameter: None,
            }),
        }
    }

    /// Also accepts a credential in the query parameter `name`, for callers that cannot set
    /// headers. Off by default: URLs end up in access logs, browser history and `Referer`
    /// headers, so a key there leaks.
    pub fn allow_query_parameter(self, name: impl Into<String>) -> Self {
        let guard = &self.guard;
        Self {
            guard: Arc::new(Guard {
                valet: guard.valet.clone(),
                required: guard.required.clone(),
                query_parameter: Some(name.into()),
            }),
        }
    }
}

impl std::fmt::Debug for ValetAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValetAuthLayer")
            .field("required", &self.guard.required)
            .field("query_parameter", &self.guard.query_parameter)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ValetAuthLayer {
    type Service = ValetAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValetAuth {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The service [`ValetAuthLayer`] wraps around another: it checks the credential, puts the
/// caller's [`Identity`] in the request extensions and calls the inner service, or answers
/// with an RFC 6750 rejection without calling it.
#[derive(Clone)]
pub struct ValetAuth<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> std::fmt::Debug for ValetAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValetAuth")
            .field("required", &self.guard.required)
            .finish_non_exhaustive()
    }
}

impl Guard {
    async fn admit(&self, request: &http::request::Parts) -> Result<Identity, Rejection> {
        let credential = credential::find(
            &request.headers,
            &request.uri,
            self.query_parameter.as_deref(),
        )?;
        let identity = match credential {
            Credential::ApiKey(key) => self.valet.inner.keys.check(key).await?,
            Credential::AccessToken(token) => match &self.valet.inner.tokens {
                Some(tokens) => tokens.check(token).await?,
                None => {
                    return Err(Rejection::InvalidToken(
                        "this service accepts API keys only, not access tokens",
                    ));
                }
            },
        };
        if let Some(missing) = identity.missing_scope(&self.required) {
            return Err(Rejection::InsufficientScope {
                required: self.required.clone(),
                missing: missing.to_owned(),
            });
        }
        Ok(identity)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ValetAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request; a fresh clone takes
        // its place for the next one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let guard = self.guard.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                // Only the head is held across the check, so the body need not be `Sync`.
                let (mut head, body) = request.into_parts();
                let identity = match guard.admit(&head).await {
                    Ok(identity) => identity,
                    Err(rejection) => {
                        tracing::debug!(
                            code = rejection.code(),
                            path = head.uri.path(),
                            "rejected a request"
                        );
                        return Ok(rejection.into_response(&guard.valet.inner.realm));
                    }
                };
                let sunset = identity.sunset();
                head.extensions.insert(identity);
                let mut response = inner.call(Request::from_parts(head, body)).await?;
                if let Some(value) = sunset.and_then(http_date) {
                    response.headers_mut().insert(SUNSET, value);
                }
                Ok(response)
            }),
        }
    }
}

/// Formats an instant as an HTTP-date (RFC 9110 section 5.6.7), as `Sunset` requires.
fn http_date(at: OffsetDateTime) -> Option<HeaderValue> {
    let text = at.format(&Rfc2822).ok()?;
    HeaderValue::from_str(&text.replace("+0000", "GMT")).ok()
}

/// The future [`ValetAuth`] returns.
pub struct ResponseFuture<B, E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_in_gmt() {
        let at = time::macros::datetime!(2026-12-04 18:30:05 UTC);
        assert_eq!(
            http_date(at).unwrap(),
            HeaderValue::from_static("Fri, 04 Dec 2026 18:30:05 GMT")
        );
    }
}
