//! Ending a séance: the host's one act that reaches every socket. The REST route calls
//! it; the sockets hear of it through the same pushes as everything else.

use futures_util::StreamExt;
use uuid::Uuid;

use crate::app::App;
use crate::domain::Session;
use crate::protocol::ServerEvent;
use crate::push::{Audience, FANOUT_CONCURRENCY};
use crate::store::StoreError;

/// Ends the session (`SessionEnded` if it already was), then tells everyone and closes
/// their sockets.
pub async fn end_session(app: &App, session_id: Uuid) -> Result<Session, StoreError> {
    let session = app.store.end_session(session_id).await?;
    tracing::info!(session_id = %session.id, "session ended");
    close_session(app, session.id).await;
    Ok(session)
}

/// After the host ends a session: `session_ended` to everyone, then every socket closed.
/// Connections are forgotten before they are closed, so their `$disconnect` announces no
/// `user_left` after the end.
async fn close_session(app: &App, session_id: Uuid) {
    let endpoint = app.push_endpoint(None, None);
    app.broadcaster()
        .broadcast(
            &endpoint,
            session_id,
            &ServerEvent::SessionEnded {},
            Audience::Everyone,
        )
        .await;
    let connections = match app.connections.in_session(session_id).await {
        Ok(connections) => connections,
        Err(err) => {
            tracing::warn!(%err, %session_id, "cannot list connections to close");
            return;
        }
    };
    futures_util::stream::iter(connections)
        .for_each_concurrent(FANOUT_CONCURRENCY, |connection| {
            let endpoint = endpoint.clone();
            async move {
                let _ = app.connections.remove(&connection.connection_id).await;
                if let Err(err) = app.pusher.close(&endpoint, &connection.connection_id).await {
                    tracing::debug!(%err, connection_id = %connection.connection_id, "close after end");
                }
            }
        })
        .await;
}
