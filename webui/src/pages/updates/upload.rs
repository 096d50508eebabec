//! `POST /updates/upload`: a bundle file from the browser, streamed to the
//! agent's `Upload` while it arrives.
//!
//! The form is read with [`FormReader`]: the CSRF token and the optional
//! checksum come before the file, then the file's bytes go to the agent in
//! chunks through a small channel, so the console holds at most a few
//! hundred KiB of the bundle at a time whatever its size. When all of it has
//! reached the agent (its progress leaves the receiving phase) the browser
//! goes to the status page; a refusal or a broken upload re-renders the
//! updates page with the reason next to the file field.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use debvisor_api::update::v1::{InstallProgress, Phase, UploadChunk, UploadHeader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::formdata::{self, FileHead, FormError, FormReader, MAX_HEAD};
use super::install::check_sha256;
use super::{InstallForms, MAX_UPLOAD, PageQuery, client, refusal, render};
use crate::AppState;
use crate::agent::{AgentError, bounded, on_behalf_of};
use crate::auth::{Session, tokens_match};
use crate::error::AppError;
use crate::handlers::RequireSession;
use crate::roles::Permission;
use crate::views::human_bytes;

/// Data messages waiting for the agent at most (each up to
/// [`formdata::CHUNK`]).
const QUEUE: usize = 4;
/// How long the console waits, after the last byte, for the agent to have
/// stored the whole file.
const SETTLE: Duration = Duration::from_secs(600);

/// Re-renders the updates page with `message` at the file field.
async fn problem(
    state: &AppState,
    session: &Session,
    status: StatusCode,
    forms: InstallForms,
    message: String,
) -> Response {
    let forms = InstallForms {
        upload_error: Some(message),
        ..forms
    };
    render(state, session, status, forms, PageQuery::default(), None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The file's name as the agent accepts it: the last path component (old
/// browsers send a whole path), one line, at most 255 characters.
fn file_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    base.chars().filter(|c| !c.is_control()).take(255).collect()
}

pub(super) async fn upload(
    State(state): State<AppState>,
    required: RequireSession,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let session = required.require(Permission::ManageUpdates)?;
    let forms = InstallForms::default();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = match formdata::boundary(content_type) {
        Ok(b) => b,
        Err(e) => return Ok(problem(&state, session, StatusCode::UNSUPPORTED_MEDIA_TYPE, forms, capital(&e)).await),
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = length else {
        let msg = "The upload came without its length (Content-Length), which the agent needs before the first \
                   byte; send the file with this page's upload form (or curl -F)."
            .to_string();
        return Ok(problem(&state, session, StatusCode::LENGTH_REQUIRED, forms, msg).await);
    };
    let too_large = || {
        format!(
            "The file is larger than the agent accepts ({}); use a smaller bundle.",
            human_bytes(MAX_UPLOAD)
        )
    };
    if length > MAX_UPLOAD + MAX_HEAD as u64 + 1024 {
        return Ok(problem(&state, session, StatusCode::PAYLOAD_TOO_LARGE, forms, too_large()).await);
    }
    let mut reader = FormReader::new(body.into_data_stream(), &boundary, length);
    let head = match reader.head().await {
        Ok(h) => h,
        Err(e) => return Ok(problem(&state, session, StatusCode::BAD_REQUEST, forms, capital(&e)).await),
    };
    if !tokens_match(head.field("csrf"), &session.csrf) {
        tracing::warn!(user = %session.user, "update upload refused: missing or wrong CSRF token");
        return Err(AppError::Csrf);
    }
    let forms = InstallForms {
        upload_sha256: head.field("sha256").chars().take(128).collect(),
        ..forms
    };
    let sha256 = match check_sha256(head.field("sha256")) {
        Ok(s) => s,
        Err(e) => {
            let forms = InstallForms {
                upload_sha256_error: Some(e),
                ..forms
            };
            return render(
                &state,
                session,
                StatusCode::UNPROCESSABLE_ENTITY,
                forms,
                PageQuery::default(),
                None,
            )
            .await;
        }
    };
    if head.size == 0 {
        let msg = if head.filename.is_empty() {
            "Choose a bundle file (update.raucb) to upload.".to_string()
        } else {
            format!(
                "The file {:?} is empty; choose the bundle file (update.raucb).",
                file_name(&head.filename)
            )
        };
        return Ok(problem(&state, session, StatusCode::UNPROCESSABLE_ENTITY, forms, msg).await);
    }
    if head.size > MAX_UPLOAD {
        return Ok(problem(&state, session, StatusCode::PAYLOAD_TOO_LARGE, forms, too_large()).await);
    }
    match send(&state, session, reader, &head, sha256).await {
        Sent::Stored(p) => {
            tracing::info!(user = %session.user, file = %head.filename, bytes = head.size,
                           phase = ?p.map(|p| p.phase), "bundle uploaded to the agent");
            Ok(Redirect::to("/updates/install").into_response())
        }
        Sent::Refused(e) => {
            let r = refusal("The upload", &e);
            Ok(problem(&state, session, r.status, forms, r.text).await)
        }
        Sent::Broken(e) => {
            tracing::warn!(user = %session.user, error = %e, "bundle upload broke off");
            let msg = format!("{} Nothing was installed; upload the file again.", capital(&e));
            Ok(problem(&state, session, StatusCode::BAD_REQUEST, forms, msg).await)
        }
    }
}

/// "The form…" from "the form…".
fn capital(e: &FormError) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    let end = if text.ends_with('.') { "" } else { "." };
    format!("{first}{}{end}", chars.as_str())
}

/// How sending the file went.
enum Sent {
    /// The agent has the whole file; its first message past receiving (None
    /// when its stream ended or the wait timed out).
    Stored(Option<InstallProgress>),
    /// The agent refused the upload before taking data.
    Refused(AgentError),
    /// The form broke off or was malformed; the agent drops the partial file.
    Broken(FormError),
}

/// Streams the file to the agent's `Upload` for `session`'s user.
async fn send<S, E>(state: &AppState, session: &Session, reader: FormReader<S>, head: &FileHead, sha256: String) -> Sent
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut client = match bounded("update upload", client(state)).await {
        Ok(c) => c,
        Err(e) => return Sent::Refused(e),
    };
    let (tx, rx) = mpsc::channel::<UploadChunk>(QUEUE);
    let first = UploadChunk {
        header: Some(UploadHeader {
            size_bytes: head.size,
            sha256,
            filename: file_name(&head.filename),
        }),
        data: Vec::new(),
    };
    if tx.send(first).await.is_err() {
        return Sent::Broken(FormError::AgentGone);
    }
    let call = client.upload(on_behalf_of(ReceiverStream::new(rx), Some(&session.user)));
    let feed = reader.forward(head.size, tx);
    tokio::pin!(call, feed);
    // The agent answers once it has checked the header (size, space, a
    // running install); it may also read everything first.
    let mut fed = None;
    let opened = loop {
        tokio::select! {
            r = &mut call => break r,
            f = &mut feed, if fed.is_none() => fed = Some(f),
        }
    };
    let mut progress = match opened {
        Ok(r) => r.into_inner(),
        Err(status) => return Sent::Refused(AgentError::Call(status)),
    };
    let fed = match fed {
        Some(f) => f,
        None => feed.await,
    };
    match fed {
        // The agent stopped reading: its progress says why.
        Ok(_) | Err(FormError::AgentGone) => {}
        Err(e) => return Sent::Broken(e),
    }
    let settled = tokio::time::timeout(SETTLE, async {
        while let Ok(Some(p)) = progress.message().await {
            if p.phase != Phase::Downloading as i32 {
                return Some(p);
            }
        }
        None
    })
    .await;
    Sent::Stored(settled.ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_one_short_line() {
        assert_eq!(file_name("update.raucb"), "update.raucb");
        assert_eq!(file_name("C:\\Users\\me\\update.raucb"), "update.raucb");
        assert_eq!(file_name("a\nb.raucb"), "ab.raucb");
        assert_eq!(file_name(&"x".repeat(300)).len(), 255);
        assert_eq!(
            capital(&FormError::NoFile),
            "The form carries no file: choose a bundle file (update.raucb)."
        );
    }
}
