//! Raw streams a service waits for: a random ticket handed out per session on its gRPC stream,
//! and the raw stream that later arrives on the same port with that ticket, handed to the
//! session that holds it. A stream whose ticket nobody holds is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use unfed_proto::raw::{RawStream, Ticket};

/// The tickets of the sessions waiting for their raw streams.
#[derive(Default)]
pub(crate) struct Tickets(Mutex<HashMap<Ticket, oneshot::Sender<RawStream>>>);

/// A ticket handed out and not yet used; dropping it spends it.
pub(crate) struct Issued {
    pub ticket: Ticket,
    stream: oneshot::Receiver<RawStream>,
    tickets: Arc<Tickets>,
}

impl Tickets {
    /// A fresh random ticket.
    pub fn issue(self: &Arc<Self>) -> Issued {
        let ticket: Ticket = rand::random();
        let (give, stream) = oneshot::channel();
        self.0.lock().expect("not poisoned").insert(ticket, give);
        Issued {
            ticket,
            stream,
            tickets: self.clone(),
        }
    }

    /// Hands `stream` to the session holding `ticket`, or closes it.
    fn attach(&self, stream: RawStream, ticket: Ticket) {
        let waiting = self.0.lock().expect("not poisoned").remove(&ticket);
        if let Some(session) = waiting {
            let _ = session.send(stream);
        }
    }
}

impl Issued {
    /// Waits up to `limit` for the raw stream opened with this ticket.
    pub async fn wait(mut self, limit: Duration) -> Option<RawStream> {
        tokio::time::timeout(limit, &mut self.stream)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        self.tickets
            .0
            .lock()
            .expect("not poisoned")
            .remove(&self.ticket);
    }
}

/// Hands every raw stream `split` sorted out to the session holding its ticket, until the
/// listener ends.
pub(crate) fn attach_all(
    tickets: Arc<Tickets>,
    mut raw: mpsc::Receiver<(RawStream, Ticket)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((stream, ticket)) = raw.recv().await {
            tickets.attach(stream, ticket);
        }
    })
}
