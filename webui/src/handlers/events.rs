//! Live streams (server-sent events): they neither keep a session from
//! going idle nor outlive it, and [`live_events`] is the one way a page
//! turns an agent stream into events.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};

use super::*;

/// Whether `path` is a live stream (server-sent events): the browser opens
/// and reopens those by itself, so they neither keep a session from going
/// idle nor outlive it (see [`while_signed_in`]).
pub fn is_live(path: &str) -> bool {
    path.ends_with("/events")
}

/// How often a live stream checks that its session still holds.
pub const LIVE_SESSION_CHECK: Duration = Duration::from_secs(5);

/// `stream`, ended as soon as `session` does (signed out, expired, user
/// disabled or deleted), checked every [`LIVE_SESSION_CHECK`].
pub fn while_signed_in<S: Stream + Send>(
    state: &AppState,
    session: &Session,
    stream: S,
) -> impl Stream<Item = S::Item> + Send + use<S> {
    let (state, id) = (state.clone(), session.id.clone());
    let ended = async move {
        loop {
            tokio::time::sleep(LIVE_SESSION_CHECK).await;
            if !matches!(state.store().peek(&id).await, Ok(Some(_))) {
                return;
            }
        }
    };
    stream.take_until(ended)
}

/// The server-sent events of a page: each item of the agent's `stream`
/// becomes the event `render` makes of it, until the stream fails or ends
/// or the session ends ([`while_signed_in`]); dropping the response (the
/// browser left) drops the agent call. An item that cannot be rendered is
/// logged as `what` and skipped.
pub fn live_events<T, E, S, R>(
    state: &AppState,
    session: &Session,
    what: &'static str,
    stream: S,
    render: R,
) -> Response
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    R: Fn(T) -> Result<Event, askama::Error> + Send + Sync + 'static,
{
    let events = stream
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(move |item| {
            let event = match item.map(&render) {
                Ok(Ok(event)) => Some(Ok::<_, Infallible>(event)),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "{what} rendering failed");
                    None
                }
                Err(_) => None,
            };
            std::future::ready(event)
        });
    Sse::new(while_signed_in(state, session, events))
        .keep_alive(KeepAlive::default())
        .into_response()
}
